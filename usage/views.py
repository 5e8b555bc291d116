"""Dashboards: a user's spend, budgets and recent requests; staff also see everyone's.

Every figure but the recent-requests list comes from the UsageDaily rollup and the quota
ledger (see the dashboard selectors in `usage.selectors`), so pages stay fast at millions of
records. The CSV export writes exactly the rows of the table it sits under.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import login_required
from django.core.validators import MaxValueValidator, MinValueValidator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone

from keys.money import usd
from usage.charts import (
    daily_spend_chart,
    drift_bar_chart,
    error_rate_chart,
    latency_chart,
    spend_bar_chart,
)
from usage.error_codes import error_message_received
from usage.exports import csv_download
from usage.filters import FIRST_DAY, LAST_DAY
from usage.models import ROLLUP_SUMS
from usage.reconciliation import reconciliation_latest
from usage.selectors import (
    RECORD_ENDPOINTS,
    STATUS_RANGES,
    DashboardUsage,
    UsageTotals,
    budget_lines,
    team_budget_line,
    team_member_for_viewer,
    team_membership,
    teams_listed,
    usage_activity,
    usage_by_key,
    usage_by_user,
    usage_dashboard,
    usage_record_for_viewer,
    usage_request_log,
)

DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 366
LOG_PAGE_SIZE = 50
# Pages are read by OFFSET: past this many, narrow the range or the filters instead.
LOG_MAX_PAGE = 200
# Hour columns for at most a week: 168 of them still fit the chart's width.
HOURLY_MAX_DAYS = 7
TOP_SPENDERS = 10
CSV_GROUPS = ("model", "day", "user")
EARLIEST_DAY = FIRST_DAY + dt.timedelta(days=MAX_RANGE_DAYS)


class DateRangeForm(forms.Form):
    """The `from` / `to` query parameters (UTC days, both included); either may be left out."""

    # Away from the calendar's ends: the range's end becomes the next midnight, and a missing
    # start is counted back from the end, and past 9999-12-31 or before 0001-01-01 either is
    # an OverflowError (a 500).
    start = forms.DateField(
        required=False, validators=[MinValueValidator(EARLIEST_DAY), MaxValueValidator(LAST_DAY)]
    )
    end = forms.DateField(
        required=False, validators=[MinValueValidator(EARLIEST_DAY), MaxValueValidator(LAST_DAY)]
    )

    def __init__(self, query: dict[str, Any], *, today: dt.date) -> None:
        super().__init__({"start": query.get("from") or None, "end": query.get("to") or None})
        self.today = today

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        end = data.get("end") or self.today
        start = data.get("start") or end - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1)
        if start > end:
            raise forms.ValidationError("“From” is after “to”.")
        if (end - start).days >= MAX_RANGE_DAYS:
            raise forms.ValidationError(f"Pick at most {MAX_RANGE_DAYS} days.")
        data["start"], data["end"] = start, end
        return data


def _date_range(request: HttpRequest, today: dt.date) -> tuple[dt.date, dt.date, list[str]]:
    """The range asked for, or the default last 30 days with the reason it was not used."""
    form = DateRangeForm(request.GET, today=today)
    if form.is_valid():
        return form.cleaned_data["start"], form.cleaned_data["end"], []
    errors = [str(e) for field_errors in form.errors.values() for e in field_errors]
    return today - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1), today, errors


def _subject(request: HttpRequest, username: str | None) -> AbstractBaseUser | None:
    """Whose usage a page shows: None stands for everyone's, which only staff see. A user
    asking for someone else's page (other than a member's of a team they are admin of) gets
    the same 404 as for a user who does not exist."""
    viewer = request.user
    if username is None:
        return None if viewer.is_staff else viewer
    if not viewer.is_staff and username != viewer.get_username():
        member = team_member_for_viewer(username=username, viewer=viewer)
        if member is None:
            raise Http404("No such user.")
        return member
    user_model = get_user_model()
    return get_object_or_404(user_model, **{user_model.USERNAME_FIELD: username})


def _last_days(today: dt.date, days: int) -> str:
    start = today - dt.timedelta(days=days - 1)
    return urlencode({"from": start.isoformat(), "to": today.isoformat()})


class RequestLogForm(forms.Form):
    """The request log's filters and page; a value that does not fit is dropped, not an error."""

    model = forms.CharField(required=False, max_length=120)
    endpoint = forms.ChoiceField(
        required=False, choices=[("", "any")] + [(e, e) for e in RECORD_ENDPOINTS]
    )
    status = forms.ChoiceField(
        required=False,
        choices=[("", "any")] + [(v, label) for v, (label, _, _) in STATUS_RANGES.items()],
    )
    key = forms.CharField(required=False, max_length=24)
    page = forms.IntegerField(required=False, min_value=1, max_value=LOG_MAX_PAGE)

    def filters(self) -> dict[str, Any]:
        self.is_valid()
        data = {name: self.cleaned_data.get(name) for name in self.fields}
        return {
            "model": (data["model"] or "").strip(),
            "endpoint": data["endpoint"] or "",
            "status": data["status"] or "",
            "key_prefix": (data["key"] or "").strip(),
            "page": data["page"] or 1,
        }


