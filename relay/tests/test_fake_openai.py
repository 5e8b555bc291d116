"""The fake OpenAI upstream answers what the official SDK parses, and its knobs do what the
relay's tests rely on (cut streams, failures, stats)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from openai.types import CreateEmbeddingResponse, ModerationCreateResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from relay import tokens
from relay.fake_openai import DEFAULT_KEY, FakeOpenAIThread, Knobs, make_reply

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIThread() as server:
        yield server


@pytest.fixture
def client(fake):
    fake.state.responses.clear()
    return openai.OpenAI(api_key=DEFAULT_KEY, base_url=fake.base_url, max_retries=0)


def stats(fake) -> dict:
    async def fetch() -> dict:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{fake.origin}/_fake/stats") as r,
        ):
            return await r.json()

    return asyncio.run(fetch())


def test_reply_text_has_exactly_the_asked_tokens_in_both_encodings():
    for model in ("gpt-4o-mini", "gpt-3.5-turbo-instruct"):
        for n in (0, 1, 7, 12, 13, 200, 1001):
            reply = make_reply(model, Knobs(completion_tokens=n), None)
            assert tokens.count_text(reply.text, model) == reply.completion_tokens == n
            assert "".join(reply.pieces) == reply.text


def test_chat_plain_parses_strictly_and_counts_like_the_proxy(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5
    )
    completion = ChatCompletion.model_validate(raw.parse().model_dump())
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.prompt_tokens == tokens.count_chat_prompt(MESSAGES, "gpt-4o-mini")
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
    assert text.usage.prompt_tokens == tokens.count_input("Say this", "gpt-3.5-turbo-instruct")
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
    assert created.usage.input_tokens == tokens.count_input("Hello", "gpt-4.1-mini")
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
        client.get("/files/nope", cast_to=object)
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
