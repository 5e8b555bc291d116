"""/api/teams/ as staff, a team's members and strangers see it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from keys.models import Team, TeamMember
from keys.selectors import key_info_for_secret
from keys.services import key_issue, quota_reserve
from keys.tests.test_api_keys import basic
from tests.factories import request_record

TEAMS = "/api/teams/"

pytestmark = pytest.mark.usefixtures("fresh_key_caches")


@pytest.fixture
def staff_api(staff):
    return basic("staff", "staff-pass")


@pytest.mark.django_db
def test_staff_make_a_team_put_members_in_it_and_read_its_spend(staff_api):
    _, secret = key_issue(username="ann")
    key_issue(username="bob")

    made = staff_api.post(
        TEAMS, {"name": "search", "budget_usd": "2.5", "period": "month", "rpm": 60}, format="json"
    )
    assert made.status_code == 201, made.json()
    team_id = made.json()["id"]
    assert made.json()["limits"]["budget_usd"] == "2.50"
    assert made.json()["usage"]["remaining_usd"] == "2.50"
    for username, admin in (("ann", True), ("bob", False)):
        put = staff_api.put(
            f"{TEAMS}{team_id}/members/{username}/", {"is_admin": admin}, format="json"
        )
        assert put.status_code == 200, put.json()
    assert put.json()["members"] == [
        {"username": "ann", "is_admin": True},
        {"username": "bob", "is_admin": False},
    ]

    key = key_info_for_secret(secret)
    assert key.team_id == team_id and key.team_limits.rpm == 60
    record = request_record(key)
    quota_reserve(key=key, cost=Decimal("0.5"), tokens=10, now=record.created_at, record=record)
    usage = staff_api.get(f"{TEAMS}{team_id}/").json()["usage"]
    assert (usage["reserved_usd"], usage["remaining_usd"], usage["requests"]) == ("0.50", "2.00", 1)

    # PUT replaces the limits: what is left out is removed.
    changed = staff_api.put(
        f"{TEAMS}{team_id}/", {"name": "search-eu", "budget_usd": "1"}, format="json"
    )
    assert changed.status_code == 200
    assert changed.json()["limits"]["rpm"] is None and changed.json()["name"] == "search-eu"
    assert Team.objects.get(pk=team_id).budget_usd == Decimal(1)

    assert staff_api.delete(f"{TEAMS}{team_id}/members/bob/").status_code == 204
    assert staff_api.delete(f"{TEAMS}{team_id}/members/bob/").status_code == 404
    assert list(TeamMember.objects.values_list("user__username", flat=True)) == ["ann"]
    assert [t["name"] for t in staff_api.get(TEAMS).json()] == ["search-eu"]


@pytest.mark.django_db
def test_bad_team_input_gets_a_400_naming_the_field_and_strangers_get_nothing(staff_api, alice_key):
    assert staff_api.post(TEAMS, {"name": "a"}, format="json").status_code == 201
    duplicate = staff_api.post(TEAMS, {"name": "a"}, format="json")
    assert duplicate.status_code == 400 and "name" in duplicate.json()
    negative = staff_api.post(TEAMS, {"name": "b", "budget_usd": "-1"}, format="json")
    assert negative.status_code == 400 and "budget_usd" in negative.json()
    nul = staff_api.post(TEAMS, {"name": "c\x00"}, format="json")
    assert nul.status_code == 400 and "name" in nul.json()
    assert staff_api.get(f"{TEAMS}999999/").status_code == 404
    assert staff_api.put(f"{TEAMS}999999/members/alice/", {}, format="json").status_code == 404
    team = Team.objects.get(name="a")
    assert staff_api.put(f"{TEAMS}{team.pk}/members/nobody/", {}, format="json").status_code == 404

    alice = alice_key[0].user
    alice.set_password("alice-pass")
    alice.save()
    for client in (basic("alice", "alice-pass"), basic("alice", "wrong")):
        assert client.get(TEAMS).status_code in (401, 403)
        assert client.post(TEAMS, {"name": "mine"}, format="json").status_code in (401, 403)
    assert not Team.objects.filter(name="mine").exists()
