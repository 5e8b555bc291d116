"""Teams: a team's limits apply on top of its members' and their keys', reserved in the same
atomic step, settled, healed and repriced with them.

The database-level tests call the reservation as the relay does; the end-to-end ones send
real requests through the proxy with the official SDK, many at once (over two processes on
PostgreSQL + Redis), and check the team's ledger against the records and against what the
fake upstream itself says it served.
"""

from __future__ import annotations

import datetime as dt
import os
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction

from keys.models import QuotaLedger, Team
from keys.selectors import key_info_for_secret, key_info_reread
from keys.services import (
    QuotaExceeded,
    TeamChanged,
    key_issue,
    quota_reserve,
    team_create,
    team_member_remove,
    team_member_set,
    team_update_limits,
)
from tests.e2e import records_for
from tests.factories import request_record
from usage.models import RecordState, UsageRecord
from usage.services import usage_records_reap, usage_records_write

pytestmark = pytest.mark.usefixtures("fresh_key_caches")

NOW = dt.datetime(2031, 3, 4, 12, 0, tzinfo=dt.UTC)
HELLO = [{"role": "user", "content": "Count to three"}]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "")


def member_key(team: Team, username: str, **limits: object):
    api_key, secret = key_issue(username=username, **limits)
    team_member_set(team=team, user=api_key.user)
    return key_info_for_secret(secret), secret


def reserve(key, cost: str, *, tokens: int = 100) -> UsageRecord:
    record = request_record(key, created_at=NOW)
    quota_reserve(key=key, cost=Decimal(cost), tokens=tokens, now=NOW, record=record)
    return record


def finish(record: UsageRecord, cost: str) -> None:
    record.status_code = 200
    record.cost_usd = Decimal(cost)
    record.completion_tokens = 5
    record.estimated = False
    usage_records_write(records=[record])


def team_row(team: Team) -> QuotaLedger:
    return QuotaLedger.objects.get(team=team)


@pytest.mark.django_db(transaction=True)
def test_a_team_budget_is_shared_by_its_members_and_refuses_the_one_past_it():
    team = team_create(name="search", budget_usd=Decimal("0.30"))
    ann, _ = member_key(team, "ann")
    bob, _ = member_key(team, "bob")

    first = reserve(ann, "0.20")
    with pytest.raises(QuotaExceeded) as refused:
        reserve(bob, "0.20")

    assert "budget of your team" in refused.value.message and "$0.3" in refused.value.message
    # The refusal took nothing: not from the team, nor from bob's key or account.
    assert team_row(team).reserved_usd == Decimal("0.20")
    assert QuotaLedger.objects.get(user__username="bob").reserved_usd == 0
    assert QuotaLedger.objects.get(api_key_id=bob.id).reserved_usd == 0
    assert first.team_ledger_id == team_row(team).pk

    finish(first, "0.05")
    row = team_row(team)
    assert (row.spent_usd, row.reserved_usd, row.requests) == (Decimal("0.05"), 0, 1)
    reserve(bob, "0.20")  # what the first left unspent is back in the team's budget
    assert team_row(team).reserved_usd == Decimal("0.20")


@pytest.mark.django_db(transaction=True)
def test_the_tightest_of_key_user_and_team_wins():
    team = team_create(name="ads", budget_usd=Decimal(10), request_limit=2)
    key, secret = member_key(team, "cat", budget_usd=Decimal(5))

    reserve(key, "1")
    reserve(key, "1")
    with pytest.raises(QuotaExceeded) as refused:
        reserve(key, "1")
    assert "request limit of your team" in refused.value.message

    team_update_limits(team=team, request_limit=None, token_limit=250)
    key = key_info_for_secret(secret)  # read again: the change forgot this process's copy
    assert key.team_limits.token_limit == 250
    with pytest.raises(QuotaExceeded) as refused:
        reserve(key, "1", tokens=100)  # 200 held + 100 > 250
    assert "token limit of your team" in refused.value.message


