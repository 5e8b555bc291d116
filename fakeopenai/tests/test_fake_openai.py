"""The fake OpenAI upstream answers what the official SDK parses, counts tokens on its own,
its knobs do what the relay's tests rely on (cut streams, stalls, failures, usage that
disagrees), and it bills every request once, however the request ended."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import orjson
import pytest
from openai.types import CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from fakeopenai.app import DEFAULT_KEY
from fakeopenai.content import make_reply
from fakeopenai.counting import count_chat_prompt
from fakeopenai.knobs import Knobs
from fakeopenai.tests.calls import (
    AUTH,
    bills,
    bills_where,
    n_tokens,
    openai_chat_count,
    post,
    stats,
)
from fakeopenai.tests.media import data_url, png

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


def stream_text(wire: bytes) -> str:
    """The text of a chat stream's content deltas."""
    text = ""
    for line in wire.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text


def test_reply_text_has_exactly_the_asked_tokens_in_both_encodings(fake):
    for model, encoding in (
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-3.5-turbo-instruct", "cl100k_base"),
    ):
        for n in (0, 1, 7, 12, 13, 200, 1001):
            reply = make_reply(model, Knobs(completion_tokens=n), None)
            assert n_tokens(reply.text, encoding) == reply.completion_tokens == n
            assert "".join(reply.pieces) == reply.text
            assert reply.tokens_of_first(len(reply.pieces)) == n


def test_prompt_counting_is_its_own_not_the_proxys(fake):
    # The fake bills an image by OpenAI's rule itself (the proxy only bounds it, in
    # relay.media): 85 tokens at low detail on top of the text, by the cookbook recipe.
    with_image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": data_url("image/png", png(64, 64)), "detail": "low"},
                },
            ],
        }
    ]
    assert (
        count_chat_prompt(with_image, "gpt-4o")
        == openai_chat_count([{"role": "user", "content": "What is this?"}]) + 85
    )
    # A name costs one more token, as OpenAI's recipe says.
    named = [{"role": "user", "name": "bob", "content": "hi"}]
    assert count_chat_prompt(named, "gpt-4o") == openai_chat_count(named) + 1


def test_chat_plain_parses_strictly_and_counts_as_openai_documents(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5
    )
    completion = ChatCompletion.model_validate(raw.parse().model_dump())
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.prompt_tokens == openai_chat_count(MESSAGES)
    assert completion.usage.completion_tokens == 5
    assert completion.service_tier == "default"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["openai-organization"] == "fake-org"
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    seen = stats(fake)["last_request"]
    assert seen["headers"]["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert seen["body"]["max_tokens"] == 5


def test_chat_stream_with_usage_chunk_then_done(client):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={
                "fake": {
                    "completion_tokens": 20,
                    "chunks": 4,
                    "cached_tokens": 3,
                    "reasoning_tokens": 2,
                }
            },
        )
    )
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 22
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 2
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_wire_format_without_include_usage(fake):
    async def run() -> bytes:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {DEFAULT_KEY}"}
        ) as session:
            body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
            async with session.post(f"{fake.base_url}/chat/completions", json=body) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                return await r.read()

    wire = asyncio.run(run())
    assert wire.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in wire
    assert b'"object":"chat.completion.chunk"' in wire  # compact, like OpenAI


def test_completions_embeddings_moderations_and_models(client):
    text = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this")
    assert text.object == "text_completion" and text.choices[0].text
    assert text.usage.prompt_tokens == n_tokens("Say this", "cl100k_base")
    streamed = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="Say",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text.choices[0].text
    assert streamed[-1].usage.completion_tokens == 12

    embedded = client.embeddings.create(
        model="text-embedding-3-small", input=["one", "two"]
    )  # base64
    CreateEmbeddingResponse.model_validate(embedded.model_dump())
    assert [len(item.embedding) for item in embedded.data] == [8, 8]
    as_floats = client.embeddings.create(
        model="text-embedding-3-small", input="one", encoding_format="float", dimensions=16
    )
    assert len(as_floats.data[0].embedding) == 16
    assert embedded.usage.prompt_tokens == 2

    moderation = client.moderations.create(input=["a", "b"])
    ModerationCreateResponse.model_validate(moderation.model_dump(by_alias=True))
    assert moderation.model.startswith("omni-moderation-") and len(moderation.results) == 2

    assert {"gpt-4o-mini", "dall-e-3", "omni-moderation-latest"} <= {
        m.id for m in client.models.list()
    }
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-0")
    assert missing.value.code == "model_not_found"


