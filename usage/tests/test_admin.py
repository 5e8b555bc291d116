"""The admin as an operator uses it: issue a key (shown once), revoke, edit limits and prices,
browse and export usage without the pages slowing down as the records table grows."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from keys.models import ApiKey, QuotaLedger, UserLimit, key_hash
from usage.models import ModelPrice

KEY_ADD = "/admin/keys/apikey/add/"
RECORDS = "/admin/usage/usagerecord/"


def key_form(user_id: int, **fields) -> dict:
    form = {
        "user": user_id,
        "name": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "log_bodies": "unknown",
        "budget_usd": "",
        "period": "total",
        "token_limit": "",
        "request_limit": "",
        "rpm": "",
        "tpm": "",
        "max_concurrent": "",
        "allowed_models": "",
    }
    form.update(fields)
    return form


def bearer_status(secret: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client.get("/api/usage/").status_code


def csv_rows(response) -> list[dict]:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def records(alice_key, bob_key, make_record, at):
    alice, bob = alice_key[0], bob_key[0]
    return [
        make_record(alice, created_at=at(3), cost="0.25", upstream_request_id="req_abc123"),
        make_record(
            alice,
            created_at=at(2),
            endpoint="embeddings",
            model="text-embedding-3-small",
            response_model="text-embedding-3-small",
        ),
        make_record(bob, created_at=at(1), status_code=429, cost="0", stream=True),
        make_record(
            bob,
            created_at=at(0, 1),
            cost=None,
            model="my-ft",
            response_model="my-ft",
            estimated=True,
            status_code=502,
        ),
    ]


# --- keys ----------------------------------------------------------------------------------


def test_the_add_form_has_no_field_for_the_key(admin_client):
    html = admin_client.get(KEY_ADD).content.decode()
    assert 'name="key_hash"' not in html and 'name="prefix"' not in html
    assert 'name="budget_usd"' in html and 'name="allowed_models"' in html


def test_adding_a_key_issues_one_and_shows_it_once(admin_client, django_user_model):
    carol = django_user_model.objects.create_user("carol")
    response = admin_client.post(
        KEY_ADD,
        key_form(carol.pk, name="carol ci", budget_usd="3", allowed_models="gpt-4o*"),
        follow=True,
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"] if "<code>" in str(m)]
    assert len(shown) == 1 and "not be shown again" in shown[0]
    secret = re.search(r"sk-proxy-[A-Za-z0-9_-]+", shown[0]).group()

    api_key = ApiKey.objects.get(user=carol)
    assert api_key.key_hash == key_hash(secret) and api_key.name == "carol ci"
    assert api_key.budget_usd == Decimal("3") and api_key.model_patterns() == ["gpt-4o*"]
    assert bearer_status(secret) == 200
    # Never again: not on the key's page, not in the list.
    for url in ("/admin/keys/apikey/", f"/admin/keys/apikey/{api_key.pk}/change/"):
        assert secret not in admin_client.get(url).content.decode()


def test_an_invalid_add_form_issues_nothing(admin_client, django_user_model):
    carol = django_user_model.objects.create_user("carol")
    response = admin_client.post(KEY_ADD, key_form(carol.pk, budget_usd="-1"))
    assert response.status_code == 200 and response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()
    assert not [m for m in get_messages(response.wsgi_request) if "<code>" in str(m)]


def test_revoking_selected_keys(admin_client, alice_key, bob_key):
    response = admin_client.post(
        "/admin/keys/apikey/",
        {"action": "revoke_keys", "_selected_action": [alice_key[0].pk]},
        follow=True,
    )
    assert "Revoked 1 key" in response.content.decode()
    assert bearer_status(alice_key[1]) == 401 and bearer_status(bob_key[1]) == 200
    listed = admin_client.get("/admin/keys/apikey/", {"status": "revoked"})
    assert listed.context["cl"].result_count == 1


def test_editing_a_keys_limits(admin_client, bob_key):
    api_key = bob_key[0]
    url = f"/admin/keys/apikey/{api_key.pk}/change/"
    assert api_key.key_hash not in admin_client.get(url).content.decode()
    form = key_form(api_key.user_id, name="bob ci", budget_usd="7.5", rpm="30")
    del form["user"]  # read-only once issued
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    api_key.refresh_from_db()
    assert api_key.budget_usd == Decimal("7.5") and api_key.rpm == 30
    assert api_key.prefix == bob_key[0].prefix and bearer_status(bob_key[1]) == 200


def test_the_key_list_searches_and_filters(admin_client, alice_key, bob_key):
    found = admin_client.get("/admin/keys/apikey/", {"q": "alice"})
    assert [k.pk for k in found.context["cl"].result_list] == [alice_key[0].pk]
    by_prefix = admin_client.get("/admin/keys/apikey/", {"q": bob_key[0].prefix})
    assert [k.pk for k in by_prefix.context["cl"].result_list] == [bob_key[0].pk]
    active = admin_client.get("/admin/keys/apikey/", {"status": "active", "period": "total"})
    assert active.context["cl"].result_count == 2


def test_user_limits_inline_and_admin(admin_client, alice_key):
    alice = alice_key[0].user
    page = admin_client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert "proxy_limit-0-budget_usd" in page or "proxy_limit-__prefix__-budget_usd" in page
    assert alice_key[0].prefix in page  # the user's keys, listed

    response = admin_client.post(
        "/admin/keys/userlimit/add/",
        {
            "user": alice.pk,
            "budget_usd": "12",
            "period": "month",
            "token_limit": "",
            "request_limit": "",
            "rpm": "",
            "tpm": "",
            "max_concurrent": "",
            "allowed_models": "",
        },
    )
    assert response.status_code == 302
    limit = UserLimit.objects.get(user=alice)
    assert limit.budget_usd == Decimal("12") and limit.period == "month"


def test_the_ledger_is_read_only(admin_client, alice_key):
    QuotaLedger.objects.create(
        api_key=alice_key[0], period="total", period_start="1970-01-01T00:00:00Z"
    )
    page = admin_client.get("/admin/keys/quotaledger/")
    assert page.status_code == 200 and alice_key[0].prefix in page.content.decode()
    assert admin_client.get("/admin/keys/quotaledger/add/").status_code == 403


# --- usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, [0, 1, 2, 3]),
        ({"endpoint": "embeddings"}, [1]),
        ({"status": "4xx"}, [2]),
        ({"status": "errors"}, [2, 3]),
        ({"stream__exact": "1"}, [2]),
        ({"estimated__exact": "1"}, [3]),
        ({"q": "req_abc123"}, [0]),
        ({"q": "bob"}, [2, 3]),
        ({"q": "embedding"}, [1]),
    ],
)
def test_the_records_list_filters_and_searches(admin_client, records, query, expected):
    response = admin_client.get(RECORDS, query)
    assert response.status_code == 200
    changelist = response.context["cl"]
    assert {r.pk for r in changelist.result_list} == {records[i].pk for i in expected}
    assert changelist.result_count == len(expected)


def test_the_records_list_drills_down_by_date(admin_client, records, at):
    day = at(2)
    response = admin_client.get(
        RECORDS,
        {"created_at__year": day.year, "created_at__month": day.month, "created_at__day": day.day},
    )
    assert [r.pk for r in response.context["cl"].result_list] == [records[1].pk]
    assert admin_client.get(RECORDS, {"created_at__gte": day.isoformat()}).status_code == 200


def test_the_unfiltered_records_list_does_not_count_the_table(admin_client, records):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(RECORDS)
    assert response.context["cl"].result_count == 4
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert not any("usage_usagerecord" in sql and "WHERE" not in sql for sql in counts)


def test_records_are_read_only_and_only_superusers_delete(
    admin_client, records, client, django_user_model
):
    record = records[0]
    assert admin_client.get(f"{RECORDS}add/").status_code == 403
    page = admin_client.get(f"{RECORDS}{record.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert "req_abc123" in page.content.decode()

    viewer = django_user_model.objects.create_user("auditor", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    client.login(username="auditor", password="pw")
    assert client.get(RECORDS).status_code == 200
    assert client.get(f"{RECORDS}{record.pk}/delete/").status_code == 403
    assert admin_client.get(f"{RECORDS}{record.pk}/delete/").status_code == 200


def test_export_csv_button_downloads_the_filtered_records(admin_client, records, staff):
    page = admin_client.get(RECORDS, {"status": "errors"}).content.decode()
    assert f'href="{RECORDS}export/?status=errors"' in page
    rows = csv_rows(admin_client.get(f"{RECORDS}export/", {"status": "errors"}))
    assert sorted(int(r["id"]) for r in rows) == sorted(r.pk for r in records[2:])

    # The same columns and values as the API's export.
    api = APIClient()
    api.login(username="staff", password="staff-pass")
    assert rows == [
        r
        for r in csv_rows(api.get("/api/usage/", {"format": "csv"}))
        if int(r["id"]) in {rec.pk for rec in records[2:]}
    ]


def test_export_csv_action(admin_client, records):
    response = admin_client.post(
        RECORDS,
        {"action": "export_csv", "_selected_action": [records[0].pk, records[1].pk]},
    )
    assert sorted(int(r["id"]) for r in csv_rows(response)) == [records[0].pk, records[1].pk]


def test_daily_rollup_is_browsable_and_read_only(admin_client, records):
    page = admin_client.get("/admin/usage/usagedaily/")
    assert page.status_code == 200 and page.context["cl"].result_count == 4
    assert admin_client.get("/admin/usage/usagedaily/add/").status_code == 403


def test_prices_are_searchable_and_editable(admin_client):
    price = ModelPrice.objects.create(model="house-model", mode="chat", input_per_1m=Decimal("1"))
    listed = admin_client.get("/admin/usage/modelprice/", {"q": "house-mod"})
    assert [p.pk for p in listed.context["cl"].result_list] == [price.pk]
    by_mode = admin_client.get("/admin/usage/modelprice/", {"mode": "chat"})
    assert price in by_mode.context["cl"].result_list

    page = admin_client.get(f"/admin/usage/modelprice/{price.pk}/change/")
    form = page.context["adminform"].form
    data = {name: form[name].value() or "" for name in form.fields}
    data.update(
        {"input_per_1m": "2.5", "effective_from_0": "1970-01-01", "effective_from_1": "00:00:00"}
    )
    data.pop("effective_from", None)
    response = admin_client.post(f"/admin/usage/modelprice/{price.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    price.refresh_from_db()
    assert price.input_per_1m == Decimal("2.5")


# --- money as the admin shows it -----------------------------------------------------------


def cells(response, column: str) -> list[str]:
    """The texts of a changelist column (`list_display` name), a read-only page's field or a
    tabular inline's read-only column."""
    html = response.content.decode()
    assert response.status_code == 200
    listed = re.findall(rf'<td class="field-{column}">([^<]*)</td>', html)
    inline = re.findall(rf'<td class="field-{column}">\s*<p>([^<]*)</p>', html)
    shown = re.findall(rf'field-{column}">.*?<div class="readonly">([^<]*)</div>', html, re.S)
    return listed or inline or shown