@pytest.mark.django_db(transaction=True)
def test_a_member_moved_out_stops_spending_the_team_budget_even_from_a_stale_cache():
    team = team_create(name="infra", budget_usd=Decimal(1))
    cached, secret = member_key(team, "dan")
    reserve(cached, "0.10")

    team_member_remove(user=get_user_model().objects.get(username="dan"))
    # Another process still holds the key as it was: the reservation itself checks membership.
    with pytest.raises(TeamChanged):
        reserve(cached, "0.10")
    assert team_row(team).reserved_usd == Decimal("0.10")
    assert QuotaLedger.objects.get(api_key_id=cached.id).reserved_usd == Decimal("0.10")

    fresh = key_info_for_secret(secret)
    assert fresh.team_id is None
    record = reserve(fresh, "0.10")
    assert record.team_ledger_id is None
    assert team_row(team).reserved_usd == Decimal("0.10")


@pytest.mark.django_db(transaction=True)
def test_the_reaper_releases_a_dead_process_team_reservation_and_bills_its_estimate():
    team = team_create(name="ml", budget_usd=Decimal(1))
    key, _ = member_key(team, "eve")
    record = reserve(key, "0.40")
    UsageRecord.objects.filter(pk=record.pk).update(cost_usd=Decimal("0.01"))

    result = usage_records_reap(live_processes=[])

    assert result.records == 1
    row = team_row(team)
    assert (row.reserved_usd, row.spent_usd, row.reserved_tokens) == (0, Decimal("0.01"), 0)
    assert UsageRecord.objects.get(pk=record.pk).state == RecordState.REAPED


@pytest.mark.django_db(transaction=True)
def test_a_team_ledger_row_has_one_owner_and_one_row_per_period():
    team = team_create(name="ops")
    user = get_user_model().objects.create(username="fay")
    QuotaLedger.objects.create(team=team, period="total", period_start=NOW)
    with pytest.raises(IntegrityError), transaction.atomic():
        QuotaLedger.objects.create(team=team, period="total", period_start=NOW)
    with pytest.raises(IntegrityError), transaction.atomic():
        QuotaLedger.objects.create(team=team, user=user, period="day", period_start=NOW)


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_team_is_reserved_in_the_one_statement():
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement reservation is PostgreSQL's")
    from django.test.utils import CaptureQueriesContext

    team = team_create(name="data", budget_usd=Decimal("0.25"))
    key, _ = member_key(team, "gus")
    reserve(key, "0.01")  # makes the period's ledger rows
    with CaptureQueriesContext(connection) as queries:
        reserve(key, "0.20")
    assert len(queries) == 1 and "oaiproxy_quota_reserve_teams" in queries[0]["sql"]
    with pytest.raises(QuotaExceeded) as refused:
        reserve(key, "0.20")
    assert "your team" in refused.value.message
    row = team_row(team)
    assert row.reserved_usd == Decimal("0.21") and row.requests == 2


# --- Through the proxy ------------------------------------------------------------------------


def _call(client: openai.OpenAI) -> int | str:
    try:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            max_tokens=50,
            extra_body={"fake": {"latency_ms": 800}},
        )
        return 200
    except openai.RateLimitError as exc:
        return exc.message
    except openai.APIStatusError as exc:
        return exc.status_code


def _members(e2e, team: Team, count: int) -> list[str]:
    secrets = []
    for i in range(count):
        secret = e2e.key(f"member{i}")
        team_member_set(team=team, user=get_user_model().objects.get(username=f"member{i}"))
        secrets.append(secret)
    return secrets


