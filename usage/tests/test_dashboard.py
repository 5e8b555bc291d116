"""The dashboards as their users see them: own spend only, staff see everyone, CSV = page."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from keys.models import Period, QuotaLedger, period_start
from usage.charts import format_usd
from usage.models import UsageRecord
from usage.services import usage_record_create


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Sums of closed days are cached; one test's must not show up in the next one's pages.
    cache.clear()
    yield
    cache.clear()


def _record(api_key, *, model, cost, days_ago=0, status=200, **fields):
    return usage_record_create(
        record=UsageRecord(
            created_at=timezone.now() - dt.timedelta(days=days_ago),
            user=api_key.user,
            api_key=api_key,
            key_prefix=api_key.prefix,
            endpoint=fields.pop("endpoint", "chat/completions"),
            model=model,
            response_model=model,
            status_code=status,
            prompt_tokens=fields.pop("prompt_tokens", 1000),
            completion_tokens=fields.pop("completion_tokens", 200),
            cost_usd=cost,
            **fields,
        ),
    )


@pytest.fixture
def usage_data(alice_key, bob_key):
    """Alice: gpt-4o ($0.50 + $0.75), a cheap embedding, and $10 from 45 days ago.
    Bob: o3-mini ($0.40), a fine-tune with no price, and a refused o3-mini request."""
    alice, _ = alice_key
    bob, _ = bob_key
    return {
        "alice_chat": _record(
            alice,
            model="gpt-4o",
            cost=Decimal("0.50"),
            request_body='{"model":"gpt-4o","messages":[{"role":"user","content":"hello there"}]}',
            response_body='{"id":"chatcmpl-1","choices":[]}',
        ),
        "alice_chat2": _record(alice, model="gpt-4o", cost=Decimal("0.75"), days_ago=3),
        "alice_embed": _record(
            alice, model="text-embedding-3-small", cost=Decimal("0.0002"), endpoint="embeddings"
        ),
        "alice_old": _record(alice, model="gpt-4o", cost=Decimal("10"), days_ago=45),
        "bob_chat": _record(bob, model="o3-mini", cost=Decimal("0.40"), reasoning_tokens=64),
        "bob_custom": _record(bob, model="ft:bob-custom", cost=None, days_ago=1),
        "bob_refused": _record(bob, model="o3-mini", cost=None, status=429),
    }


class _Tables(HTMLParser):
    """Rows of every <table id=…> on a page, as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = None
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(" ".join(self._cell.split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _tables(response):
    parser = _Tables()
    parser.feed(response.content.decode())
    return parser.tables


def _svg(response, chart_id):
    match = re.search(rf'<svg id="{chart_id}".*?</svg>', response.content.decode(), re.S)
    assert match, f"no chart {chart_id}"
    return match.group(0)


def test_anonymous_is_sent_to_login(client):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/dashboard/"


def test_login_form_leads_to_the_dashboard(client, usage_data, django_user_model):
    alice = django_user_model.objects.get(username="alice")
    alice.set_password("alice-pass")
    alice.save()
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-pass"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("usage:dashboard")
    assert "Your usage" in response.content.decode()


def test_user_sees_own_spend_and_not_another_users(client, usage_data):
    client.force_login(usage_data["alice_chat"].user)
    page = client.get("/dashboard/").content.decode()

    assert 'id="total-spend">$1.2502<' in page  # 0.50 + 0.75 + 0.0002; the $10 is out of range
    assert "gpt-4o" in page and "text-embedding-3-small" in page
    assert "$0.0002" in page  # a fraction of a cent is not rounded away to $0.00
    assert "o3-mini" not in page
    assert "ft:bob-custom" not in page
    assert "bob" not in page


def test_a_new_request_shows_at_once_beside_cached_days(client, usage_data, alice_key):
    client.force_login(usage_data["alice_chat"].user)
    assert 'id="total-spend">$1.2502<' in client.get("/dashboard/").content.decode()
    _record(alice_key[0], model="gpt-4o", cost=Decimal("2"))
    assert 'id="total-spend">$3.2502<' in client.get("/dashboard/").content.decode()


def test_the_date_range_picks_what_is_counted(client, usage_data):
    client.force_login(usage_data["alice_chat"].user)
    today = timezone.now().date()
    start = (today - dt.timedelta(days=60)).isoformat()
    page = client.get("/dashboard/", {"from": start, "to": today.isoformat()}).content.decode()
    assert 'id="total-spend">$11.2502<' in page

    bad = client.get("/dashboard/", {"from": "2025-02-10", "to": "2025-02-01"}).content.decode()
    assert "is after" in bad
    assert 'id="total-spend">$1.2502<' in bad  # fell back to the last 30 days


def test_unpriced_usage_says_unpriced_never_zero(client, usage_data):
    client.force_login(usage_data["bob_chat"].user)
    response = client.get("/dashboard/")
    rows = {row[0]: row for row in _tables(response)["table-by-model"]}

    assert rows["ft:bob-custom"][-1] == "unpriced"
    assert rows["o3-mini"][-1] == "$0.40"
    assert rows["o3-mini"][2] == "1"  # the refused request is an error, not unpriced usage
    assert (
        'id="total-spend">$0.40<span class="kpi-plus"> + unpriced</span><'
        in response.content.decode()
    )
    assert "$0.00" not in _svg(response, "spend-by-model")


def test_staff_see_every_user_and_can_open_each_dashboard(client, usage_data, staff):
    client.force_login(staff)
    response = client.get("/dashboard/")
    page = response.content.decode()
    tables = _tables(response)

    users = {row[0]: row for row in tables["table-by-user"]}
    assert users["alice"][-1] == "$1.2502"
    assert users["bob"][-1] == "$0.40 + unpriced"
    models = {row[0] for row in tables["table-by-model"]}
    assert models == {"gpt-4o", "o3-mini", "text-embedding-3-small", "ft:bob-custom"}
    assert 'id="total-spend">$1.6502<span class="kpi-plus"> + unpriced</span><' in page
    assert 'id="top-spenders"' in page

    bob_page = client.get("/dashboard/users/bob/").content.decode()
    assert "Usage of bob" in bob_page and "o3-mini" in bob_page and "gpt-4o" not in bob_page


def test_users_cannot_open_someone_elses_dashboard(client, usage_data):
    client.force_login(usage_data["alice_chat"].user)
    assert client.get("/dashboard/users/bob/").status_code == 404
    assert client.get("/dashboard/users/bob/usage.csv").status_code == 404
    assert client.get("/dashboard/usage.csv?group_by=user").status_code == 404
    assert client.get("/dashboard/users/alice/").status_code == 200


def test_request_detail_shows_own_record_and_bodies(client, usage_data):
    record = usage_data["alice_chat"]
    client.force_login(record.user)
    page = client.get(f"/dashboard/requests/{record.pk}/").content.decode()
    assert "hello there" in page
    assert "chatcmpl-1" in page
    assert "$0.50" in page
    # The recent list links there.
    assert f'href="/dashboard/requests/{record.pk}/"' in client.get("/dashboard/").content.decode()


def test_request_detail_of_someone_else_is_404(client, usage_data, staff):
    client.force_login(usage_data["alice_chat"].user)
    assert client.get(f"/dashboard/requests/{usage_data['bob_chat'].pk}/").status_code == 404
    assert client.get("/dashboard/requests/999999/").status_code == 404

    client.force_login(staff)
    assert client.get(f"/dashboard/requests/{usage_data['bob_chat'].pk}/").status_code == 200


def test_unpriced_record_detail_says_unpriced(client, usage_data):
    record = usage_data["bob_custom"]
    client.force_login(record.user)
    page = client.get(f"/dashboard/requests/{record.pk}/").content.decode()
    assert "unpriced" in page and "$0.00" not in page


@pytest.mark.parametrize(
    ("viewer", "url", "group_by", "table"),
    [
        ("bob", "/dashboard/", "model", "table-by-model"),
        ("alice", "/dashboard/", "day", "table-by-day"),
        ("staff", "/dashboard/", "model", "table-by-model"),
        ("staff", "/dashboard/", "user", "table-by-user"),
        ("staff", "/dashboard/users/alice/", "model", "table-by-model"),
    ],
)
def test_csv_matches_the_table_on_the_page(
    client, usage_data, staff, django_user_model, viewer, url, group_by, table
):
    client.force_login(django_user_model.objects.get(username=viewer))
    today = timezone.now().date()
    query = {"from": (today - dt.timedelta(days=13)).isoformat(), "to": today.isoformat()}
    page = client.get(url, query)
    assert page.status_code == 200
    html = page.content.decode()
    csv_link = re.search(r'href="([^"]+group_by=' + group_by + ')"', html).group(1)
    response = client.get(csv_link.replace("&amp;", "&"))
    assert response["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(response.content.decode())))

    shown = _tables(page)[table]
    assert [line[group_by] for line in lines] == [row[0] for row in shown]
    for line, row in zip(lines, shown, strict=True):
        assert [line["requests"], line["errors"]] == [row[1].replace(",", ""), row[2]]
        assert line["prompt_tokens"] == row[3].replace(",", "")
        assert line["completion_tokens"] == row[5].replace(",", "")
        if line["cost_usd"] == "":
            assert row[-1] == "unpriced"
        else:
            assert row[-1].split(" + ")[0] == format_usd(Decimal(line["cost_usd"]))


def test_model_chart_has_one_bar_per_model(client, usage_data, staff):
    client.force_login(staff)
    response = client.get("/dashboard/")
    svg = _svg(response, "spend-by-model")
    bars = re.findall(r'<rect class="bar" data-label="([^"]+)"', svg)
    assert sorted(bars) == sorted(["gpt-4o", "o3-mini", "text-embedding-3-small", "ft:bob-custom"])
    assert "<title>gpt-4o: $1.25" in svg  # the tooltip

    daily = _svg(response, "daily-spend")
    assert daily.count('class="day"') == 30
    assert 'class="segment"' in daily
    assert 'class="unpriced-mark"' in daily  # bob's fine-tune, yesterday


def test_budgets_show_remaining_for_the_current_period(client, usage_data, bob_key):
    key, _ = bob_key
    now = timezone.now()
    QuotaLedger.objects.create(
        api_key=key,
        period=Period.TOTAL,
        period_start=period_start(Period.TOTAL, now),
        spent_usd=Decimal("0.30"),
        reserved_usd=Decimal("0.10"),
    )
    client.force_login(key.user)
    budgets = _tables(client.get("/dashboard/"))["budgets-table"]
    row = next(r for r in budgets if key.prefix in r[0])
    assert row[2:6] == ["$0.30", "$0.10", "$1.00", "$0.60"]

    client.force_login(usage_data["alice_chat"].user)
    alice_rows = _tables(client.get("/dashboard/"))["budgets-table"]
    assert alice_rows[0][5] == "no budget"


# --- money as the dashboards show it -------------------------------------------------------

PICO = Decimal("0.000000000001")


def _axis_labels(svg):
    return re.findall(r'<text class="axis-label"[^>]*text-anchor="end">([^<]*)</text>', svg)


def test_a_picodollar_shows_as_0_00_and_sums_round_once(client, alice_key):
    alice = alice_key[0]
    tiny = _record(alice, model="gpt-4o-mini", cost=PICO)
    _record(alice, model="text-embedding-3-small", cost=Decimal("0.0000125"))
    client.force_login(alice.user)
    response = client.get("/dashboard/")
    page = response.content.decode()
    tables = _tables(response)

    costs = {row[3]: row[7] for row in tables["recent-requests"]}
    assert costs == {"gpt-4o-mini": "$0.00", "text-embedding-3-small": "$0.000012"}
    by_model = {row[0]: row[-1] for row in tables["table-by-model"]}
    assert by_model == costs
    # 0.000012500001 all told: past the tie, so up, though the rows show 0.00 and 0.000012.
    assert 'id="total-spend">$0.000013<' in page
    assert "E-12" not in page and "0.000000000001" not in page

    detail = client.get(reverse("usage:request_detail", args=[tiny.pk])).content.decode()
    assert "<strong>$0.00</strong>" in detail and "0.000000000001" not in detail

    csv_by_model = client.get(reverse("usage:dashboard_csv"), {"group_by": "model"})
    lines = list(csv.DictReader(io.StringIO(csv_by_model.content.decode())))
    assert {line["model"]: line["cost_usd"] for line in lines} == {
        "gpt-4o-mini": "0.00",
        "text-embedding-3-small": "0.000012",
    }


@pytest.mark.parametrize(
    ("cost", "labels"),
    [
        # Ticks finer than a micro-dollar would all read $0.00.
        (PICO, ["$0.00", "$0.000001"]),
        # A $0.0000025 step would be labelled $0.000002.
        (Decimal("0.000009"), ["$0.00", "$0.000005", "$0.00001"]),
        (Decimal("0.9"), ["$0.00", "$0.25", "$0.50", "$0.75", "$1.00"]),
    ],
    ids=str,
)
def test_the_spend_axis_labels_each_tick_with_its_own_amount(client, alice_key, cost, labels):
    _record(alice_key[0], model="gpt-4o-mini", cost=cost)
    client.force_login(alice_key[0].user)
    assert _axis_labels(_svg(client.get("/dashboard/"), "daily-spend")) == labels


def test_a_negative_remaining_budget_reads_minus_dollars(client, bob_key):
    key, _ = bob_key
    QuotaLedger.objects.create(
        api_key=key,
        period=Period.TOTAL,
        period_start=period_start(Period.TOTAL, timezone.now()),
        spent_usd=Decimal("1.0000125"),
    )
    client.force_login(key.user)
    row = next(r for r in _tables(client.get("/dashboard/"))["budgets-table"] if key.prefix in r[0])
    assert row[2:6] == ["$1.000012", "$0.00", "$1.00", "-$0.000012"]  # half to even


@pytest.mark.parametrize("query", ["to=9999-12-31", "from=0001-01-01&to=0001-01-05"])
def test_a_range_at_the_calendars_ends_falls_back_with_a_reason(client, usage_data, query):
    client.force_login(usage_data["alice_chat"].user)
    page = client.get(f"/dashboard/?{query}")
    assert page.status_code == 200
    assert client.get(f"/dashboard/usage.csv?{query}").status_code == 200


def test_a_request_id_past_the_column_is_not_found(client, usage_data):
    client.force_login(usage_data["alice_chat"].user)
    assert client.get("/dashboard/requests/99999999999999999999/").status_code == 404


# --- the console: grouping, latency, errors, keys, the request log, refusals ----------------


def test_a_refused_request_stays_in_its_models_row(client, alice_key, make_record):
    key, _ = alice_key
    make_record(key, model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18")
    # Refused before OpenAI: no answered model, so the rollup keeps it under the one asked for.
    make_record(
        key,
        model="gpt-4o-mini",
        response_model="",
        status_code=429,
        cost=None,
        error_code="insufficient_quota",
    )
    client.force_login(key.user)
    rows = _tables(client.get("/dashboard/"))["table-by-model"]
    assert [(row[0], row[1], row[2]) for row in rows] == [("gpt-4o-mini-2024-07-18", "2", "1")]


def test_a_refused_requests_page_says_what_the_client_was_told(client, alice_key, make_record):
    key, _ = alice_key
    record = make_record(
        key, response_model="", status_code=429, cost=None, error_code="insufficient_quota"
    )
    client.force_login(key.user)
    page = client.get(reverse("usage:request_detail", args=[record.pk])).content.decode()
    assert "insufficient_quota" in page
    assert 'id="error-message">The budget, token or request quota' in page


def test_a_stored_error_body_is_shown_as_the_message_received(client, alice_key, make_record):
    key, _ = alice_key
    body = (
        '{"error": {"message": "Budget of $5.00 spent until 1 Jan.", "code": "insufficient_quota"}}'
    )
    record = make_record(
        key, status_code=429, cost=None, error_code="insufficient_quota", response_body=body
    )
    client.force_login(key.user)
    page = client.get(reverse("usage:request_detail", args=[record.pk])).content.decode()
    assert 'id="error-message">Budget of $5.00 spent until 1 Jan.<' in page


def test_charts_group_by_hour_for_a_short_range(client, alice_key, make_record, at):
    key, _ = alice_key
    make_record(key, created_at=at(1, 9), latency_ms=100)
    make_record(key, created_at=at(1, 9), latency_ms=300, status_code=500, cost=None)
    make_record(key, created_at=at(1, 14), latency_ms=200)
    client.force_login(key.user)
    day = at(1).date().isoformat()
    response = client.get(f"/dashboard/?from={day}&to={day}&group=hour")
    spend = _svg(response, "daily-spend")
    assert spend.count('class="hour"') == 24
    latency = _svg(response, "latency")
    assert f'data-hour="{day}T09" data-p50="100" data-p95="300"' in latency
    assert f'data-hour="{day}T14" data-p50="200" data-p95="200"' in latency
    errors = _svg(response, "error-rate")
    assert f'data-hour="{day}T09" data-errors="1" data-requests="2"' in errors
    assert "50% errors: 1 of 2 requests" in errors
    # A week or less is by hour unless asked otherwise; a month is by day, even if asked.
    assert 'class="hour"' in _svg(client.get(f"/dashboard/?from={day}&to={day}"), "latency")
    month = client.get("/dashboard/?group=hour").content.decode()
    assert "By hour shows at most 7 days" in month
    assert 'class="day" data-day' in month and 'class="hour"' not in month


def test_latency_per_day_is_p50_and_p95_of_the_days_records(client, alice_key, make_record, at):
    key, _ = alice_key
    for latency in range(100, 2100, 100):  # 20 requests: p50 1000 ms, p95 1900 ms
        make_record(key, created_at=at(3, 10), latency_ms=latency)
    make_record(key, created_at=at(3, 11), latency_ms=None)  # no latency: not counted
    client.force_login(key.user)
    latency = _svg(client.get("/dashboard/?group=day"), "latency")
    # From the latency histogram: each figure is the upper edge of its bucket (1900 ms is in
    # 1.5–2 s), never below the true value.
    assert f'data-day="{at(3).date()}" data-p50="1000" data-p95="2000"' in latency
    # Read again from the cache of closed days: the same figures.
    latency = _svg(client.get("/dashboard/?group=day"), "latency")
    assert f'data-day="{at(3).date()}" data-p50="1000" data-p95="2000"' in latency


def test_latency_percentiles_read_the_histogram_not_the_records(client, alice_key, make_record, at):
    key, _ = alice_key
    for latency in (80, 90, 140, 160, 4200):
        make_record(key, created_at=at(3, 10), latency_ms=latency)
    client.force_login(key.user)
    with CaptureQueriesContext(connection) as queries:
        hourly = _svg(
            client.get(f"/dashboard/?from={at(3).date()}&to={at(3).date()}&group=hour"), "latency"
        )
    # The records are read only for the request log: one page of them.
    record_reads = [q["sql"] for q in queries if "usage_usagerecord" in q["sql"]]
    assert record_reads and all("LIMIT" in sql for sql in record_reads)
    assert 'data-p50="150" data-p95="5000"' in hourly  # 140 ms in 100–150, 4.2 s in 4–5 s


def test_a_users_page_shows_spend_per_key(client, alice_key, make_record):
    key, _ = alice_key
    from keys.services import key_issue

    other, _ = key_issue(username=key.user.get_username(), name="ci runner")
    make_record(key, cost="0.30")
    make_record(other, cost="1.20")
    make_record(other, cost="0.05")
    client.force_login(key.user)
    rows = _tables(client.get("/dashboard/"))["table-by-key"]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        (str(other), "2", "$1.25"),
        (str(key), "1", "$0.30"),
    ]
    assert 'id="spend-by-key"' in client.get("/dashboard/").content.decode()


def test_the_request_log_pages_and_filters(client, alice_key, make_record, at):
    key, _ = alice_key
    for n in range(55):
        make_record(key, created_at=at(0, 0) + dt.timedelta(minutes=n))
    make_record(
        key,
        created_at=at(0, 2),
        endpoint="embeddings",
        model="text-embedding-3-small",
        response_model="text-embedding-3-small",
    )
    make_record(key, created_at=at(0, 3), status_code=502, cost=None, error_code="upstream_error")
    client.force_login(key.user)

    first = client.get("/dashboard/")
    assert len(_tables(first)["recent-requests"]) == 50
    assert "page=2" in first.content.decode()
    second = client.get("/dashboard/?page=2")
    rows = _tables(second)["recent-requests"]
    assert len(rows) == 7 and rows[-1][0].endswith("00:00:00")
    assert "page=3" not in second.content.decode()

    def log(**query):
        return _tables(client.get("/dashboard/", query)).get("recent-requests", [])

    assert [row[4] for row in log(status="5xx")] == ["502 upstream_error"]
    assert [row[3] for row in log(model="text-embedding-3-small")] == ["text-embedding-3-small"]
    assert len(log(endpoint="embeddings")) == 1
    assert len(log(key=key.prefix, page="2")) == 7
    assert log(key="sk-proxy-nothing") == []
    # A page past the end or out of bounds is an empty page or the first, never an error.
    assert client.get("/dashboard/?page=99").status_code == 200
    assert len(_tables(client.get("/dashboard/?page=zero"))["recent-requests"]) == 50
