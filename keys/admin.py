"""Admin for keys, user limits and the quota ledger (teams: keys.admin_teams). Every write goes through keys.services.

As in DRF's authtoken admin, no form ever has a field for the key itself: adding a key issues
one with `key_issue` and shows the secret once, in the message after saving.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db import models
from django.db.models import Case, F, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.html import format_html

from keys.fields import MoneyField
from keys.models import ApiKey, Period, QuotaLedger, UserLimit, period_start
from keys.money import usd
from keys.selfservice import user_invite, user_max_keys_set
from keys.services import LIMIT_FIELDS, key_issue, key_revoke, key_update_limits, user_limit_set

if TYPE_CHECKING:
    from django.db.models import Model, QuerySet
    from django.forms import ModelForm
    from django.http import HttpRequest


def money_column(field: str, description: str) -> Callable[[admin.ModelAdmin, Model], str]:
    """An admin column showing the money field `field` as keys.money.usd writes it, for
    list_display and read-only pages: left to itself, Django prints every stored place
    ("0.000000000001", "5.000000000000")."""

    @admin.display(description=description, ordering=field)
    def column(model_admin: admin.ModelAdmin, obj: Model) -> str:
        return usd(getattr(obj, field))

    return column


def limits_fieldset(*, editable: bool) -> tuple[str, dict[str, Any]]:
    """The limits, with the budget as its input or, where it is only shown (a staff member
    allowed to view but not to change), as its `budget` column."""
    return (
        "Limits",
        {
            "fields": (
                ("budget_usd" if editable else "budget", "period", "budget_mode"),
                ("token_limit", "request_limit"),
                ("rpm", "tpm", "max_concurrent"),
                "allowed_models",
            ),
            "description": "Empty means no limit of that kind. The user's own limits apply too.",
        },
    )


def read_only_fields(model: type[Model], money: dict[str, str]) -> list[str]:
    """Every field of `model` for a page nobody may change, each money field named in `money`
    replaced by the column that shows it."""
    return [money.get(field.name, field.name) for field in model._meta.fields]


# Rows counted per kind on a delete page; past it the page says "100,000+".
BILLING_COUNT_CAP = 100_000


def billing_rows(owners: dict[type[Model], Any]) -> list[str]:
    """The billing history that keeps `owners` (model -> its rows about to be deleted) from
    being deleted: for each model pointing at them with on_delete=PROTECT (usage records,
    daily rollups, ledger rows), how many rows, as "usage records: 1,204". Empty when nothing
    stops the deletion.

    Counted by one capped COUNT per kind: left to itself the admin would read, and list, every
    protected row, a million records for a long-time user."""
    pointing: dict[type[Model], Q] = {}
    for model, rows in owners.items():
        for relation in model._meta.related_objects:
            if relation.on_delete is models.PROTECT:
                condition = Q(**{f"{relation.field.name}__in": rows})
                related = relation.related_model
                pointing[related] = pointing.get(related, Q()) | condition
    lines = []
    for model, condition in pointing.items():
        count = model._base_manager.filter(condition).order_by()[:BILLING_COUNT_CAP].count()
        if count:
            more = "+" if count == BILLING_COUNT_CAP else ""
            lines.append(f"{model._meta.verbose_name_plural}: {count:,}{more}")
    return lines


class KeepsBillingHistory:
    """A ModelAdmin mixin for keys and users: one with usage cannot be deleted (its records,
    rollups and ledger rows PROTECT it), and the delete page says so, counts what it has and
    says what to do instead, rather than listing every record or blaming permissions."""

    delete_confirmation_template = "admin/keys/delete_confirmation.html"
    delete_selected_confirmation_template = "admin/keys/delete_selected_confirmation.html"

    def billing_owners(self, objs: Any) -> dict[type[Model], Any]:
        raise NotImplementedError

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple:
        kept = billing_rows(self.billing_owners(objs))
        if kept:
            # Django's delete view and "delete selected" action refuse while `protected` is
            # not empty, on GET and on POST alike.
            return [], {}, set(), kept
        return super().get_deleted_objects(objs, request)


class LimitsForm(forms.ModelForm):
    """Refuses a negative budget, which the model fields alone would take."""

    def clean_budget_usd(self) -> Decimal | None:
        budget = self.cleaned_data.get("budget_usd")
        if budget is not None and budget < 0:
            raise forms.ValidationError("A budget cannot be negative.")
        return budget


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(
                Q(expires_at__isnull=True) | Q(expires_at__gt=now), revoked_at__isnull=True
            )
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


def with_period_spend(owners: QuerySet, *, owner: str, now: dt.datetime) -> QuerySet:
    """`owners` (keys or teams, whose ledger rows name them by `owner`) with this period's
    `spent_usd` and `reserved_usd` (each one's own period, from its ledger row; 0 before its
    first request of the period) and `remaining_usd` (empty without a budget), as subqueries
    of one query."""
    this_period = Case(
        *(When(period=period, then=Value(period_start(period, now))) for period in Period),
        output_field=models.DateTimeField(),
    )
    ledger = QuotaLedger.objects.filter(
        **{owner: OuterRef("pk")}, period=OuterRef("period"), period_start=this_period
    )
    zero = Value(Decimal(0), output_field=MoneyField())
    spent = Coalesce(Subquery(ledger.values("spent_usd")[:1], output_field=MoneyField()), zero)
    reserved = Coalesce(
        Subquery(ledger.values("reserved_usd")[:1], output_field=MoneyField()), zero
    )
    return owners.annotate(
        spent_usd=spent,
        reserved_usd=reserved,
        remaining_usd=models.ExpressionWrapper(
            F("budget_usd") - F("spent_usd") - F("reserved_usd"), output_field=MoneyField()
        ),
    )


def keys_with_spend(keys: QuerySet[ApiKey], *, now: dt.datetime) -> QuerySet[ApiKey]:
    """`keys` with this period's spend (`with_period_spend`) and `last_used_at` (its latest
    usage record), in one query."""
    from usage.models import UsageRecord  # usage depends on keys, not the other way round

    # Walks the (api_key, -created_at) index: one row per key.
    latest = UsageRecord.objects.filter(api_key=OuterRef("pk")).order_by("-created_at")
    return with_period_spend(keys, owner="api_key", now=now).annotate(
        last_used_at=Subquery(latest.values("created_at")[:1]),
    )


class PeriodSpendColumns:
    """The list columns of an admin whose queryset has `with_period_spend`'s annotations."""

    @admin.display(description="spent this period (USD)", ordering="spent_usd")
    def spent(self, obj: Any) -> str:
        return usd(obj.spent_usd)

    @admin.display(description="remaining (USD)", ordering="remaining_usd")
    def remaining(self, obj: Any) -> str:
        if obj.budget_usd is None:
            return "no budget"
        # From the Decimals, not the database's difference: SQLite subtracts in floats.
        return usd(obj.budget_usd - obj.spent_usd - obj.reserved_usd)


