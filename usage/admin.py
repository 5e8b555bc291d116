"""Admin for usage records and the daily rollup (read-only); prices are in admin_prices.

The records table grows to millions of rows, so its changelist never counts it whole, never
lists distinct values for a filter, and defers the (large) bodies.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.urls import path
from django.utils.functional import cached_property
from django.utils.html import format_html

from keys.admin import money_column, read_only_fields
from usage import admin_prices  # noqa: F401 (registers the price tables)
from usage.apis import UsageRecordOutputSerializer
from usage.exports import csv_streaming_response
from usage.models import (
    ROLLUP_SUMS,
    ReconciliationRow,
    ReconciliationRun,
    StoredObject,
    UsageDaily,
    UsageRecord,
)
from usage.selectors import (
    RECORD_ENDPOINTS,
    STATUS_RANGES,
    records_of_key_prefix,
    records_searched,
    records_with_status,
    usage_days,
    usage_record_count,
)

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from django.http import HttpRequest, HttpResponseBase
    from django.urls import URLPattern


class UsageRecordPaginator(Paginator):
    """Counts without reading the whole table: the unfiltered list's count comes from the
    rollup, a filtered one is counted up to COUNT_CAP (shown as "10,000+"; the pages past it
    are not offered). Counting a filter that matches two million records to the end takes
    seconds at ten million; stopping at the cap reads at most that many."""

    COUNT_CAP = 10_000

    @cached_property
    def count(self) -> int:
        if not self.object_list.query.where:
            return usage_record_count()
        return self.object_list.order_by()[: self.COUNT_CAP + 1].count()

    @property
    def count_shown(self) -> str:
        """The count under the list: "10,000+" where counting stopped at the cap."""
        if self.object_list.query.where and self.count > self.COUNT_CAP:
            return f"{self.COUNT_CAP:,}+"
        return f"{self.count:,}"


class RollupDateHierarchy:
    """Stands in for a changelist's queryset in the admin's `date_hierarchy` tag, its only
    user once the page's rows are read. Django's tag runs a DISTINCT over every row in range
    (seconds at a million records); this offers the days the UsageDaily rollup knows of, and
    takes the first and last timestamps by two index lookups. With other filters active it
    may offer a day where they match nothing, which costs a click, not a query."""

    def __init__(self, queryset: QuerySet, field_name: str, params: dict[str, Any]) -> None:
        self.queryset = queryset
        self.field_name = field_name
        self.start, self.end = self._span(params)

    def _span(self, params: dict[str, Any]) -> tuple[dt.date | None, dt.date | None]:
        def param(name: str) -> int | None:
            value = params.get(f"{self.field_name}__{name}")
            if isinstance(value, list):
                value = value[-1] if value else None
            return int(value) if value and str(value).isdigit() else None

        year, month = param("year"), param("month")
        if year is None:
            return None, None
        if month is None:
            return dt.date(year, 1, 1), dt.date(year + 1, 1, 1)
        start = dt.date(year, month, 1)
        return start, (start + dt.timedelta(days=32)).replace(day=1)

    def aggregate(self, **aggregates: Any) -> dict[str, Any]:
        ordered = self.queryset.order_by().values_list(self.field_name, flat=True)
        first = ordered.order_by(self.field_name).first()
        last = ordered.order_by(f"-{self.field_name}").first()
        return {"first": first, "last": last}

    def _truncated(self, kind: str) -> list[dt.date]:
        days = usage_days(start=self.start, end=self.end)
        if kind == "year":
            return sorted({day.replace(month=1, day=1) for day in days})
        if kind == "month":
            return sorted({day.replace(day=1) for day in days})
        return days

    def dates(self, field_name: str, kind: str) -> list[dt.date]:
        return self._truncated(kind)

    def datetimes(self, field_name: str, kind: str) -> list[dt.datetime]:
        return [dt.datetime.combine(d, dt.time.min, tzinfo=dt.UTC) for d in self._truncated(kind)]


class RollupDateChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.queryset = RollupDateHierarchy(self.queryset, self.date_hierarchy, self.params)


class EndpointFilter(admin.SimpleListFilter):
    title = "endpoint"
    parameter_name = "endpoint"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [(e, e) for e in RECORD_ENDPOINTS]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(endpoint=self.value()) if self.value() else queryset


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [(value, label) for value, (label, _, _) in STATUS_RANGES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return records_with_status(queryset, self.value())


class InputFilter(admin.SimpleListFilter):
    """A filter typed into a box: a list of every user, key or model would be read from the
    whole table and run to thousands of links."""

    template = "admin/usage/input_filter.html"
    placeholder = ""

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        # No record holds a NUL, and PostgreSQL refuses one in a query (a 500, not a page).
        return queryset.none() if "\x00" in value else self.matching(queryset, value)

    def matching(self, queryset: QuerySet, value: str) -> QuerySet:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        # Not empty, or Django would leave the filter out.
        return [("", "")]

    def choices(self, changelist: ChangeList) -> Any:
        others = {
            name: value
            for name, value in changelist.get_filters_params().items()
            if name != self.parameter_name
        }
        yield {
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "parameter_name": self.parameter_name,
            "others": [
                (name, item)
                for name, values in others.items()
                for item in (values if isinstance(values, list) else [values])
            ],
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }


class UserFilter(InputFilter):
    title = "user"
    parameter_name = "username"
    placeholder = "username"

    def matching(self, queryset: QuerySet, value: str) -> QuerySet:
        return queryset.filter(user__username=value)


class KeyFilter(InputFilter):
    title = "key"
    parameter_name = "key"
    placeholder = "sk-proxy-…"

    def matching(self, queryset: QuerySet, value: str) -> QuerySet:
        return records_of_key_prefix(queryset, value)


class ModelFilter(InputFilter):
    title = "model (asked for or answered)"
    parameter_name = "model"
    placeholder = "gpt-4o-mini"

    def matching(self, queryset: QuerySet, value: str) -> QuerySet:
        return queryset.filter(Q(model=value) | Q(response_model=value))


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    # Narrow enough for a 1400 px window beside the filters: one column each for the model
    # (the answered one only where it differs), the status with its error code, the tokens.
    list_display = (
        "time",
        "user",
        "key_prefix",
        "endpoint_shown",
        "model_shown",
        "status",
        "tokens",
        "cost",
        "latency",
    )
    list_display_links = ("time",)
    list_filter = (
        UserFilter,
        KeyFilter,
        ModelFilter,
        EndpointFilter,
        StatusFilter,
        "stream",
        "estimated",
    )
    # A key by the start of its prefix, a user or an upstream request id exactly, a model by
    # part of its name: see get_search_results.
    search_fields = ("key_prefix", "user__username", "model", "upstream_request_id")
    search_help_text = "A key prefix (sk-proxy-…), a username, a model or an upstream request id."
    date_hierarchy = "created_at"
    # The users come by a second query (prefetch), not a JOIN: joined, SQLite loops over the
    # users first and sorts each one's records (a model searched at 1M records: 1.9 s).
    list_select_related = ()
    show_full_result_count = False
    paginator = UsageRecordPaginator
    list_per_page = 100
    actions = ("export_csv",)
    cost = money_column("cost_usd", "cost (USD)")
    reserved = money_column("reserved_usd", "reserved (USD)")

    @admin.display(description="time (UTC)", ordering="created_at")
    def time(self, obj: UsageRecord) -> str:
        return f"{obj.created_at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}"

    @admin.display(description="endpoint", ordering="endpoint")
    def endpoint_shown(self, obj: UsageRecord) -> str:
        if obj.stream:
            return format_html('{} <span class="proxy-tag">stream</span>', obj.endpoint)
        return obj.endpoint

    @admin.display(description="model", ordering="model")
    def model_shown(self, obj: UsageRecord) -> str:
        if obj.response_model and obj.response_model != obj.model:
            return format_html(
                '{} <span class="proxy-muted">→ {}</span>', obj.model or "—", obj.response_model
            )
        return obj.model or obj.response_model or "—"

    @admin.display(description="status", ordering="status_code")
    def status(self, obj: UsageRecord) -> str:
        css = "proxy-ok" if obj.status_code < 400 else "proxy-err"
        if obj.error_code:
            return format_html(
                '<span class="{}">{}</span> <code>{}</code>', css, obj.status_code, obj.error_code
            )
        return format_html('<span class="{}">{}</span>', css, obj.status_code)

    @admin.display(description="tokens in / out")
    def tokens(self, obj: UsageRecord) -> str:
        text = f"{obj.prompt_tokens:,} / {obj.completion_tokens:,}"
        if obj.estimated:
            return format_html(
                '{} <span class="proxy-tag" title="counted by the proxy: upstream sent no '
                'usage">est.</span>',
                text,
            )
        return text

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: UsageRecord) -> str:
        return "—" if obj.latency_ms is None else f"{obj.latency_ms:,} ms"

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        # Django's search ORs a LIKE over every field: at ten million records, seconds.
        return records_searched(queryset, search_term), False

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RollupDateChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRecord]:
        # Bodies are read only on a record's own page, by one extra query there.
        records = super().get_queryset(request).defer("request_body", "response_body")
        return records.prefetch_related("user")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_readonly_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return read_only_fields(UsageRecord, {"cost_usd": "cost", "reserved_usd": "reserved"})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Records back the ledgers' spend and the rollups; only a superuser may prune by hand.
        return request.user.is_superuser

    def get_urls(self) -> list[URLPattern]:
        export = path(
            "export/",
            self.admin_site.admin_view(self.export_view),
            name="usage_usagerecord_export",
        )
        return [export, *super().get_urls()]

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """The changelist's "Export CSV" button: every record its filters and search match."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        records = changelist.get_queryset(request)
        return csv_streaming_response(request, records, UsageRecordOutputSerializer)

    @admin.action(description="Export selected records as CSV", permissions=("view",))
    def export_csv(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> HttpResponseBase:
        return csv_streaming_response(request, queryset, UsageRecordOutputSerializer)


@admin.register(UsageDaily)
class UsageDailyAdmin(admin.ModelAdmin):
    list_display = (
        "day",
        "user",
        "api_key",
        "model",
        *("cost" if name == "cost_usd" else name for name in ROLLUP_SUMS),
    )
    list_filter = ("day",)
    search_fields = ("model", "=user__username", "^api_key__prefix")
    date_hierarchy = "day"
    list_select_related = ("user", "api_key")
    cost = money_column("cost_usd", "cost (USD)")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_readonly_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return read_only_fields(UsageDaily, {"cost_usd": "cost"})

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RollupDateChangeList

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(StoredObject)
class StoredObjectAdmin(admin.ModelAdmin):
    """Who owns each object the proxy created upstream (read-only: the relay keeps it)."""

    list_display = ("object_id", "kind", "user", "api_key", "purpose", "created_at", "deleted_at")
    list_filter = ("kind", "purpose")
    search_fields = ("object_id", "user__username")
    list_select_related = ("user", "api_key")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReconciliationRowInline(admin.TabularInline):
    model = ReconciliationRow
    can_delete = False
    extra = 0
    fields = (
        "day",
        "model",
        "drift",
        "proxy_requests",
        "openai_requests",
        "requests_difference",
        "proxy_input_tokens",
        "openai_input_tokens",
        "input_tokens_difference",
        "proxy_output_tokens",
        "openai_output_tokens",
        "output_tokens_difference",
        "proxy_cost",
        "openai_cost",
        "cost_difference",
    )
    readonly_fields = fields
    proxy_cost = money_column("proxy_usd", "proxy USD")
    openai_cost = money_column("openai_usd", "OpenAI USD")
    cost_difference = money_column("usd_difference", "USD difference")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(admin.ModelAdmin):
    """Each `manage.py reconcile_usage` and what it found (read-only: the command writes it)."""

    list_display = ("started_at", "start_day", "end_day", "status", "drifting_rows", "error")
    list_filter = ("status",)
    date_hierarchy = "started_at"
    fields = ("start_day", "end_day", "started_at", "finished_at", "status", "error")
    readonly_fields = fields
    inlines = (ReconciliationRowInline,)

    @admin.display(description="rows that differ")
    def drifting_rows(self, obj: ReconciliationRun) -> int:
        return obj.rows.filter(drift=True).count()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
