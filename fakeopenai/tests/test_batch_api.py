"""The Batch API in OpenAI's shapes, through the official SDK: a batch runs each line as the
endpoint would answer it, and bills each line as a request of its own (marked with the batch
and the line), so what a batch cost can be summed from /_fake/bills; a bad input file fails
the batch at validation; a held batch can be cancelled part way or run to its end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types import Batch, CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion
from openai.types.completion import Completion
from openai.types.responses import Response

from fakeopenai.tests.calls import bills, n_tokens, openai_chat_count, stats

FINISHED = ("completed", "failed", "cancelled", "expired")
BATCH_FIELDS = set(Batch.model_fields)


def control(fake, path: str) -> tuple[int, dict]:
    async def run() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session, session.post(f"{fake.origin}{path}") as r:
            return r.status, await r.json()

    return asyncio.run(run())


def line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_line(custom_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return line(
        custom_id,
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra},
    )


def upload(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    content = b"".join(orjson.dumps(item) + b"\n" for item in lines)
    return client.files.create(file=("batch.jsonl", content), purpose="batch").id


def start(client: openai.OpenAI, lines: list[dict[str, Any]], **params: Any) -> Batch:
    endpoint = params.pop("endpoint", lines[0]["url"] if lines else "/v1/chat/completions")
    return client.batches.create(
        input_file_id=upload(client, lines),
        endpoint=endpoint,
        completion_window="24h",
        **params,
    )


def wait_for(
    client: openai.OpenAI, batch_id: str, done: Any = None, timeout: float = 3.0
) -> tuple[Batch, list[str]]:
    """Poll until `done(batch)` (default: finished); the batch and each status seen."""
    done = done or (lambda b: b.status in FINISHED)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if done(batch):
            return batch, seen
        assert time.monotonic() < deadline, f"batch stuck: {batch}"
        time.sleep(0.01)


def jsonl(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(row) for row in client.files.content(file_id).read().splitlines()]


def bills_of(fake, batch_id: str) -> dict[str, dict]:
    """The batch's bills by custom_id."""
    return {b["custom_id"]: b for b in bills(fake)["bills"] if b.get("batch_id") == batch_id}