def _grouping(request: HttpRequest, range_days: int) -> tuple[bool, str]:
    """Whether the charts are by hour (asked for, or by default for a week or less), and why
    hours were not used when asked for."""
    asked = request.GET.get("group")
    if asked == "hour" and range_days > HOURLY_MAX_DAYS:
        return False, f"By hour shows at most {HOURLY_MAX_DAYS} days: shown by day."
    if asked in ("hour", "day"):
        return asked == "hour", ""
    return range_days <= HOURLY_MAX_DAYS, ""


def request_log_context(request: HttpRequest, log: Any, filters: dict[str, Any]) -> dict[str, Any]:
    """What templates/usage/_request_log.html needs: the page of records, its filters and the
    links to the pages beside it."""
    return {
        "log": log,
        "log_filters": filters,
        "log_endpoints": RECORD_ENDPOINTS,
        "log_statuses": [(value, label) for value, (label, _, _) in STATUS_RANGES.items()],
        "log_newer_url": _log_url(request, page=log.page - 1) if log.page > 1 else "",
        "log_older_url": (
            _log_url(request, page=log.page + 1) if log.has_next and log.page < LOG_MAX_PAGE else ""
        ),
        "log_offset": (log.page - 1) * LOG_PAGE_SIZE,
        "log_last": (log.page - 1) * LOG_PAGE_SIZE + len(log.records),
    }


def _log_url(request: HttpRequest, **changes: Any) -> str:
    params = request.GET.copy()
    for name, value in changes.items():
        params[name] = value
    return f"?{params.urlencode()}#requests"


def _table_rows(usage: DashboardUsage, group_by: str) -> list[UsageTotals]:
    if group_by == "day":
        return [totals for _, totals in usage.days if totals.requests]
    return usage.models


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return _render_dashboard(request, _subject(request, None))


@login_required
def user_dashboard(request: HttpRequest, username: str) -> HttpResponse:
    return _render_dashboard(request, _subject(request, username))