def test_responses_plain_stored_and_streamed(client):
    created = client.responses.create(model="gpt-4.1-mini", input="Hello", max_output_tokens=100)
    Response.model_validate(created.model_dump())
    assert created.status == "completed" and created.output_text.startswith("This is a fake reply")
    assert created.usage.input_tokens == n_tokens("Hello")
    assert client.responses.retrieve(created.id).id == created.id

    with client.responses.stream(
        model="gpt-5-mini",
        input="Again",
        previous_response_id=created.id,
        extra_body={"fake": {"terminal": "incomplete", "reasoning_tokens": 4}},
    ) as stream:
        kinds = [event.type for event in stream]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.incomplete"

    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")


def test_errors_auth_unknown_url_and_requested_failure(client, fake):
    with pytest.raises(openai.AuthenticationError) as denied:
        openai.OpenAI(api_key="sk-client", base_url=fake.base_url, max_retries=0).models.list()
    assert denied.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.get("/nope/nope", cast_to=object)
    assert unknown.value.code == "unknown_url"
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            extra_body={
                "fake": {
                    "fail_status": 429,
                    "fail_code": "insufficient_quota",
                    "should_retry": False,
                }
            },
        )
    assert limited.value.code == "insufficient_quota"
    assert limited.value.response.headers["x-should-retry"] == "false"


def test_cut_stream_breaks_the_client_and_end_early_does_not(fake):
    async def run(knobs: dict) -> tuple[bytes, BaseException | None]:
        received = b""
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {DEFAULT_KEY}"}
        ) as session:
            body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "fake": knobs}
            try:
                async with session.post(f"{fake.base_url}/chat/completions", json=body) as r:
                    async for line in r.content:
                        received += line
            except aiohttp.ClientPayloadError as error:
                return received, error
        return received, None

    cut, error = asyncio.run(run({"cut_after": 3}))
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert cut.count(b"data: ") == 4  # role chunk + 3 content chunks
    early, error = asyncio.run(run({"end_early_after": 2, "chunk_delay_ms": 1}))
    assert error is None and early.count(b"data: ") == 3 and b"[DONE]" not in early


def test_client_hanging_up_closes_the_stream(fake):
    async def hang_up() -> None:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {DEFAULT_KEY}"}
        ) as session:
            body = {
                "model": "gpt-4o",
                "input": "hi",
                "stream": True,
                "fake": {"chunk_delay_ms": 200},
            }
            async with session.post(f"{fake.base_url}/responses", json=body) as r:
                await r.content.readline()
                async with session.get(f"{fake.origin}/_fake/stats") as seen:
                    assert (await seen.json())["open_streams"] == 1
                r.close()

    asyncio.run(hang_up())
    deadline = time.monotonic() + 2
    while stats(fake)["open_streams"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats(fake)["open_streams"] == 0


def test_reset_forgets_counts_and_responses(client, fake):
    client.responses.create(model="gpt-4o-mini", input="x")
    assert stats(fake)["requests"] > 0

    async def reset() -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(f"{fake.origin}/_fake/reset")

    asyncio.run(reset())
    after = stats(fake)
    assert after["requests"] == 0 and after["by_path"] == {} and after["stored_responses"] == 0


# -- knobs that make "OpenAI" disagree with the proxy ---------------------------------------------


def test_usage_knobs_report_other_counts_than_the_text_and_bill_them(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_body={"fake": {"usage_prompt_tokens": 1234, "usage_completion_tokens": 7}},
    )
    completion = raw.parse()
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1234, 7)
    assert completion.usage.total_tokens == 1241
    assert n_tokens(completion.choices[0].message.content) == 12  # the text did not change
    [bill] = bills_where(fake, request_id=raw.headers["x-request-id"])
    assert (bill["prompt_tokens"], bill["completion_tokens"]) == (1234, 7)

    with client.responses.stream(
        model="gpt-4.1-mini",
        input="Hello",
        extra_body={"fake": {"usage_prompt_tokens": 50, "usage_completion_tokens": 0}},
    ) as stream:
        final = stream.get_final_response()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (50, 0)
    assert final.output_text.startswith("This is a fake reply")

    embedded = client.embeddings.create(
        model="text-embedding-3-small", input="one", extra_body={"fake": {"usage_prompt_tokens": 9}}
    )
    assert embedded.usage.prompt_tokens == 9


