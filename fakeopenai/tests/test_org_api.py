"""The fake's organization Usage and Costs API: OpenAI's shapes, pages that really page, the
admin key only, amounts from its own bills, and the knob that shifts them."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal

import aiohttp
import openai
import pytest

from fakeopenai.app import DEFAULT_KEY
from fakeopenai.org_api import DEFAULT_ADMIN_KEY
from fakeopenai.server import FakeOpenAIThread
from fakeopenai.tests.calls import bills

ADMIN = {"Authorization": f"Bearer {DEFAULT_ADMIN_KEY}"}
DAY = 86_400
MESSAGES = [{"role": "user", "content": "Count these words for the bill."}]


def _request(
    fake: FakeOpenAIThread,
    method: str,
    path: str,
    *,
    params: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    json: object = None,
) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"{fake.origin}{path}", params=params, headers=headers, json=json
            ) as response,
        ):
            return response.status, await response.json()

    return asyncio.run(go())


def _get(fake: FakeOpenAIThread, path: str, **params: object) -> dict:
    query = [
        (name, str(item))
        for name, value in params.items()
        for item in (value if isinstance(value, list) else [value])
    ]
    status, body = _request(fake, "GET", path, params=query, headers=ADMIN)
    assert status == 200, body
    return body


def _today_start() -> int:
    now = int(time.time())
    return now - now % DAY


@pytest.fixture
def fresh(fake: FakeOpenAIThread, client: openai.OpenAI) -> openai.OpenAI:
    fake.state.reset()
    return client


def test_completions_usage_by_model_counts_the_bills_of_the_day(fake, fresh):
    for _ in range(2):
        fresh.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    fresh.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    fresh.embeddings.create(model="text-embedding-3-small", input="three more tokens")
    today = _today_start()

    page = _get(fake, "/v1/organization/usage/completions", start_time=today, group_by="model")

    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    [bucket] = page["data"]
    assert bucket["object"] == "bucket"
    assert (bucket["start_time"], bucket["end_time"]) == (today, today + DAY)
    by_model = {result["model"]: result for result in bucket["results"]}
    # Named by the snapshot the alias resolved to, as OpenAI reports usage.
    assert set(by_model) == {"gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"}
    mini = by_model["gpt-4o-mini-2024-07-18"]
    billed = [b for b in bills(fake)["bills"] if b["model"] == "gpt-4o-mini"]
    assert mini == {
        "object": "organization.usage.completions.result",
        "input_tokens": sum(b["prompt_tokens"] for b in billed),
        "output_tokens": sum(b["completion_tokens"] for b in billed),
        "input_cached_tokens": 0,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "num_model_requests": 2,
        "project_id": None,
        "user_id": None,
        "api_key_id": None,
        "model": "gpt-4o-mini-2024-07-18",
        "batch": None,
        "service_tier": None,
    }

    [embeddings] = _get(fake, "/v1/organization/usage/embeddings", start_time=today)["data"]
    [total] = embeddings["results"]
    assert total["object"] == "organization.usage.embeddings.result"
    assert total["model"] is None and total["num_model_requests"] == 1  # not grouped: null


def test_a_refused_request_and_the_calls_that_bill_nothing_count_nothing(fake, fresh):
    with pytest.raises(openai.BadRequestError):
        fresh.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_body={"fake": {"fail_status": 400}}
        )
    fresh.models.retrieve("gpt-4o")
    [bucket] = _get(fake, "/v1/organization/usage/completions", start_time=_today_start())["data"]
    assert bucket["results"] == []
    [bucket] = _get(fake, "/v1/organization/costs", start_time=_today_start())["data"]
    assert bucket["results"] == []


def test_costs_by_line_item_are_the_fakes_own_prices_of_its_bills(fake, fresh):
    fresh.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [bill] = bills(fake)["bills"]
    today = _today_start()

    [bucket] = _get(fake, "/v1/organization/costs", start_time=today, group_by="line_item")["data"]
    amounts = {r["line_item"]: Decimal(r["amount"]["value"]) for r in bucket["results"]}
    assert amounts == {
        "gpt-4o-mini-2024-07-18, input": bill["prompt_tokens"] * Decimal("0.15") / 10**6,
        "gpt-4o-mini-2024-07-18, output": bill["completion_tokens"] * Decimal("0.60") / 10**6,
    }
    assert {r["object"] for r in bucket["results"]} == {"organization.costs.result"}
    assert {r["amount"]["currency"] for r in bucket["results"]} == {"usd"}

    [bucket] = _get(fake, "/v1/organization/costs", start_time=today)["data"]
    [total] = bucket["results"]
    assert total["line_item"] is None and Decimal(total["amount"]["value"]) == sum(amounts.values())


def test_pages_follow_next_page_through_every_day_once(fake, fresh):
    fresh.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    today = _today_start()
    start, end = today - 9 * DAY, today + DAY  # ten days, today last

    seen, page, pages = [], None, 0
    while True:
        params: dict[str, object] = {"start_time": start, "end_time": end, "limit": 3}
        if page:
            params["page"] = page
        body = _get(fake, "/v1/organization/usage/completions", **params)
        pages += 1
        seen.extend(bucket["start_time"] for bucket in body["data"])
        assert len(body["data"]) <= 3
        if not body["has_more"]:
            assert body["next_page"] is None
            break
        page = body["next_page"]
        assert page.startswith("page_")
    assert pages == 4 and seen == list(range(start, end, DAY))
    # Without a limit a page holds OpenAI's default of seven days.
    body = _get(fake, "/v1/organization/costs", start_time=start, end_time=end)
    assert len(body["data"]) == 7 and body["has_more"] is True


def test_only_the_admin_key_reads_the_organizations_usage(fake, fresh):
    path = "/v1/organization/usage/completions"
    params = [("start_time", str(_today_start()))]
    for headers in ({}, {"Authorization": f"Bearer {DEFAULT_KEY}"}):
        status, body = _request(fake, "GET", path, params=params, headers=headers)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    # Nor does reading it leave a bill: it is not a model request.
    assert bills(fake)["bills"] == []


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/organization/costs", [], "start_time"),
        ("/v1/organization/costs", [("start_time", "0"), ("limit", "181")], "limit"),
        ("/v1/organization/usage/completions", [("start_time", "0"), ("limit", "32")], "limit"),
        ("/v1/organization/usage/images", [("start_time", "0"), ("bucket_width", "1h")], None),
        ("/v1/organization/costs", [("start_time", "0"), ("group_by", "model")], "group_by"),
        ("/v1/organization/costs", [("start_time", "0"), ("page", "page_!!")], "page"),
    ],
)
def test_a_bad_query_is_a_400_in_openais_shape(fake, path, params, param):
    status, body = _request(fake, "GET", path, params=params, headers=ADMIN)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    if param:
        assert body["error"]["param"] == param


def test_every_family_answers_its_own_result_object(fake, fresh):
    today = _today_start()
    fresh.moderations.create(model="omni-moderation-latest", input="fine words")
    for family in (
        "completions",
        "embeddings",
        "moderations",
        "images",
        "audio_speeches",
        "audio_transcriptions",
    ):
        body = _get(fake, f"/v1/organization/usage/{family}", start_time=today, group_by="model")
        assert body["object"] == "page" and len(body["data"]) == 1
    [bucket] = _get(fake, "/v1/organization/usage/moderations", start_time=today)["data"]
    assert bucket["results"][0]["object"] == "organization.usage.moderations.result"
    status, _ = _request(
        fake, "GET", "/v1/organization/usage/nonsense", params=[("start_time", "0")], headers=ADMIN
    )
    assert status == 404


def test_adjust_shifts_a_day_and_model_until_reset(fake, fresh):
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    shift = {"day": str(day), "model": "gpt-4o-mini", "requests": 2, "input_tokens": 1000}
    status, _ = _request(fake, "POST", "/_fake/org/adjust", json=shift)
    assert status == 200
    status, _ = _request(
        fake, "POST", "/_fake/org/adjust", json={"day": str(day), "model": "x", "usd": "0.5"}
    )
    assert status == 200

    [bucket] = _get(
        fake,
        "/v1/organization/usage/completions",
        start_time=start,
        end_time=start + DAY,
        group_by="model",
    )["data"]
    by_model = {r["model"]: r for r in bucket["results"]}
    mini = by_model["gpt-4o-mini-2024-07-18"]
    assert (mini["num_model_requests"], mini["input_tokens"]) == (2, 1000)
    [costs] = _get(
        fake, "/v1/organization/costs", start_time=start, end_time=start + DAY, group_by="line_item"
    )["data"]
    amounts = {r["line_item"]: Decimal(r["amount"]["value"]) for r in costs["results"]}
    assert amounts["gpt-4o-mini-2024-07-18, input"] == Decimal("0.00015")
    assert amounts["x, adjustment"] == Decimal("0.5")

    status, body = _request(fake, "POST", "/_fake/org/adjust", json={"requests": 1})
    assert status == 400 and body["error"]["param"] == "model"
    _request(fake, "POST", "/_fake/reset")
    [bucket] = _get(fake, "/v1/organization/usage/completions", start_time=start)["data"][:1]
    assert bucket["results"] == []