def _render_dashboard(request: HttpRequest, subject: AbstractBaseUser | None) -> HttpResponse:
    now = timezone.now()
    start, end, range_errors = _date_range(request, now.date())
    usage = usage_dashboard(
        user_id=subject.pk if subject else None, start=start, end=end, today=now.date()
    )
    query = urlencode({"from": start.isoformat(), "to": end.isoformat()})
    range_days = (end - start).days + 1
    hourly, group_note = _grouping(request, range_days)
    user_id = subject.pk if subject else None
    activity = usage_activity(
        user_id=user_id, start=start, end=end, today=now.date(), hourly=hourly
    )
    if hourly:
        spend_chart = daily_spend_chart(
            days=[(bucket.start, bucket.totals()) for bucket in activity],
            models=usage.models,
            spend_by_day_model={
                (bucket.start, model): amount
                for bucket in activity
                for model, amount in bucket.spend_by_model.items()
            },
            hourly=True,
        )
    else:
        spend_chart = daily_spend_chart(
            days=usage.days, models=usage.models, spend_by_day_model=usage.spend_by_day_model
        )
    log_form = RequestLogForm(request.GET)
    log_filters = log_form.filters()
    log = usage_request_log(
        user_id=user_id, start=start, end=end, per_page=LOG_PAGE_SIZE, **log_filters
    )
    if subject is None:
        csv_url = reverse("usage:dashboard_csv")
    else:
        csv_url = reverse("usage:user_dashboard_csv", args=[subject.get_username()])
    context: dict[str, Any] = {
        "subject": subject,
        "start": start,
        "end": end,
        "range_days": range_days,
        "range_errors": range_errors,
        "hourly": hourly,
        "group_note": group_note,
        "hourly_allowed": range_days <= HOURLY_MAX_DAYS,
        "group_urls": {
            "day": _log_url(request, group="day").removesuffix("#requests"),
            "hour": _log_url(request, group="hour").removesuffix("#requests"),
        },
        "presets": [(f"Last {days} days", _last_days(now.date(), days)) for days in (7, 30, 90)],
        "query": query,
        "csv_url": csv_url,
        "usage": usage,
        "day_rows": _table_rows(usage, "day"),
        "daily_chart": spend_chart,
        "latency_chart": latency_chart(buckets=activity, hourly=hourly),
        "error_rate_chart": error_rate_chart(buckets=activity, hourly=hourly),
        "model_chart": spend_bar_chart(
            rows=usage.models, chart_id="spend-by-model", title="Spend by model"
        ),
        "log_form": log_form,
        **request_log_context(request, log, log_filters),
        "now": now,
    }
    if subject is None:
        users = usage_by_user(start=start, end=end, today=now.date())
        context["users"] = users
        context["users_chart"] = spend_bar_chart(
            rows=users[:TOP_SPENDERS], chart_id="top-spenders", title="Top spenders"
        )
        # The last `manage.py reconcile_usage` that compared, whatever range the page shows.
        context["teams"] = teams_listed()
        run = reconciliation_latest()
        if run is not None:
            rows = list(run.rows.all())
            context["reconciliation"] = run
            context["reconciliation_rows"] = rows
            context["reconciliation_drifting"] = sum(row.drift for row in rows)
            context["reconciliation_chart"] = drift_bar_chart(
                rows=[row for row in rows if row.drift], chart_id="reconciliation-drift"
            )
    else:
        context["user_budget"], context["key_budgets"] = budget_lines(user=subject, now=now)
        # A member is refused when their team's budget is spent: the line says why.
        membership = team_membership(user=subject)
        if membership is not None:
            context["membership"] = membership
            context["team_budget"] = team_budget_line(team=membership.team, now=now)
            # Whoever else may open this page is staff or an admin of the subject's team.
            if request.user.is_staff or subject != request.user or membership.is_admin:
                context["team_url"] = reverse("usage:team_dashboard", args=[membership.team_id])
        keys = usage_by_key(user_id=subject.pk, start=start, end=end, today=now.date())
        context["keys"] = keys
        context["keys_chart"] = spend_bar_chart(
            rows=keys, chart_id="spend-by-key", title="Spend by key"
        )
    return render(request, "usage/dashboard.html", context)


@login_required
def dashboard_csv(request: HttpRequest) -> HttpResponse:
    return _render_csv(request, _subject(request, None))


@login_required
def user_dashboard_csv(request: HttpRequest, username: str) -> HttpResponse:
    return _render_csv(request, _subject(request, username))


def _render_csv(request: HttpRequest, subject: AbstractBaseUser | None) -> HttpResponse:
    """The rows of one dashboard table (`group_by` model, day or, for everyone, user) for the
    same range the page shows, with cost as keys.money.usd writes it: empty when only
    unpriced."""
    group_by = request.GET.get("group_by", "model")
    if group_by not in CSV_GROUPS or (group_by == "user" and subject is not None):
        raise Http404("Unknown grouping.")
    today = timezone.now().date()
    start, end, _ = _date_range(request, today)
    if group_by == "user":
        rows = usage_by_user(start=start, end=end, today=today)
    else:
        usage = usage_dashboard(
            user_id=subject.pk if subject else None, start=start, end=end, today=today
        )
        rows = _table_rows(usage, group_by)

    lines = []
    for row in rows:
        # A label is a model name as a client sent it, or a username: written through the
        # exports' one writer, which defuses spreadsheet formulas.
        line = {group_by: row.label, **{column: getattr(row, column) for column in ROLLUP_SUMS}}
        # Blank, not 0, when nothing was priced: the page says "unpriced" there too.
        unpriced_only = row.unpriced_requests and not row.cost_usd
        line["cost_usd"] = "" if unpriced_only else usd(row.cost_usd)
        lines.append(line)
    scope = subject.get_username() if subject else "everyone"
    return csv_download(
        lines,
        [group_by, *ROLLUP_SUMS],
        filename=f"usage-{scope}-by-{group_by}-{start}-{end}.csv",
    )


def _pretty_body(body: str) -> str:
    """A JSON body indented for reading; anything else (a stream of events) as stored."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


@login_required
def request_detail(request: HttpRequest, record_id: int) -> HttpResponse:
    record = usage_record_for_viewer(record_id=record_id, viewer=request.user)
    if record is None:
        raise Http404("No such request.")
    return render(
        request,
        "usage/request_detail.html",
        {
            "record": record,
            "error_message": error_message_received(
                error_code=record.error_code, response_body=record.response_body
            )
            if record.status_code >= 400 or record.error_code
            else "",
            "request_body": _pretty_body(record.request_body),
            "response_body": _pretty_body(record.response_body),
        },
    )