def _check_the_team_was_billed_exactly(e2e, team: Team, secrets: list[str], outcomes: list):
    granted = outcomes.count(200)
    refused = [o for o in outcomes if o != 200]
    assert granted >= 1 and refused, outcomes
    assert all(isinstance(o, str) and "budget of your team" in o for o in refused), refused
    per_key = len(outcomes) // len(secrets)
    records = [r for secret in secrets for r in records_for(secret, per_key)]
    row = team_row(team)
    assert row.reserved_usd == 0 and row.reserved_tokens == 0
    assert row.spent_usd == sum(r.cost_usd for r in records) <= team.budget_usd
    assert row.requests == granted
    # What the fake upstream says it served, counted by itself, not by the proxy.
    served = e2e.upstream.bills()["bills"]
    assert len(served) == granted
    assert sum(r.prompt_tokens for r in records if r.status_code == 200) == sum(
        b["prompt_tokens"] for b in served
    )


def test_thirty_concurrent_calls_of_three_members_spend_at_most_the_team_budget(e2e):
    # About two requests' worst case: most of the thirty, all in flight at once, are refused.
    team = team_create(name="growth", budget_usd=Decimal("0.00008"))
    secrets = _members(e2e, team, 3)
    clients = [e2e.client(s) for s in secrets]

    with ThreadPoolExecutor(max_workers=30) as pool:
        outcomes = list(pool.map(lambda i: _call(clients[i % 3]), range(30)))

    _check_the_team_was_billed_exactly(e2e, team, secrets, outcomes)


@pytest.mark.skipif(
    not (os.environ.get("DATABASE_URL", "").startswith("postgres") and REDIS_URL),
    reason="needs PostgreSQL (DATABASE_URL) and Redis (TEST_REDIS_URL); .ci/run sets both",
)
def test_a_team_budget_holds_for_sixty_calls_over_two_processes(e2e, two_processes):
    team = team_create(name="payments", budget_usd=Decimal("0.00012"))
    secrets = _members(e2e, team, 4)
    clients = [
        openai.OpenAI(api_key=s, base_url=p.v1, max_retries=0)
        for s in secrets
        for p in two_processes
    ]

    with ThreadPoolExecutor(max_workers=60) as pool:
        outcomes = list(pool.map(lambda i: _call(clients[i % 8]), range(64)))

    _check_the_team_was_billed_exactly(e2e, team, secrets, outcomes)


def test_proxy_me_shows_the_team_and_its_limits_and_a_team_rpm_refuses(e2e):
    team = team_create(name="support", rpm=2, allowed_models="gpt-4o-mini")
    secret = _members(e2e, team, 1)[0]
    client = e2e.client(secret)

    me = client.get("/proxy/me", cast_to=object)
    assert me["team"] == {"id": team.pk, "name": "support"}
    assert me["limits"]["team"]["rpm"] == 2 and me["limits"]["team"]["models"] == ["gpt-4o-mini"]

    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=5)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    assert "your team: 2 requests per minute" in limited.value.message
    # The refused model and the rate-limited call are recorded too (/proxy/me is not a call).
    records_for(secret, 4)