@pytest.fixture
def odd_costs(alice_key, make_record, at):
    """A picodollar and $0.0000125 (a tie at the sixth place): $0.000012500001 together."""
    alice = alice_key[0]
    return [
        make_record(alice, created_at=at(0, 1), cost="0.000000000001"),
        make_record(alice, created_at=at(0, 2), cost="0.0000125"),
    ]


def test_records_show_their_cost_with_two_to_six_decimals(admin_client, odd_costs):
    listed = admin_client.get(RECORDS)
    assert sorted(cells(listed, "cost")) == ["0.00", "0.000012"]
    assert "E-12" not in listed.content.decode() and "0.000000000001" not in listed.content.decode()

    tiny = admin_client.get(f"{RECORDS}{odd_costs[0].pk}/change/")
    assert cells(tiny, "cost") == ["0.00"] and cells(tiny, "reserved") == ["0.00"]
    assert "0.000000000" not in tiny.content.decode()


def test_the_daily_rollup_rounds_its_exact_sum_once(admin_client, odd_costs):
    # Each record alone shows 0.00 and 0.000012; their exact sum is past the tie, so 0.000013.
    listed = admin_client.get("/admin/usage/usagedaily/")
    assert cells(listed, "cost") == ["0.000013"]
    row = listed.context["cl"].result_list[0]
    assert row.cost_usd == Decimal("0.000012500001")  # stored exact
    assert cells(admin_client.get(f"/admin/usage/usagedaily/{row.pk}/change/"), "cost") == [
        "0.000013"
    ]


