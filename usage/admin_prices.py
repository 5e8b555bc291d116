"""Admin for the price tables: model prices, model aliases and built-in tool fees (editable).

Prices are cached per process: an edit here forgets them in this process at once, in the
others within PRICE_CACHE_SECONDS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from usage.models import ModelAlias, ModelPrice, ToolPrice
from usage.pricing import price_book_reset

if TYPE_CHECKING:
    from django.db.models import Model, QuerySet
    from django.forms import ModelForm
    from django.http import HttpRequest


class PriceTableAdmin(admin.ModelAdmin):
    def save_model(self, request: HttpRequest, obj: Model, form: ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        price_book_reset()

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        super().delete_model(request, obj)
        price_book_reset()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().delete_queryset(request, queryset)
        price_book_reset()


@admin.register(ModelPrice)
class ModelPriceAdmin(PriceTableAdmin):
    list_display = (
        "model",
        "mode",
        "effective_from",
        "input_per_1m",
        "cached_input_per_1m",
        "output_per_1m",
        "deprecation_date",
        "source_date",
    )
    list_filter = ("mode", "effective_from")
    search_fields = ("model",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "model",
                    "mode",
                    "effective_from",
                    "deprecation_date",
                    "max_input_tokens",
                    ("source", "source_date"),
                ),
                "description": "USD per 1M tokens. To change a price, add a row with a new "
                "`effective from` instead of editing this one, so past records keep their price; "
                "after correcting a wrong price, `manage.py reprice` re-prices the records it "
                "billed.",
            },
        ),
        (
            "Standard",
            {
                "fields": (
                    ("input_per_1m", "cached_input_per_1m", "cache_write_per_1m", "output_per_1m"),
                )
            },
        ),
        (
            "Batch, flex and priority tiers",
            {
                "classes": ("collapse",),
                "fields": (
                    ("batch_input_per_1m", "batch_cached_input_per_1m", "batch_output_per_1m"),
                    ("flex_input_per_1m", "flex_cached_input_per_1m", "flex_output_per_1m"),
                    (
                        "priority_input_per_1m",
                        "priority_cached_input_per_1m",
                        "priority_output_per_1m",
                    ),
                ),
            },
        ),
        (
            "Long context and audio",
            {
                "classes": ("collapse",),
                "fields": (
                    ("gt272k_input_per_1m", "gt272k_cached_input_per_1m", "gt272k_output_per_1m"),
                    ("audio_input_per_1m", "audio_cached_input_per_1m", "audio_output_per_1m"),
                ),
            },
        ),
    )


@admin.register(ModelAlias)
class ModelAliasAdmin(PriceTableAdmin):
    list_display = ("alias", "model", "note", "source_date")
    search_fields = ("alias", "model")
    fields = ("alias", "model", "note", ("source", "source_date"))

    def get_form(self, request: HttpRequest, obj: ModelAlias | None = None, **kwargs: object):  # noqa: ANN201
        form = super().get_form(request, obj, **kwargs)
        form.base_fields["model"].help_text = (
            "A model of the price table (its name or a dated snapshot of it). Used only when "
            "the name itself, a fine-tune's base and the dated snapshot rule find no row."
        )
        return form


@admin.register(ToolPrice)
class ToolPriceAdmin(PriceTableAdmin):
    list_display = ("tool", "model_patterns", "variant", "usd_per_call", "effective_from")
    list_filter = ("tool",)
    search_fields = ("tool", "model_patterns", "variant")
    fields = (
        ("tool", "variant"),
        "model_patterns",
        ("usd_per_call", "effective_from"),
        ("source", "source_date"),
    )
