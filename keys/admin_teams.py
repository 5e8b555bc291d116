"""Admin for teams: their limits, their members (one team per user), and this period's
spend. Writes go through keys.services, so this process's cached keys of the members are read
again at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Count, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from keys.admin import (
    KeepsBillingHistory,
    LimitsForm,
    PeriodSpendColumns,
    limits_fieldset,
    money_column,
    with_period_spend,
)
from keys.models import Team, TeamMember
from keys.services import (
    LIMIT_FIELDS,
    team_create,
    team_member_remove,
    team_member_set,
    team_update_limits,
)

if TYPE_CHECKING:
    import datetime as dt

    from django.db.models import Model, QuerySet
    from django.forms import BaseInlineFormSet, ModelForm
    from django.http import HttpRequest


def teams_with_spend(teams: QuerySet[Team], *, now: dt.datetime) -> QuerySet[Team]:
    """`teams` with this period's spend (`with_period_spend`) and `member_count`, in one
    query."""
    members = TeamMember.objects.filter(team=OuterRef("pk")).values("team")
    return with_period_spend(teams, owner="team", now=now).annotate(
        member_count=Coalesce(Subquery(members.annotate(n=Count("pk")).values("n")[:1]), Value(0)),
    )


class TeamMemberInline(admin.TabularInline):
    model = TeamMember
    fields = ("user", "is_admin", "joined_at")
    readonly_fields = ("joined_at",)
    autocomplete_fields = ("user",)
    extra = 0
    verbose_name_plural = "members (a user is in one team at most)"


class UserTeamInline(admin.TabularInline):
    """On a user's page: the team they are in."""

    model = TeamMember
    fields = ("team", "is_admin", "joined_at")
    readonly_fields = ("joined_at",)
    max_num = 1
    extra = 0
    verbose_name_plural = "team (its limits apply on top of the user's)"


@admin.register(Team)
class TeamAdmin(PeriodSpendColumns, KeepsBillingHistory, admin.ModelAdmin):
    form = LimitsForm
    list_display = (
        "name",
        "members",
        "budget",
        "period",
        "spent",
        "remaining",
        "rpm",
        "tpm",
        "created_at",
    )
    list_filter = ("period",)
    search_fields = ("name", "members__user__username")
    inlines = (TeamMemberInline,)
    budget = money_column("budget_usd", "budget (USD)")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Team]:
        return teams_with_spend(super().get_queryset(request), now=timezone.now())

    def get_fieldsets(self, request: HttpRequest, obj: Team | None = None) -> list:
        editable = obj is None or self.has_change_permission(request, obj)
        name, limits = limits_fieldset(editable=editable)
        options = {
            **limits,
            "description": "Empty means no limit of that kind. Each member's own limits and "
            "their keys' apply too: the tightest wins.",
        }
        return [(None, {"fields": ("name",)}), (name, options)]

    def get_readonly_fields(self, request: HttpRequest, obj: Team | None = None) -> tuple:
        return ("budget",)

    @admin.display(description="members", ordering="member_count")
    def members(self, obj: Team) -> int:
        return obj.member_count

    def billing_owners(self, objs: Any) -> dict[type[Model], Any]:
        return {Team: objs}

    def save_model(self, request: HttpRequest, obj: Team, form: ModelForm, change: bool) -> None:
        limits = {f: getattr(obj, f) for f in LIMIT_FIELDS}
        if change:
            team_update_limits(team=obj, name=obj.name, **limits)
            return
        team = team_create(name=obj.name, **limits)
        obj.pk, obj.created_at = team.pk, team.created_at  # the members inline saves onto it
        obj._state.adding = False

    def save_formset(
        self, request: HttpRequest, form: ModelForm, formset: BaseInlineFormSet, change: bool
    ) -> None:
        if formset.model is not TeamMember:
            super().save_formset(request, form, formset, change)
            return
        members = formset.save(commit=False)
        for gone in formset.deleted_objects:
            team_member_remove(user=gone.user)
        # A row whose user was changed names someone else now: the user it named leaves the
        # team (else they would go on spending its budget, unseen on this page).
        replaced = [m.pk for m, changed in formset.changed_objects if "user" in changed]
        for old in TeamMember.objects.filter(pk__in=replaced).select_related("user"):
            team_member_remove(user=old.user)
        for member in members:
            team_member_set(team=form.instance, user=member.user, is_admin=member.is_admin)