# --- The admin --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_operator_makes_a_team_adds_members_and_sees_its_spend_in_the_admin(admin_client):
    from auditlog.models import LogEntry

    ann_key, _ = key_issue(username="ann")
    bob_key, _ = key_issue(username="bob")
    form = {
        "name": "research",
        "budget_usd": "2.5",
        "period": "month",
        "budget_mode": "",
        "allowed_models": "",
        "members-TOTAL_FORMS": "2",
        "members-INITIAL_FORMS": "0",
        "members-MIN_NUM_FORMS": "0",
        "members-MAX_NUM_FORMS": "1000",
        "members-0-user": str(ann_key.user_id),
        "members-0-is_admin": "on",
        "members-1-user": str(bob_key.user_id),
    }
    response = admin_client.post("/admin/keys/team/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    team = Team.objects.get(name="research")
    assert team.budget_usd == Decimal("2.5")
    assert {(m.user.username, m.is_admin) for m in team.members.all()} == {
        ("ann", True),
        ("bob", False),
    }

    key = key_info_for_secret_of(ann_key)
    record = request_record(key)
    quota_reserve(key=key, cost=Decimal("0.75"), tokens=10, now=record.created_at, record=record)
    finish(record, "0.5")

    page = admin_client.get("/admin/keys/team/").content.decode()
    assert 'field-spent">0.50<' in page
    assert 'field-remaining">2.00<' in page
    assert 'field-members">2<' in page
    change = admin_client.get(f"/admin/keys/team/{team.pk}/change/").content.decode()
    assert "ann" in change and "bob" in change
    # A team with billing history cannot be deleted (its ledger pins it); the page says why.
    delete = admin_client.get(f"/admin/keys/team/{team.pk}/delete/").content.decode()
    assert "quota ledgers: 1" in delete
    # Who changed it is on the audit trail: the team and each membership.
    assert LogEntry.objects.get_for_object(team).get().actor.username == "admin"
    for member in team.members.all():
        assert LogEntry.objects.get_for_object(member).exists()


def key_info_for_secret_of(api_key):
    from keys.selectors import _key_info_read

    return _key_info_read(api_key.key_hash, key_hash=api_key.key_hash)


def test_a_member_moved_out_while_the_proxy_holds_their_key_is_billed_alone(e2e):
    team = team_create(name="mobile", budget_usd=Decimal(1))
    secret = _members(e2e, team, 1)[0]
    client = e2e.client(secret)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    records_for(secret, 1)
    spent = team_row(team).spent_usd
    assert spent > 0

    # The proxy process has the key cached with its team (PROXY_KEY_CACHE_SECONDS).
    team_member_remove(user=get_user_model().objects.get(username="member0"))
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)

    first, second = records_for(secret, 2)
    assert first.team_ledger_id == team_row(team).pk and second.team_ledger_id is None
    row = team_row(team)
    assert (row.spent_usd, row.requests, row.reserved_usd) == (spent, 1, 0)
    assert QuotaLedger.objects.get(user__username="member0").spent_usd == (
        first.cost_usd + second.cost_usd
    )