def test_a_chat_batch_answers_every_line_and_bills_each_like_a_request(client, fake):
    texts = ["Say hello", "Name a colour", "Count to three please"]
    lines = [chat_line(f"chat-{i}", text) for i, text in enumerate(texts)]
    lines[2]["body"]["fake"] = {"completion_tokens": 5}
    raw = client.batches.with_raw_response.create(
        input_file_id=upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert set(raw.http_response.json()) == BATCH_FIELDS  # every field the SDK's type has
    created = raw.parse()
    assert created.id.startswith("batch_")
    assert (created.object, created.status, created.completion_window) == (
        "batch",
        "validating",
        "24h",
    )
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.metadata == {"job": "nightly"}

    batch, seen = wait_for(client, created.id)
    assert set(seen) <= {"validating", "in_progress", "finalizing", "completed"}
    assert seen[-1] == "completed"
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert batch.model == "gpt-4o-mini"
    assert batch.error_file_id is None and batch.errors is None
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(batch, stamp) >= batch.created_at
    assert batch.failed_at is batch.cancelled_at is batch.cancelling_at is None

    output = client.files.retrieve(batch.output_file_id)
    assert (output.purpose, output.filename) == ("batch_output", f"{batch.id}_output.jsonl")
    rows = jsonl(client, batch.output_file_id)
    assert [row["custom_id"] for row in rows] == ["chat-0", "chat-1", "chat-2"]
    billed = bills_of(fake, batch.id)
    for row, text in zip(rows, texts, strict=True):
        assert row["id"].startswith("batch_req_")
        assert row["error"] is None
        assert row["response"]["status_code"] == 200
        usage = ChatCompletion.model_validate(row["response"]["body"]).usage
        assert usage.prompt_tokens == openai_chat_count([{"role": "user", "content": text}])
        bill = billed[row["custom_id"]]
        assert bill["request_id"] == row["response"]["request_id"]
        assert (bill["path"], bill["model"], bill["status"], bill["outcome"]) == (
            "/v1/chat/completions",
            "gpt-4o-mini",
            200,
            "completed",
        )
        assert (bill["prompt_tokens"], bill["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert bill["usage_reported"] is True
    assert billed["chat-2"]["completion_tokens"] == 5
    assert batch.usage.input_tokens == sum(b["prompt_tokens"] for b in billed.values())
    assert batch.usage.output_tokens == sum(b["completion_tokens"] for b in billed.values())
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
    # The calls to /v1/files and /v1/batches bill nothing themselves, in a bill of the keys
    # a direct request's has; a line's bill has those and its batch_id and custom_id.
    direct = [b for b in bills(fake)["bills"] if b["path"].startswith(("/v1/files", "/v1/batch"))]
    assert {b["path"] for b in direct} >= {"/v1/files", "/v1/batches", f"/v1/batches/{batch.id}"}
    for bill in direct:
        assert bill["prompt_tokens"] == bill["completion_tokens"] == 0
        assert set(bill) | {"batch_id", "custom_id"} == set(billed["chat-0"])
        assert billed["chat-0"]["batch_id"] == batch.id


def test_an_embeddings_batch_bills_the_tokens_of_each_input(client, fake):
    inputs = ["the quick brown fox", ["two", "inputs here"]]
    lines = [
        line(f"emb-{i}", "/v1/embeddings", {"model": "text-embedding-3-small", "input": value})
        for i, value in enumerate(inputs)
    ]
    batch, _ = wait_for(client, start(client, lines).id)
    assert batch.status == "completed"
    billed = bills_of(fake, batch.id)
    expected = [n_tokens(inputs[0], "cl100k_base"), n_tokens("two", "cl100k_base") + 2]
    assert n_tokens("inputs here", "cl100k_base") == 2
    for row, tokens in zip(jsonl(client, batch.output_file_id), expected, strict=True):
        answer = CreateEmbeddingResponse.model_validate(row["response"]["body"])
        assert answer.usage.prompt_tokens == tokens == billed[row["custom_id"]]["prompt_tokens"]
        assert billed[row["custom_id"]]["request_id"] == row["response"]["request_id"]
    assert batch.usage.input_tokens == sum(expected)


@pytest.mark.parametrize(
    ("endpoint", "body", "parsed"),
    [
        (
            "/v1/responses",
            {"model": "gpt-4.1", "input": "Say hi", "instructions": "Brief."},
            Response,
        ),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Once"}, Completion),
        ("/v1/moderations", {"input": ["fine", "also fine"]}, ModerationCreateResponse),
    ],
)
def test_every_batch_endpoint_is_answered_by_its_own_handler(client, fake, endpoint, body, parsed):
    batch, _ = wait_for(client, start(client, [line("only", endpoint, body)]).id)
    assert batch.status == "completed"
    [row] = jsonl(client, batch.output_file_id)
    answer = parsed.model_validate(row["response"]["body"])
    [bill] = bills_of(fake, batch.id).values()
    assert bill["path"] == endpoint
    if endpoint == "/v1/responses":
        assert (
            answer.usage.input_tokens
            == bill["prompt_tokens"]
            == n_tokens("Say hi") + n_tokens("Brief.")
        )
    elif endpoint == "/v1/completions":
        assert answer.usage.prompt_tokens == bill["prompt_tokens"] == 1
    else:
        assert len(answer.results) == 2  # moderations bill nothing, as OpenAI's
        assert bill["prompt_tokens"] == bill["completion_tokens"] == 0
    assert batch.usage.input_tokens == bill["prompt_tokens"]


def test_a_line_that_fails_goes_to_the_error_file_and_bills_nothing(client, fake):
    lines = [
        chat_line("ok", "Say hello"),
        chat_line("limited", "Say hello", fake={"fail_status": 429, "fail_message": "Slow down"}),
        line("no-messages", "/v1/chat/completions", {"model": "gpt-4o-mini"}),
        chat_line("streamed", "Say hello", stream=True),
    ]
    batch, _ = wait_for(client, start(client, lines).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 1, "failed": 3}
    assert [row["custom_id"] for row in jsonl(client, batch.output_file_id)] == ["ok"]
    errors = {row["custom_id"]: row for row in jsonl(client, batch.error_file_id)}
    assert list(errors) == ["limited", "no-messages", "streamed"]
    assert errors["limited"]["error"] is None
    assert errors["limited"]["response"]["status_code"] == 429
    assert errors["limited"]["response"]["body"] == {
        "error": {
            "message": "Slow down",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert errors["no-messages"]["response"]["status_code"] == 400
    assert errors["no-messages"]["response"]["body"]["error"]["param"] == "messages"
    assert errors["streamed"]["response"]["body"]["error"]["param"] == "stream"
    billed = bills_of(fake, batch.id)
    assert set(billed) == {"ok", "limited", "no-messages", "streamed"}
    for custom_id, row in errors.items():
        bill = billed[custom_id]
        assert bill["request_id"] == row["response"]["request_id"]
        assert (bill["outcome"], bill["prompt_tokens"], bill["completion_tokens"]) == (
            "error",
            0,
            0,
        )
    assert batch.usage.input_tokens == billed["ok"]["prompt_tokens"] > 0


def test_a_bad_input_file_fails_the_batch_at_validation_and_runs_nothing(client, fake):
    lines: list[Any] = [
        chat_line("a", "hi"),
        line("e", "/v1/embeddings", {"model": "gpt-4o-mini", "input": "x"}),
        chat_line("a", "again"),
        {"custom_id": "b", "method": "GET", "url": "/v1/chat/completions", "body": {}},
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions"},
        chat_line("d", "hi", model="gpt-4o"),
    ]
    content = b"".join(orjson.dumps(item) + b"\n" for item in lines) + b"{not json\n\n"
    file_id = client.files.create(file=("bad.jsonl", content), purpose="batch").id
    created = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch, seen = wait_for(client, created.id)
    assert seen[-1] == "failed" and "in_progress" not in seen
    assert batch.failed_at is not None and batch.in_progress_at is None
    assert batch.errors.object == "list"
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == [
        ("url_mismatch", 2, "url"),
        ("duplicate_custom_id", 3, "custom_id"),
        ("invalid_value", 4, "method"),
        ("missing_required_parameter", 5, "body"),
        ("model_mismatch", 6, "body.model"),
        ("invalid_json_line", 7, None),
    ]
    assert batch.errors.data[-1].message == "This line is not parseable as valid JSON."
    assert batch.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert batch.output_file_id is None and batch.error_file_id is None
    assert bills_of(fake, batch.id) == {}

    empty = client.files.create(file=("empty.jsonl", b"\n"), purpose="batch").id
    created = client.batches.create(
        input_file_id=empty, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch, _ = wait_for(client, created.id)
    assert [(e.code, e.line) for e in batch.errors.data] == [("empty_file", None)]


def test_a_held_batch_cancelled_part_way_keeps_and_bills_what_ran(client, fake):
    lines = [chat_line(f"n{i}", f"Line number {i}") for i in range(4)]
    created = start(client, lines, metadata={"fake_hold": "2"})
    batch, _ = wait_for(client, created.id, lambda b: b.request_counts.completed == 2)
    time.sleep(0.1)
    batch = client.batches.retrieve(created.id)
    assert (batch.status, batch.request_counts.completed) == ("in_progress", 2)  # held
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch, seen = wait_for(client, created.id)
    assert seen[-1] == "cancelled" and batch.cancelled_at is not None
    assert batch.completed_at is None
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 2, "failed": 0}
    rows = jsonl(client, batch.output_file_id)
    assert [row["custom_id"] for row in rows] == ["n0", "n1"]
    unrun = jsonl(client, batch.error_file_id)
    assert [(row["custom_id"], row["response"], row["error"]["code"]) for row in unrun] == [
        ("n2", None, "batch_cancelled"),
        ("n3", None, "batch_cancelled"),
    ]
    billed = bills_of(fake, batch.id)
    assert set(billed) == {"n0", "n1"}  # what never ran is not billed
    assert [billed[row["custom_id"]]["request_id"] for row in rows] == [
        row["response"]["request_id"] for row in rows
    ]
    assert batch.usage.input_tokens == sum(b["prompt_tokens"] for b in billed.values())
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.cancel(created.id)
    assert refused.value.body["message"] == "Cannot cancel a batch with status 'cancelled'."


def test_a_cancel_lets_the_line_in_flight_finish(client, fake):
    lines = [chat_line("slow", "Take your time", fake={"latency_ms": 300}), chat_line("next", "hi")]
    created = start(client, lines)
    wait_for(client, created.id, lambda b: b.status == "in_progress")
    client.batches.cancel(created.id)
    batch, _ = wait_for(client, created.id)
    assert batch.status == "cancelled"
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 0}
    assert [row["custom_id"] for row in jsonl(client, batch.output_file_id)] == ["slow"]
    assert set(bills_of(fake, batch.id)) == {"slow"}


def test_a_held_batch_runs_to_its_end_through_the_control_endpoint(client, fake):
    lines = [chat_line(f"h{i}", "Say hello") for i in range(3)]
    created = start(client, lines, metadata={"fake_hold": "true"})
    wait_for(client, created.id, lambda b: b.status == "in_progress")
    time.sleep(0.1)
    held = client.batches.retrieve(created.id)
    assert (held.status, held.request_counts.completed) == ("in_progress", 0)
    assert bills_of(fake, created.id) == {}
    status, body = control(fake, f"/_fake/batches/{created.id}/complete")
    assert status == 200
    finished = Batch.model_validate(body)
    assert finished.status == "completed"
    assert finished.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert client.batches.retrieve(created.id) == finished
    assert set(bills_of(fake, created.id)) == {"h0", "h1", "h2"}
    # A finished batch is answered as it is; an unknown one is a 404.
    assert control(fake, f"/_fake/batches/{created.id}/complete")[1] == body
    status, body = control(fake, "/_fake/batches/batch_nope/complete")
    assert (status, body["error"]["message"]) == (404, "No batch found with id 'batch_nope'.")


def test_batches_list_newest_first_and_the_sdk_walks_every_page(client, fake):
    control(fake, "/_fake/reset")
    file_id = upload(client, [chat_line("x", "hi")])
    made = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    newest_first = list(reversed(made))
    page = client.batches.list(limit=2)
    assert ([b.id for b in page.data], page.has_more) == (newest_first[:2], True)
    raw = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert (raw["object"], raw["first_id"], raw["last_id"]) == ("list", *newest_first[:2])
    assert [b.id for b in client.batches.list(limit=2)] == newest_first
    assert [b.id for b in client.batches.list()] == newest_first
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.list(limit=101)
    assert refused.value.code == "integer_above_max_value"
    for batch_id in made:
        wait_for(client, batch_id)


def test_batches_openai_refuses_are_refused(client, fake):
    good = upload(client, [chat_line("x", "hi")])
    other = client.files.create(file=("a.txt", b"a"), purpose="user_data").id

    def create(**params: Any) -> openai.APIStatusError:
        body = {"input_file_id": good, "endpoint": "/v1/chat/completions"}
        body["completion_window"] = "24h"
        with pytest.raises(openai.APIStatusError) as refused:
            client.batches.create(**{**body, **params})
        return refused.value

    missing = create(input_file_id="file-missing")
    assert (missing.status_code, missing.body["message"]) == (
        404,
        "No such File object: file-missing",
    )
    assert create(input_file_id=other).param == "input_file_id"
    wrong = create(endpoint="/v1/images/variations")
    assert (wrong.status_code, wrong.param, wrong.code) == (400, "endpoint", "invalid_value")
    assert create(completion_window="1h").param == "completion_window"
    assert create(metadata={"fake_hold": "soon"}).param == "metadata.fake_hold"
    assert create(metadata={"k": 1}).status_code == 400
    expiry = create(output_expires_after={"anchor": "created_at", "seconds": 60})
    assert expiry.param == "output_expires_after.seconds"
    for call in (client.batches.retrieve, client.batches.cancel):
        with pytest.raises(openai.NotFoundError) as unknown:
            call("batch_nope")
        assert unknown.value.body["message"] == "No batch found with id 'batch_nope'."


def test_output_files_expire_as_asked_and_a_reset_forgets_held_batches(client, fake):
    batch = start(
        client,
        [chat_line("x", "hi")],
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    batch, _ = wait_for(client, batch.id)
    output = client.files.retrieve(batch.output_file_id)
    assert output.expires_at == output.created_at + 7200
    held = start(client, [chat_line("y", "hi")], metadata={"fake_hold": "true"})
    assert stats(fake)["running_batches"] >= 1
    control(fake, "/_fake/reset")
    assert (stats(fake)["stored_batches"], stats(fake)["running_batches"]) == (0, 0)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(held.id)
    assert bills_of(fake, held.id) == {}
