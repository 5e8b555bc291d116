"""A team's dashboard as its admins and staff see it: the team's budget, its members' spend,
their requests; a 404 for anyone else, as for a team that does not exist."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from keys.models import Period, QuotaLedger, period_start
from keys.services import key_issue, team_create, team_member_remove, team_member_set
from usage.tests.test_dashboard import _tables


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def teams(db, make_record, at):
    """Team "platform" ($10 a month): carol (team admin) spent $0.50 + $0.25 on gpt-4o-mini,
    dave $1.00 on gpt-4o and had one request refused. Team "research": erin, its admin.
    Frank is in no team and spent $5."""
    platform = team_create(name="platform", budget_usd=Decimal("10"), period=Period.MONTH)
    research = team_create(name="research")
    people = {}
    for name in ("carol", "dave", "erin", "frank"):
        people[name] = key_issue(username=name, name=f"{name} laptop")[0]
    team_member_set(team=platform, user=people["carol"].user, is_admin=True)
    team_member_set(team=platform, user=people["dave"].user)
    team_member_set(team=research, user=people["erin"].user, is_admin=True)
    records = {
        "carol_1": make_record(people["carol"], cost="0.50", created_at=at(0, 1)),
        "carol_2": make_record(people["carol"], cost="0.25", created_at=at(3)),
        "dave_1": make_record(
            people["dave"],
            cost="1.00",
            model="gpt-4o",
            response_model="gpt-4o-2024-08-06",
            prompt_tokens=1000,
            completion_tokens=300,
            created_at=at(1),
        ),
        "dave_refused": make_record(
            people["dave"],
            cost=None,
            model="gpt-4o",
            response_model="",
            status_code=429,
            error_code="insufficient_quota",
            prompt_tokens=0,
            completion_tokens=0,
            created_at=at(0, 2),
        ),
        "frank_1": make_record(people["frank"], cost="5", created_at=at(0, 3)),
    }
    now = timezone.now()
    QuotaLedger.objects.create(
        team=platform,
        period=Period.MONTH,
        period_start=period_start(Period.MONTH, now),
        spent_usd=Decimal("1.75"),
        reserved_usd=Decimal("0.25"),
    )
    users = {name: key.user for name, key in people.items()}
    return {"platform": platform, "research": research, "users": users, "records": records}


def _team_url(team) -> str:
    return f"/dashboard/teams/{team.pk}/"


def test_a_team_admin_sees_the_teams_budget_members_and_models(client, teams):
    client.force_login(teams["users"]["carol"])
    response = client.get(_team_url(teams["platform"]))
    assert response.status_code == 200
    page = response.content.decode()
    tables = _tables(response)

    assert "Team platform" in page
    [budget] = tables["budgets-table"]
    assert budget[0].startswith("Team platform")
    assert budget[1].startswith("month")
    assert budget[2:6] == ["$1.75", "$0.25", "$10.00", "$8.00"]  # spent, reserved, budget, left

    assert 'id="total-spend">$1.75<' in page
    assert 'id="total-requests">4<' in page
    members = {row[0]: row for row in tables["table-by-member"]}
    assert list(members) == ["dave", "carol"]  # most spend first
    assert members["dave"][1:3] == ["2", "1"]  # requests, errors (the refusal)
    assert members["dave"][3] == "1,000" and members["dave"][-1] == "$1.00"
    assert members["carol"][1] == "2" and members["carol"][-1] == "$0.75"
    assert 'href="/dashboard/users/dave/' in page  # a member's own dashboard, one click away
    assert "current members" in page

    models = {row[0]: row[-1] for row in tables["table-by-model"]}
    assert models == {"gpt-4o-2024-08-06": "$1.00", "gpt-4o-mini-2024-07-18": "$0.75"}
    assert 'class="day"' in page  # the daily chart

    log = tables["recent-requests"]
    assert len(log) == 4
    assert {row[1] for row in log} == {"carol", "dave"}
    assert "frank" not in page and "erin" not in page and "$5.00" not in page


def test_the_request_log_keeps_its_filters_on_the_team_page(client, teams):
    client.force_login(teams["users"]["carol"])
    response = client.get(_team_url(teams["platform"]), {"status": "429"})
    [row] = _tables(response)["recent-requests"]
    assert row[1] == "dave" and row[4].startswith("429") and "insufficient_quota" in row[4]
    # The figures above the log are the range's, whatever the log's filters.
    assert 'id="total-requests">4<' in response.content.decode()


@pytest.mark.parametrize("viewer", ["dave", "erin", "frank"])
def test_anyone_but_its_admins_and_staff_gets_404(client, teams, viewer):
    client.force_login(teams["users"][viewer])
    response = client.get(_team_url(teams["platform"]))
    assert response.status_code == 404
    assert "platform" not in response.content.decode()


def test_a_team_that_does_not_exist_is_the_same_404(client, teams):
    client.force_login(teams["users"]["carol"])
    assert client.get("/dashboard/teams/999999/").status_code == 404
    assert client.get("/dashboard/teams/99999999999999999999/").status_code == 404
    client.logout()
    response = client.get(_team_url(teams["platform"]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_staff_see_every_team_and_their_dashboard_links_to_each(client, teams, staff):
    client.force_login(staff)
    dashboard = client.get("/dashboard/").content.decode()
    assert f'href="{_team_url(teams["platform"])}?' in dashboard
    assert f'href="{_team_url(teams["research"])}?' in dashboard
    assert 'href="/admin/keys/team/"' in dashboard

    response = client.get(_team_url(teams["platform"]))
    assert response.status_code == 200
    assert _tables(response)["budgets-table"][0][5] == "$8.00"
    research = client.get(_team_url(teams["research"]))
    assert [row[0] for row in _tables(research)["table-by-member"]] == ["erin"]
    assert _tables(research)["budgets-table"][0][5] == "no budget"


def test_a_team_admin_opens_members_dashboards_and_requests_only(client, teams):
    carol, dave, erin = (teams["users"][name] for name in ("carol", "dave", "erin"))
    records = teams["records"]
    client.force_login(carol)
    page = client.get("/dashboard/users/dave/")
    assert page.status_code == 200
    assert "Usage of dave" in page.content.decode()
    assert "← Team platform" in page.content.decode()
    assert client.get("/dashboard/users/dave/usage.csv").status_code == 200
    assert client.get("/dashboard/users/frank/").status_code == 404
    assert client.get("/dashboard/users/erin/").status_code == 404
    assert client.get(f"/dashboard/requests/{records['dave_refused'].pk}/").status_code == 200
    assert client.get(f"/dashboard/requests/{records['frank_1'].pk}/").status_code == 404

    client.force_login(dave)  # a plain member sees only their own
    assert client.get("/dashboard/users/carol/").status_code == 404
    assert client.get(f"/dashboard/requests/{records['carol_1'].pk}/").status_code == 404

    client.force_login(erin)  # another team's admin
    assert client.get("/dashboard/users/dave/").status_code == 404
    assert client.get(f"/dashboard/requests/{records['dave_1'].pk}/").status_code == 404


def test_a_members_dashboard_shows_the_team_budget_beside_their_own(client, teams):
    client.force_login(teams["users"]["dave"])
    response = client.get("/dashboard/")
    rows = _tables(response)["budgets-table"]
    team = next(row for row in rows if row[0].startswith("Team platform"))
    assert team[0] == "Team platform (all its members together)"
    assert team[2:6] == ["$1.75", "$0.25", "$10.00", "$8.00"]
    assert any("dave laptop" in row[0] for row in rows)  # the key's line is still there
    assert 'id="team-link"' not in response.content.decode()  # not a team admin

    client.force_login(teams["users"]["carol"])
    page = client.get("/dashboard/").content.decode()
    assert f'id="team-link" href="{_team_url(teams["platform"])}"' in page

    client.force_login(teams["users"]["frank"])
    labels = [row[0] for row in _tables(client.get("/dashboard/"))["budgets-table"]]
    assert not any(label.startswith("Team") for label in labels)


def test_a_member_who_left_is_no_longer_counted(client, teams):
    team_member_remove(user=teams["users"]["dave"])
    client.force_login(teams["users"]["carol"])
    response = client.get(_team_url(teams["platform"]))
    assert [row[0] for row in _tables(response)["table-by-member"]] == ["carol"]
    assert 'id="total-spend">$0.75<' in response.content.decode()
    assert {row[1] for row in _tables(response)["recent-requests"]} == {"carol"}
    # The budget line is the ledger's: what was spent while dave was in the team stays spent.
    assert _tables(response)["budgets-table"][0][2] == "$1.75"
    assert client.get("/dashboard/users/dave/").status_code == 404


def _queries_for(client, url) -> int:
    cache.clear()
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_team_page_reads_as_many_queries_at_ten_times_the_records(
    client, teams, make_record, at
):
    carol = teams["users"]["carol"]
    client.force_login(carol)
    url = _team_url(teams["platform"])
    few = _queries_for(client, url)

    keys = [teams["records"]["carol_1"].api_key, teams["records"]["dave_1"].api_key]
    for n in range(60):
        make_record(keys[n % 2], model=f"model-{n % 5}", response_model="", created_at=at(n % 20))
    many = _queries_for(client, url)
    assert many == few
    assert many <= 8  # session, user, team, members, rollup, a log page and its users, ledger