def test_reprice_moves_the_team_ledger_with_the_key_and_the_user(e2e):
    import io

    from django.core.management import call_command

    from usage.models import ModelPrice

    row = ModelPrice.objects.filter(model="gpt-4o-mini-2024-07-18").latest("effective_from")
    right = row.input_per_1m
    ModelPrice.objects.filter(pk=row.pk).update(input_per_1m=right * 10)
    team = team_create(name="billing", budget_usd=Decimal(1))
    secret = _members(e2e, team, 1)[0]
    e2e.client(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    [billed] = records_for(secret, 1)
    assert team_row(team).spent_usd == billed.cost_usd

    ModelPrice.objects.filter(pk=row.pk).update(input_per_1m=right)
    out = io.StringIO()
    since = (billed.created_at - dt.timedelta(minutes=1)).isoformat()
    call_command("reprice", "--from", since, stdout=out)

    [fixed] = records_for(secret, 1)
    assert fixed.cost_usd < billed.cost_usd
    assert team_row(team).spent_usd == fixed.cost_usd
    assert QuotaLedger.objects.get(user__username="member0").spent_usd == fixed.cost_usd
    assert "3 budget ledgers adjusted" in out.getvalue()


# --- Review: where a team's membership changes under a cached key ------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_team_deleted_while_a_process_holds_a_member_key_bills_them_alone():
    # A team nobody has spent in yet can be deleted (no ledger row keeps it); a process that
    # cached a member's key meanwhile must not fail their requests on a row it cannot make.
    team = team_create(name="short-lived", budget_usd=Decimal(1))
    cached, _ = member_key(team, "hal")
    other, _ = key_issue(username="ida")
    other_key = key_info_for_secret_of(other)
    Team.objects.filter(pk=team.pk).delete()

    with pytest.raises(TeamChanged):
        reserve(cached, "0.10")
    if connection.vendor == "sqlite":
        # Reserved together (quota_reserve_many): the stale one fails alone, not its batch.
        from keys.services import quota_reserve_many

        mine, theirs = request_record(cached, created_at=NOW), request_record(other_key)
        results = quota_reserve_many(
            [
                {"key": cached, "cost": Decimal("0.1"), "tokens": 1, "now": NOW, "record": mine},
                {"key": other_key, "cost": Decimal("0.1"), "tokens": 1, "now": NOW,
                 "record": theirs},
            ]
        )  # fmt: skip
        assert isinstance(results[0], TeamChanged) and not isinstance(results[1], Exception)
        assert UsageRecord.objects.filter(pk=theirs.pk).exists()
    # What the relay does on TeamChanged: read the key afresh, bill its user alone.
    record = reserve(key_info_reread(cached), "0.10")
    assert record.team_ledger_id is None
    assert not QuotaLedger.objects.filter(team_id=team.pk).exists()


def test_an_operator_replacing_a_member_in_the_team_inline_takes_the_old_one_out(admin_client):
    team = team_create(name="design")
    ann_key, _ = key_issue(username="ann")
    bob_key, _ = key_issue(username="bob")
    member = team_member_set(team=team, user=ann_key.user)
    form = {
        "name": "design",
        "period": "total",
        "budget_mode": "",
        "allowed_models": "",
        "members-TOTAL_FORMS": "1",
        "members-INITIAL_FORMS": "1",
        "members-MIN_NUM_FORMS": "0",
        "members-MAX_NUM_FORMS": "1000",
        "members-0-id": str(member.pk),
        "members-0-team": str(team.pk),
        "members-0-user": str(bob_key.user_id),
    }
    response = admin_client.post(f"/admin/keys/team/{team.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    # The row now says bob: ann no longer spends the team's budget.
    assert list(team.members.values_list("user__username", flat=True)) == ["bob"]


def test_a_member_moved_into_a_team_that_forbids_the_model_is_refused_it(e2e):
    first = team_create(name="open")
    narrow = team_create(name="narrow", allowed_models="gpt-4o")
    secret = _members(e2e, first, 1)[0]
    client = e2e.client(secret)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    records_for(secret, 1)

    # The proxy process has the key cached in its first team; the user moves to one whose
    # allow-list has no gpt-4o-mini.
    team_member_set(team=narrow, user=get_user_model().objects.get(username="member0"))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    assert refused.value.code == "model_not_allowed"
    assert not QuotaLedger.objects.filter(team=narrow, requests__gt=0).exists()
    assert len(e2e.upstream.bills()["bills"]) == 1


@pytest.mark.django_db(transaction=True)
def test_putting_a_user_in_a_team_from_their_user_page_bills_the_team_at_once(admin_client):
    from keys.selectors import key_info_for_secret as read

    api_key, secret = key_issue(username="hal")
    team = team_create(name="legal")
    assert read(secret).team_id is None  # cached in this process without a team
    page = admin_client.get(f"/admin/auth/user/{api_key.user_id}/change/").content.decode()
    assert "team_membership-TOTAL_FORMS" in page
    form = {
        "username": "hal",
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "team_membership-TOTAL_FORMS": "1",
        "team_membership-INITIAL_FORMS": "0",
        "team_membership-MIN_NUM_FORMS": "0",
        "team_membership-MAX_NUM_FORMS": "1",
        "team_membership-0-team": str(team.pk),
        "proxy_limit-TOTAL_FORMS": "0",
        "proxy_limit-INITIAL_FORMS": "0",
        "proxy_limit-MIN_NUM_FORMS": "0",
        "proxy_limit-MAX_NUM_FORMS": "1",
        "api_keys-TOTAL_FORMS": "1",
        "api_keys-INITIAL_FORMS": "1",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
        "api_keys-0-id": str(api_key.pk),
        "api_keys-0-user": str(api_key.user_id),
    }
    response = admin_client.post(f"/admin/auth/user/{api_key.user_id}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert read(secret).team_id == team.pk  # the cached copy was forgotten