@pytest.mark.parametrize(
    "knobs",
    [
        {"usage_prompt_tokens": "12"},
        {"usage_completion_tokens": -1},
        {"stall_after": 1.5},
        {"stall_ms": "long"},
        {"headers_delay_ms": True},
        {"headers_delay_ms": 10, "latency_ms": 10},
        {"audio_input_tokens": -1},
        {"audio_output_tokens": "many"},
        {"tool_calls": 1.5},
        {"tool_content_tokens": True},
        {"tool_type": "browser"},
        {"image_size": "2048"},
        {"image_size": [512, 512]},
    ],
)
def test_bad_new_knobs_are_refused_in_openais_shape(fake, knobs):
    status, _, body = post(
        fake, "/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, "fake": knobs}
    )
    error = orjson.loads(body)["error"]
    assert status == 400 and error["param"].startswith("fake.")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", {"messages": MESSAGES, "max_tokens": 777}),
        ("/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 777}),
        ("/completions", {"prompt": "Say", "max_tokens": 777}),
        ("/responses", {"input": "Say", "max_output_tokens": 777}),
    ],
)
def test_completion_tokens_of_at_least_the_max_fill_it_exactly(fake, path, body):
    for wanted, reasoning in ((777, 0), (10**5, 0), (10**5, 100)):
        knobs = {"completion_tokens": wanted, "reasoning_tokens": reasoning}
        status, headers, answer = post(fake, path, {"model": "gpt-4o-mini", **body, "fake": knobs})
        usage = orjson.loads(answer)["usage"]
        assert status == 200
        assert usage.get("completion_tokens", usage.get("output_tokens")) == 777
        [bill] = bills_where(fake, request_id=headers["x-request-id"])
        assert bill["completion_tokens"] == 777


def test_headers_delay_holds_the_headers_back(fake):
    started = time.monotonic()
    status, headers, _ = post(
        fake,
        "/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "fake": {"headers_delay_ms": 300}},
    )
    assert status == 200 and time.monotonic() - started >= 0.3
    assert int(headers["openai-processing-ms"]) >= 300


def test_stall_then_resume_delivers_the_whole_stream_late(fake):
    async def run() -> tuple[float, bytes]:
        body = {
            "model": "gpt-4o",
            "messages": MESSAGES,
            "stream": True,
            "fake": {"stall_after": 2, "stall_ms": 400},
        }
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.post(f"{fake.base_url}/chat/completions", json=body) as r,
        ):
            wire, gaps, last = b"", [], time.monotonic()
            async for line in r.content:
                if line.startswith(b"data: "):
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()
                wire += line
            return max(gaps), wire

    longest_gap, wire = asyncio.run(run())
    assert longest_gap >= 0.35
    assert wire.endswith(b"data: [DONE]\n\n") and n_tokens(stream_text(wire)) == 12


# -- bills: what "OpenAI" charged, once per request --------------------------------------------------


def test_plain_answer_is_billed_under_its_request_id(client, fake):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    [bill] = bills_where(fake, request_id=raw.headers["x-request-id"])
    assert bill == {
        "request_id": raw.headers["x-request-id"],
        "path": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "created_at": bill["created_at"],
        "stream": False,
        "status": 200,
        "prompt_tokens": openai_chat_count(MESSAGES),
        "completion_tokens": 12,
        "outcome": "completed",
        "usage_reported": True,
        "audio_input_tokens": 0,
        "audio_output_tokens": 0,
        "tool_calls": {},
    }


@pytest.mark.parametrize("include_usage", [True, False])
def test_completed_stream_is_billed_whole_with_or_without_usage_sent(fake, include_usage):
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "fake": {"chunks": 3}}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, headers, wire = post(fake, "/chat/completions", body)
    assert status == 200 and wire.endswith(b"data: [DONE]\n\n")
    [bill] = bills_where(fake, request_id=headers["x-request-id"])
    assert bill["stream"] and bill["outcome"] == "completed" and bill["status"] == 200
    assert bill["completion_tokens"] == n_tokens(stream_text(wire)) == 12
    assert bill["prompt_tokens"] == openai_chat_count(MESSAGES)
    assert bill["usage_reported"] is include_usage


@pytest.mark.parametrize(
    ("knob", "outcome"), [("cut_after", "cut"), ("end_early_after", "ended_early")]
)
def test_broken_stream_bills_only_the_frames_written(fake, knob, outcome):
    async def run() -> tuple[str, bytes]:
        received = b""
        body = {
            "model": "gpt-4o",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
            "fake": {"completion_tokens": 40, "reasoning_tokens": 5, knob: 3},
        }
        async with aiohttp.ClientSession(headers=AUTH) as session:
            try:
                async with session.post(f"{fake.base_url}/chat/completions", json=body) as r:
                    request_id = r.headers["x-request-id"]
                    async for line in r.content:
                        received += line
            except aiohttp.ClientPayloadError:
                pass
        return request_id, received

    request_id, wire = asyncio.run(run())
    [bill] = bills_where(fake, request_id=request_id)
    assert bill["outcome"] == outcome and bill["status"] == 200
    # The reasoning came first, then three deltas: not the 45 a whole answer costs.
    assert bill["completion_tokens"] == 5 + n_tokens(stream_text(wire)) < 45
    assert not bill["usage_reported"]