def test_the_admin_csv_shows_costs_as_the_list_does(admin_client, odd_costs):
    rows = csv_rows(admin_client.get(f"{RECORDS}export/"))
    assert sorted(r["cost_usd"] for r in rows) == ["0.00", "0.000012"]


def test_budgets_and_ledgers_show_dollars_and_cents(admin_client, alice_key, bob_key):
    assert cells(admin_client.get("/admin/keys/apikey/"), "budget") == ["1.00", "—"]
    UserLimit.objects.create(user=alice_key[0].user, budget_usd=Decimal(5))
    assert cells(admin_client.get("/admin/keys/userlimit/"), "budget") == ["5.00"]
    bob = bob_key[0].user
    assert cells(admin_client.get(f"/admin/auth/user/{bob.pk}/change/"), "budget") == ["1.00"]

    ledger = QuotaLedger.objects.create(
        api_key=bob_key[0],
        period="total",
        period_start="1970-01-01T00:00:00Z",
        spent_usd=Decimal("0.0000125"),
        reserved_usd=Decimal("0.000000000001"),
    )
    listed = admin_client.get("/admin/keys/quotaledger/")
    assert (cells(listed, "spent"), cells(listed, "reserved")) == (["0.000012"], ["0.00"])
    page = admin_client.get(f"/admin/keys/quotaledger/{ledger.pk}/change/")
    assert (cells(page, "spent"), cells(page, "reserved")) == (["0.000012"], ["0.00"])


