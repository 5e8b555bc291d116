"""A team's dashboard: its budget this period, its members' spend by day, by member and by
model, and their requests. Seen by staff and by the team's admins; anyone else is answered
404, as for a team that does not exist, so a team's name is never given away.

Every figure but the request log comes from the team's ledger row and its members' UsageDaily
rows (`usage.selectors.team_usage`), so the page costs the same at a million records as at a
thousand.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from usage.charts import daily_spend_chart, spend_bar_chart
from usage.selectors import (
    team_budget_line,
    team_for_viewer,
    team_usage,
    usage_request_log,
)
from usage.views import (
    LOG_PAGE_SIZE,
    RequestLogForm,
    _date_range,
    _last_days,
    _table_rows,
    request_log_context,
)


@login_required
def team_dashboard(request: HttpRequest, team_id: int) -> HttpResponse:
    team = team_for_viewer(team_id=team_id, viewer=request.user)
    if team is None:
        raise Http404("No such team.")
    now = timezone.now()
    start, end, range_errors = _date_range(request, now.date())
    found = team_usage(team=team, start=start, end=end)
    usage = found.usage
    log_form = RequestLogForm(request.GET)
    log_filters = log_form.filters()
    log = usage_request_log(
        user_id=None,
        user_ids=found.member_ids,
        start=start,
        end=end,
        per_page=LOG_PAGE_SIZE,
        **log_filters,
    )
    context: dict[str, Any] = {
        "team": team,
        "team_budget": team_budget_line(team=team, now=now),
        "start": start,
        "end": end,
        "range_days": (end - start).days + 1,
        "range_errors": range_errors,
        "presets": [(f"Last {days} days", _last_days(now.date(), days)) for days in (7, 30, 90)],
        "query": f"from={start.isoformat()}&to={end.isoformat()}",
        "usage": usage,
        "members": found.members,
        "admins": found.admins,
        "day_rows": _table_rows(usage, "day"),
        "daily_chart": daily_spend_chart(
            days=usage.days, models=usage.models, spend_by_day_model=usage.spend_by_day_model
        ),
        "members_chart": spend_bar_chart(
            rows=[row for row in found.members if row.requests],
            chart_id="spend-by-member",
            title="Spend by member",
        ),
        "model_chart": spend_bar_chart(
            rows=usage.models, chart_id="spend-by-model", title="Spend by model"
        ),
        **request_log_context(request, log, log_filters),
        "now": now,
    }
    return render(request, "usage/team_dashboard.html", context)