@admin.register(ApiKey)
class ApiKeyAdmin(PeriodSpendColumns, KeepsBillingHistory, admin.ModelAdmin):
    form = LimitsForm
    list_display = (
        "prefix",
        "name",
        "user",
        "status",
        "budget",
        "period",
        "spent",
        "remaining",
        "last_used",
        "created_at",
        "expires_at",
    )
    list_filter = (KeyStatusFilter, "period", "created_at", "expires_at")
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    date_hierarchy = "created_at"
    actions = ("revoke_keys",)
    budget = money_column("budget_usd", "budget (USD)")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return keys_with_spend(super().get_queryset(request), now=timezone.now())

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, obj: ApiKey) -> str:
        if obj.last_used_at is None:
            return "never"
        return f"{obj.last_used_at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"

    def get_fieldsets(self, request: HttpRequest, obj: ApiKey | None = None) -> list:
        key = (None, {"fields": ("user", "name", "expires_at", "log_bodies")})
        if obj is None:
            return [key, limits_fieldset(editable=True)]
        limits = limits_fieldset(editable=self.has_change_permission(request, obj))
        return [
            (
                None,
                {
                    "fields": (
                        "prefix",
                        "status",
                        "user",
                        "name",
                        "expires_at",
                        "log_bodies",
                        "created_at",
                        "revoked_at",
                    )
                },
            ),
            limits,
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple:
        if obj is None:
            return ()
        # A key stays with the user it was issued to: its usage and ledger are theirs.
        return ("prefix", "status", "user", "created_at", "revoked_at", "budget")

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return obj.status

    def billing_owners(self, objs: Any) -> dict[type[Model], Any]:
        return {ApiKey: objs}

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        data = form.cleaned_data
        if change:
            editable = (*LIMIT_FIELDS, "name", "expires_at", "log_bodies")
            key_update_limits(
                api_key=obj, **{f: data[f] for f in form.changed_data if f in editable}
            )
            return
        api_key, secret = key_issue(
            username=data["user"].get_username(),
            name=data.get("name", ""),
            expires_at=data.get("expires_at"),
            log_bodies=data.get("log_bodies"),
            **{f: data.get(f) for f in LIMIT_FIELDS},
        )
        # The admin goes on with `obj` (log entry, redirect): make it the issued key.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(api_key, field.attname))
        obj._state.adding = False
        # Shown once: the message travels in the admin's own cookie and is gone once read.
        messages.success(
            request,
            format_html(
                "The new key for {} is <code>{}</code>. Copy it now: it is not stored and "
                "cannot be shown again.",
                api_key.user.get_username(),
                secret,
            ),
        )

    @admin.action(description="Revoke selected keys", permissions=("change",))
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


class UserLimitInline(admin.StackedInline):
    model = UserLimit
    form = LimitsForm
    can_delete = True
    max_num = 1
    extra = 0
    readonly_fields = ("budget",)
    verbose_name_plural = "limits (on top of each key's own)"
    budget = money_column("budget_usd", "budget (USD)")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list:
        return [
            limits_fieldset(editable=self.has_change_permission(request, obj)),
            SELF_SERVICE_FIELDSET,
        ]


SELF_SERVICE_FIELDSET = (
    "Self-service",
    {
        "fields": ("max_keys",),
        "description": "The user makes, rotates and revokes their own keys on their keys page "
        "(Actions on the users list: invite, for the link that sets their password).",
    },
)


class ApiKeyInline(admin.TabularInline):
    """The user's keys at a glance; each is edited on its own page."""

    model = ApiKey
    fields = ("prefix", "name", "status", "budget", "period", "created_at", "expires_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False
    budget = money_column("budget_usd", "budget (USD)")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return obj.status


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class ProxyUserAdmin(KeepsBillingHistory, UserAdmin):
    actions = ("invite",)

    def get_inlines(self, request: HttpRequest, obj: Any = None) -> tuple:
        from keys.admin_teams import UserTeamInline

        return (UserLimitInline, UserTeamInline, ApiKeyInline)

    @admin.action(
        description="Invite: a one-time link to set a password (emailed if they have an address)"
    )
    def invite(self, request: HttpRequest, queryset: Any) -> None:
        base = request.build_absolute_uri("/").rstrip("/")
        for user in queryset:
            sent = user_invite(username=user.get_username(), base_url=base)
            where = f" (emailed to {sent.emailed_to})" if sent.emailed_to else ""
            self.message_user(request, f"Invitation for {sent.username}{where}: {sent.link}")

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        from keys.models import TeamMember
        from keys.services import team_member_remove, team_member_set

        if formset.model is not TeamMember:
            super().save_formset(request, form, formset, change)
            return
        # Through the services, so this process reads the user's keys again at once.
        members = formset.save(commit=False)
        for gone in formset.deleted_objects:
            team_member_remove(user=gone.user)
        for member in members:
            team_member_set(team=member.team, user=form.instance, is_admin=member.is_admin)

    def billing_owners(self, objs: Any) -> dict[type[Model], Any]:
        # A user's keys would go with them (CASCADE), so what pins the keys pins the user.
        return {User: objs, ApiKey: ApiKey.objects.filter(user__in=objs)}


@admin.register(UserLimit)
class UserLimitAdmin(admin.ModelAdmin):
    form = LimitsForm
    list_display = (
        "user",
        "budget",
        "period",
        "token_limit",
        "request_limit",
        "rpm",
        "tpm",
        "max_concurrent",
    )
    list_filter = ("period",)
    search_fields = ("user__username",)
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    budget = money_column("budget_usd", "budget (USD)")

    def get_fieldsets(self, request: HttpRequest, obj: UserLimit | None = None) -> list:
        editable = obj is None or self.has_change_permission(request, obj)
        return [
            (None, {"fields": ("user",)}),
            limits_fieldset(editable=editable),
            SELF_SERVICE_FIELDSET,
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: UserLimit | None = None) -> tuple:
        return () if obj is None else ("user", "budget")

    def save_model(
        self, request: HttpRequest, obj: UserLimit, form: ModelForm, change: bool
    ) -> None:
        limit = user_limit_set(user=obj.user, **{f: getattr(obj, f) for f in LIMIT_FIELDS})
        user_max_keys_set(user=obj.user, max_keys=obj.max_keys)
        obj.pk = limit.pk
        obj._state.adding = False


@admin.register(QuotaLedger)
class QuotaLedgerAdmin(admin.ModelAdmin):
    """What each key and user has spent and holds reserved per period; written only by the
    relay's conditional UPDATEs, so it is read-only here."""

    list_display = (
        "owner",
        "period",
        "period_start",
        "spent",
        "reserved",
        "tokens",
        "reserved_tokens",
        "requests",
    )
    list_filter = ("period", "period_start")
    search_fields = ("api_key__prefix", "api_key__user__username", "user__username", "team__name")
    list_select_related = ("api_key", "api_key__user", "user", "team")
    date_hierarchy = "period_start"
    spent = money_column("spent_usd", "spent (USD)")
    reserved = money_column("reserved_usd", "reserved (USD)")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.get_readonly_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return read_only_fields(QuotaLedger, {"spent_usd": "spent", "reserved_usd": "reserved"})

    @admin.display(description="key, user or team")
    def owner(self, obj: QuotaLedger) -> str:
        if obj.api_key_id:
            return str(obj.api_key)
        return f"user {obj.user}" if obj.user_id else f"team {obj.team}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


from keys import admin_teams  # noqa: E402, F401 (registers the teams' admin)