def test_a_key_page_for_staff_who_may_only_view_shows_the_budget_in_cents(
    client, bob_key, django_user_model
):
    viewer = django_user_model.objects.create_user("auditor", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.login(username="auditor", password="pw")
    page = client.get(f"/admin/keys/apikey/{bob_key[0].pk}/change/")
    assert cells(page, "budget") == ["1.00"]
    assert "1.000000000000" not in page.content.decode()


# --- the console: what an operator sees at a glance --------------------------------------


def test_the_key_list_shows_spend_remaining_and_last_use_in_one_query(
    admin_client, alice_key, bob_key, make_record, at
):
    from django.utils import timezone

    from keys.models import Period, period_start
    from keys.services import key_issue

    alice, bob = alice_key[0], bob_key[0]
    carol, _ = key_issue(username="carol")
    alice.budget_usd, alice.period = Decimal("5"), Period.DAY
    alice.save()
    today = period_start(Period.DAY, timezone.now())
    QuotaLedger.objects.create(
        api_key=alice,
        period=Period.DAY,
        period_start=today,
        spent_usd=Decimal("1.234567891"),
        reserved_usd=Decimal("0.5"),
    )
    # Yesterday's row is another period: not this period's spend.
    QuotaLedger.objects.create(
        api_key=alice,
        period=Period.DAY,
        period_start=today - dt.timedelta(days=1),
        spent_usd=Decimal("9"),
    )
    make_record(alice, created_at=at(0, 1))
    latest = make_record(alice, created_at=at(0, 2) + dt.timedelta(seconds=7))

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/keys/apikey/")
    page = response.content.decode()
    # The page's rows with their spend and last use, not a query per key.
    spend_queries = [q for q in queries if "keys_quotaledger" in q["sql"]]
    use_queries = [q for q in queries if "usage_usagerecord" in q["sql"]]
    assert len(spend_queries) == 1 and use_queries == spend_queries

    def row_of(key: ApiKey) -> str:
        return re.search(rf"<tr>(?:(?!</tr>).)*{key.prefix}(?:(?!</tr>).)*</tr>", page, re.S)[0]

    row = row_of(alice)
    assert '<td class="field-spent">1.234568</td>' in row
    assert '<td class="field-remaining">3.265432</td>' in row
    assert f"{latest.created_at:%Y-%m-%d %H:%M:%S} UTC" in row
    bob_row = row_of(bob)  # a $1 total budget, never used
    assert '<td class="field-remaining">1.00</td>' in bob_row
    assert '<td class="field-last_used">never</td>' in bob_row
    assert '<td class="field-remaining">no budget</td>' in row_of(carol)
    for column in ("spent", "remaining", "last_used"):
        assert f"sortable column-{column}" in page
    by_spend = admin_client.get("/admin/keys/apikey/", {"o": "-7"}).context["cl"].result_list
    assert by_spend[0].pk == alice.pk


def test_the_records_list_reads_at_a_glance(admin_client, records):
    page = admin_client.get(RECORDS).content.decode()
    assert "icon-no.svg" not in page and "icon-yes.svg" not in page  # no red ✗ per row
    assert page.count('<span class="proxy-tag">stream</span>') == 1
    assert f"{records[0].created_at:%Y-%m-%d %H:%M:%S}" in page  # seconds shown
    # The model once, the answered one beside it only where it differs.
    assert 'gpt-4o-mini <span class="proxy-muted">→ gpt-4o-mini-2024-07-18</span>' in page
    assert "text-embedding-3-small →" not in page
    assert "100 / 20" in page  # tokens in / out
    assert re.search(r"field-cost\">0.25<", page)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"username": "bob"}, [2, 3]),
        ({"key": "sk-proxy-"}, [0, 1, 2, 3]),
        ({"model": "my-ft"}, [3]),
        ({"model": "gpt-4o-mini-2024-07-18"}, [0, 2]),
        ({"username": "bob", "status": "5xx"}, [3]),
    ],
)
def test_the_records_list_filters_by_user_key_and_model(admin_client, records, query, expected):
    response = admin_client.get(RECORDS, query)
    assert response.status_code == 200
    assert {r.pk for r in response.context["cl"].result_list} == {records[i].pk for i in expected}
    page = response.content.decode()
    # Typed into a box: the filter lists no users or keys.
    assert 'name="username"' in page and 'name="key"' in page