def test_client_leaving_a_stalled_stream_is_billed_for_what_it_was_sent(fake):
    async def run() -> tuple[str, str]:
        body = {
            "model": "gpt-4o",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
            "fake": {"stall_after": 2},
        }
        async with aiohttp.ClientSession(headers=AUTH) as session:
            r = await session.post(f"{fake.base_url}/chat/completions", json=body)
            request_id, wire = r.headers["x-request-id"], b""
            deltas = 0
            while deltas < 2:  # the role chunk, then two word deltas
                line = await asyncio.wait_for(r.content.readline(), timeout=5)
                deltas += bool(stream_text(line))
                wire += line
            assert await r.content.readline() == b"\n"  # the end of the second frame
            # Stalled: nothing more comes until the client gives up.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.content.readline(), timeout=0.3)
            r.close()
        return request_id, stream_text(wire)

    request_id, text = asyncio.run(run())
    [bill] = bills_where(fake, request_id=request_id)
    assert bill["outcome"] == "client_gone" and bill["status"] == 200
    assert bill["completion_tokens"] == n_tokens(text) < 12
    assert bill["prompt_tokens"] == openai_chat_count(MESSAGES)
    assert not bill["usage_reported"]
    assert stats(fake)["open_streams"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_headers_is_billed_its_prompt_only(fake, stream):
    # No headers, so no request id: a model name of its own finds the bill.
    model = f"gpt-4o-gone-before-headers-{'stream' if stream else 'plain'}"

    async def run() -> None:
        body = {
            "model": model,
            "messages": MESSAGES,
            "stream": stream,
            "fake": {"headers_delay_ms": 3000},
        }
        async with aiohttp.ClientSession(headers=AUTH) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.post(
                    f"{fake.base_url}/chat/completions",
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=0.3),
                )

    started = time.monotonic()
    asyncio.run(run())
    # Billed when the client left, not when the 3 s wait would have ended.
    [bill] = bills_where(fake, timeout=1.5, model=model)
    assert time.monotonic() - started < 2
    assert bill["outcome"] == "client_gone" and bill["status"] is None
    assert bill["stream"] is stream
    assert bill["prompt_tokens"] == openai_chat_count(MESSAGES)
    assert bill["completion_tokens"] == 0 and not bill["usage_reported"]


def test_requested_failures_and_refusals_bill_nothing(fake):
    status, headers, _ = post(
        fake,
        "/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "fake": {"fail_status": 503}},
    )
    assert status == 503
    [failed] = bills_where(fake, request_id=headers["x-request-id"])
    assert failed["status"] == 503 and failed["outcome"] == "error"
    assert (failed["prompt_tokens"], failed["completion_tokens"]) == (0, 0)
    assert not failed["usage_reported"]

    async def unauthorised() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(headers={"Authorization": "Bearer sk-wrong"}) as session,
            session.post(
                f"{fake.base_url}/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
            ) as r,
        ):
            return r.status, r.headers["x-request-id"]

    status, request_id = asyncio.run(unauthorised())
    [refused] = bills_where(fake, request_id=request_id)
    assert status == 401 and refused["outcome"] == "error" and refused["prompt_tokens"] == 0


def test_bills_total_every_request_once_and_reset_forgets_them(client, fake):
    async def reset() -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(f"{fake.origin}/_fake/reset")

    asyncio.run(reset())
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", stream=True))
    client.embeddings.create(model="text-embedding-3-small", input="one")
    client.models.list()
    seen = bills(fake)
    assert len(seen["bills"]) == stats(fake)["requests"] == 4
    assert len({b["request_id"] for b in seen["bills"]}) == 4
    assert seen["totals"] == {
        "requests": 4,
        "prompt_tokens": sum(b["prompt_tokens"] for b in seen["bills"]),
        "completion_tokens": 24,
        "audio_input_tokens": 0,
        "audio_output_tokens": 0,
        "tool_calls": {},
    }
    assert seen["totals"]["prompt_tokens"] == (
        openai_chat_count(MESSAGES)
        + n_tokens("Say", "cl100k_base")
        + n_tokens("one", "cl100k_base")
    )

    asyncio.run(reset())
    assert bills(fake) == {
        "bills": [],
        "totals": {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "audio_input_tokens": 0,
            "audio_output_tokens": 0,
            "tool_calls": {},
        },
    }