def test_the_records_list_filters_by_the_exact_key(admin_client, records):
    alice_prefix = records[0].key_prefix
    response = admin_client.get(RECORDS, {"key": alice_prefix})
    assert {r.pk for r in response.context["cl"].result_list} == {records[0].pk, records[1].pk}


def test_the_records_search_finds_a_key_a_user_a_model_or_a_request_id(admin_client, records):
    def found(term: str) -> set[int]:
        response = admin_client.get(RECORDS, {"q": term})
        assert response.status_code == 200
        return {r.pk for r in response.context["cl"].result_list}

    ids = [r.pk for r in records]
    alice_prefix = records[0].key_prefix
    assert found(alice_prefix) == set(ids[:2])
    assert found(alice_prefix[:-3]) >= set(ids[:2])  # the start of a prefix
    assert found("sk-proxy-") == set(ids)
    assert found("alice") == set(ids[:2])  # a username, exactly
    assert found("ali") == set()
    assert found("gpt-4o-mini") == {ids[0], ids[2]}  # a model asked for
    assert found("4o-mini-2024") == {ids[0], ids[2]}  # part of a model answered
    assert found(" req_abc123 ") == {ids[0]}
    assert found("req_abc") == set()  # request ids only whole
    assert found("nothing-named-this") == set()


def test_a_deleted_keys_records_are_found_by_the_prefix_they_kept(admin_client, records):
    from usage.models import UsageRecord

    UsageRecord.objects.filter(pk=records[1].pk).update(api_key=None, key_prefix="sk-proxy-gone1")
    for query in ({"q": "sk-proxy-gone1"}, {"key": "sk-proxy-gone"}):
        response = admin_client.get(RECORDS, query)
        assert [r.pk for r in response.context["cl"].result_list] == [records[1].pk], query


def test_the_records_search_never_reads_the_records_by_a_pattern(admin_client, records):
    # Django's own search ORs a LIKE over every field: a scan of every record, seconds at ten
    # million. Patterns go to the keys and the daily rollup; the records are matched exactly.
    for term in (records[0].key_prefix, "bob", "embedding", "req_abc123", "no-such-thing"):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(RECORDS, {"q": term}).status_code == 200
        on_records = [q["sql"] for q in queries if 'FROM "usage_usagerecord"' in q["sql"]]
        assert on_records, term
        assert not [sql for sql in on_records if " LIKE " in sql.upper()], term


def test_a_filtered_count_stops_at_the_cap_and_says_so(admin_client, records, monkeypatch):
    from usage.admin import UsageRecordPaginator

    monkeypatch.setattr(UsageRecordPaginator, "COUNT_CAP", 2)
    page = admin_client.get(RECORDS, {"key": "sk-proxy-"}).content.decode()
    assert re.search(r'id="record-count">2\+</span> usage records', page)
    exact = admin_client.get(RECORDS, {"username": "bob"}).content.decode()
    assert re.search(r'id="record-count">2</span> usage records', exact)
    unfiltered = admin_client.get(RECORDS).content.decode()
    assert re.search(r'id="record-count">4</span> usage records', unfiltered)


@pytest.mark.parametrize("value", ["a\x00b", "%_%", "'; --", "x" * 5000])
@pytest.mark.parametrize("name", ["q", "username", "key", "model"])
def test_a_hostile_search_or_filter_finds_nothing_and_never_fails(
    admin_client, records, name, value
):
    # PostgreSQL refuses a NUL in a query: without a guard this was a 500 there.
    response = admin_client.get(RECORDS, {name: value})
    assert response.status_code == 200
    found = list(response.context["cl"].result_list)
    if name == "q" and "\x00" in value:
        assert len(found) == len(records)  # Django's search form drops a term holding a NUL
    else:
        assert found == []
