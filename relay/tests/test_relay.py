"""The core relay, end to end: the official SDK → the proxy process → the fake OpenAI."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from decimal import Decimal

import openai
import pytest

from tests.e2e import records_for
from tests.servers import ROOT, UPSTREAM_KEY, free_port, running, start_proxy

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]


def price_of(model: str, prompt: int, completion: int, cached: int = 0) -> Decimal:
    from usage.models import ModelPrice

    row = ModelPrice.objects.filter(model=model).latest("effective_from")
    cached_rate = (
        row.cached_input_per_1m if row.cached_input_per_1m is not None else row.input_per_1m
    )
    return (
        (prompt - cached) * row.input_per_1m + cached * cached_rate + completion * row.output_per_1m
    ) / Decimal(1_000_000)


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_chat_completion_is_relayed_and_priced_exactly(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)

    assert reply.choices[0].message.content
    assert reply.model == "gpt-4o-mini-2024-07-18"
    [record] = records_for(secret, 1)
    assert (record.endpoint, record.model, record.response_model) == (
        "chat/completions",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
    )
    assert record.status_code == 200 and not record.stream and not record.estimated
    assert record.prompt_tokens == reply.usage.prompt_tokens
    assert record.completion_tokens == reply.usage.completion_tokens
    # The dated snapshot has its own row in the price file, at gpt-4o-mini's price.
    assert record.cost_usd == price_of(
        "gpt-4o-mini-2024-07-18", reply.usage.prompt_tokens, reply.usage.completion_tokens
    )
    assert record.upstream_request_id == reply._request_id
    assert record.latency_ms is not None and record.ttfb_ms is not None


def test_upstream_sees_the_real_key_and_never_the_users(e2e):
    secret = e2e.key()
    client = e2e.client(
        secret, default_headers={"OpenAI-Organization": "org-evil", "OpenAI-Project": "proj-evil"}
    )

    client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)

    seen = e2e.upstream.stats()["last_request"]["headers"]
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert secret not in json.dumps(seen)
    assert "openai-organization" not in seen and "openai-project" not in seen


def test_cached_tokens_are_priced_at_the_cached_rate(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    reply = client.chat.completions.create(
        model="gpt-4o",
        max_tokens=1000,
        messages=HELLO,
        extra_body={"fake": {"cached_tokens": 8, "reasoning_tokens": 3}},
    )

    [record] = records_for(secret, 1)
    assert record.cached_tokens == 8 and record.reasoning_tokens == 3
    # Reasoning tokens are inside completion_tokens: billed once, at the output price.
    assert record.cost_usd == price_of(
        "gpt-4o-2024-08-06", reply.usage.prompt_tokens, reply.usage.completion_tokens, cached=8
    )


def test_streamed_chat_arrives_in_chunks_and_hides_the_usage_chunk(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=HELLO,
            stream=True,
            extra_body={"fake": {"chunks": 5}},
        )
    )

    assert len(chunks) >= 5
    assert all(chunk.choices for chunk in chunks), "a client that did not ask got the usage chunk"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    [record] = records_for(secret, 1)
    assert record.stream and not record.estimated and record.status_code == 200
    assert record.completion_tokens > 0 and record.cost_usd > 0
    assert text


def test_streamed_chat_keeps_the_usage_chunk_for_clients_that_ask(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    [record] = records_for(secret, 1)
    assert record.prompt_tokens == chunks[-1].usage.prompt_tokens
    assert record.completion_tokens == chunks[-1].usage.completion_tokens


def test_embeddings_are_relayed_untouched_and_priced_as_input(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    result = client.embeddings.create(model="text-embedding-3-small", input=["one", "two words"])

    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    body = e2e.upstream.stats()["last_request"]["body"]
    assert body["encoding_format"] == "base64"  # the SDK's own choice, passed on as is
    [record] = records_for(secret, 1)
    assert record.completion_tokens == 0
    assert record.cost_usd == price_of("text-embedding-3-small", result.usage.prompt_tokens, 0)


def test_models_lists_only_what_the_key_may_use(e2e):
    secret = e2e.key(allowed_models="gpt-4o-mini,text-embedding-3-s*")
    client = e2e.client(secret)

    names = {m.id for m in client.models.list()}

    assert names == {"gpt-4o-mini", "text-embedding-3-small"}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_the_original_url_form_with_the_key_in_the_path(e2e):
    secret = e2e.key()
    client = e2e.client(secret, url_form="path")

    reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)
    streamed = list(
        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=1000, messages=HELLO, stream=True
        )
    )

    assert reply.choices[0].message.content and streamed
    assert len(records_for(secret, 2)) == 2


def test_a_spent_budget_is_refused_with_insufficient_quota(e2e):
    secret = e2e.key(budget_usd="0.00001", period="total")
    client = e2e.client(secret, max_retries=2)

    with pytest.raises(openai.RateLimitError) as refused:
        # Worst case of 4096 default output tokens at gpt-4o's $10/1M is over $0.00001.
        client.chat.completions.create(model="gpt-4o", max_tokens=1000, messages=HELLO)

    assert refused.value.status_code == 429
    assert refused.value.code == "insufficient_quota"
    assert refused.value.response.headers["x-should-retry"] == "false"
    [record] = records_for(secret, 1)  # the SDK did not retry: one request, one record
    assert record.status_code == 429 and record.error_code == "insufficient_quota"
    assert e2e.upstream.stats()["requests"] == 0


def test_budget_is_spent_request_by_request_until_refused(e2e):
    secret = e2e.key(budget_usd="0.0001", period="total")
    client = e2e.client(secret)
    done = 0
    with pytest.raises(openai.RateLimitError):
        for _ in range(100):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=20)
            done += 1
    records = records_for(secret, done + 1)
    spent = sum(r.cost_usd for r in records)
    assert done >= 5 and spent <= Decimal("0.0001")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}', 400, "stream"),
        (b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": -1}', 400, "max_tokens"),
    ],
)
def test_bad_bodies_get_openai_errors_not_500(e2e, body, status, param):
    secret = e2e.key()

    code, _, payload = raw_post(
        f"{e2e.proxy.v1}/chat/completions",
        body,
        {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )

    assert code == status
    assert (
        payload["error"]["type"] == "invalid_request_error" and payload["error"]["param"] == param
    )
    [record] = records_for(secret, 1)
    assert record.status_code == status


def test_wrong_missing_and_revoked_keys_get_401(e2e):
    from keys.models import ApiKey, key_hash
    from keys.services import key_revoke

    for api_key in ("sk-proxy-not-a-real-key-000000000000000000000", "not-even-a-proxy-key"):
        with pytest.raises(openai.AuthenticationError) as refused:
            e2e.client(api_key).chat.completions.create(
                model="gpt-4o-mini", max_tokens=1000, messages=HELLO
            )
        assert refused.value.code == "invalid_api_key"
    code, _, payload = raw_post(f"{e2e.proxy.v1}/chat/completions", b"{}", {})
    assert code == 401 and payload["error"]["code"] == "invalid_api_key"

    secret = e2e.key()
    client = e2e.client(secret)
    client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=1000, messages=HELLO
    )  # now cached by the server
    key_revoke(api_key=ApiKey.objects.get(key_hash=key_hash(secret)))
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)


def test_unknown_paths_are_404_in_openai_shape(e2e):
    secret = e2e.key()
    code, _, payload = raw_post(
        f"{e2e.proxy.v1}/no_such_route/jobs", b"{}", {"Authorization": f"Bearer {secret}"}
    )
    assert code == 404 and payload["error"]["code"] == "unknown_url"
    assert records_for(secret, 1)[0].status_code == 404


@pytest.mark.parametrize(
    "path", ["fine_tuning/jobs", "vector_stores", "conversations", "uploads", "assistants"]
)
def test_stored_object_routes_not_yet_kept_to_their_owner_are_refused_by_name(e2e, path):
    secret = e2e.key()
    code, _, payload = raw_post(
        f"{e2e.proxy.v1}/{path}", b"{}", {"Authorization": f"Bearer {secret}"}
    )
    assert code == 403 and payload["error"]["code"] == "route_not_supported"
    assert f"/v1/{path.split('/')[0]}" in payload["error"]["message"]
    assert records_for(secret, 1)[0].status_code == 403
    assert e2e.upstream.bills()["bills"] == []  # never sent with the operator's key


def test_upstream_errors_pass_through_with_their_status_and_request_id(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=HELLO,
            extra_body={
                "fake": {"fail_status": 503, "fail_message": "overloaded", "retry_after": 3}
            },
        )

    assert failed.value.status_code == 503
    assert failed.value.response.headers["retry-after"] == "3"
    assert failed.value.response.headers["x-request-id"]
    [record] = records_for(secret, 1)
    assert record.status_code == 503 and record.cost_usd == 0


def test_unreachable_and_slow_upstreams_get_502_and_504(e2e, server_logs):
    secret = e2e.key()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with running(start_proxy(dead, server_logs)) as proxy:
        code, _, payload = raw_post(
            f"{proxy.v1}/chat/completions",
            json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode(),
            {"Authorization": f"Bearer {secret}"},
        )
        assert code == 502 and payload["error"]["type"] == "upstream_error"
    with running(
        start_proxy(e2e.upstream.url, server_logs, extra_env={"PROXY_UPSTREAM_READ_TIMEOUT": "0.3"})
    ) as proxy:
        code, _, payload = raw_post(
            f"{proxy.v1}/chat/completions",
            json.dumps(
                {"model": "gpt-4o-mini", "messages": HELLO, "fake": {"latency_ms": 2000}}
            ).encode(),
            {"Authorization": f"Bearer {secret}"},
        )
        assert code == 504 and payload["error"]["type"] == "upstream_error"
        assert UPSTREAM_KEY not in proxy.output()
    assert [r.status_code for r in records_for(secret, 2)] == [502, 504]


def test_legacy_028_sdk_with_api_base(e2e):
    legacy = ROOT / ".venv-legacy" / "bin" / "python"
    if not legacy.exists():
        pytest.skip("the legacy SDK venv is missing: `make test` installs it")
    secret = e2e.key()
    script = (
        "import openai, sys\n"
        f"openai.api_key = {secret!r}\n"
        f"openai.api_base = {e2e.proxy.v1!r}\n"
        "r = openai.ChatCompletion.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(r['choices'][0]['message']['content'])\n"
        "chunks = list(openai.ChatCompletion.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}], stream=True))\n"
        "assert all(c['choices'] for c in chunks), 'usage chunk leaked'\n"
        "e = openai.Embedding.create(model='text-embedding-3-small', input='hi')\n"
        "print(len(e['data'][0]['embedding']))\n"
    )
    done = subprocess.run(
        [str(legacy), "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert len(records_for(secret, 3)) == 3


def test_proxy_me_reports_limits_and_spend(e2e):
    secret = e2e.key(budget_usd="2", period="day", rpm=100)
    e2e.client(secret).chat.completions.create(model="gpt-4o-mini", max_tokens=1000, messages=HELLO)
    [record] = records_for(secret, 1)

    request = urllib.request.Request(
        f"{e2e.proxy.v1}/proxy/me", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        me = json.loads(resp.read())

    assert me["limits"]["key"]["budget_usd"] == "2.00" and me["limits"]["key"]["rpm"] == 100
    usage = me["usage"]["key"]
    assert usage["period"] == "day" and usage["requests"] == 1
    assert Decimal(usage["spent_usd"]) == record.cost_usd.quantize(Decimal("0.000001"))
    assert Decimal(usage["remaining_usd"]) == (Decimal(2) - record.cost_usd).quantize(
        Decimal("0.000001")
    )


def test_upstream_key_never_in_error_bodies(e2e):
    secret = e2e.key()
    client = e2e.client(secret)
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=HELLO,
            extra_body={
                "fake": {"fail_status": 400, "fail_message": f"bad key {UPSTREAM_KEY} used"}
            },
        )
    assert UPSTREAM_KEY not in failed.value.response.text


def test_base64_embeddings_decode_to_the_upstream_vector(e2e):
    secret = e2e.key()
    raw = e2e.client(secret).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="x"
    )
    payload = json.loads(raw.http_response.text)
    assert isinstance(payload["data"][0]["embedding"], str)
    assert len(base64.b64decode(payload["data"][0]["embedding"])) % 4 == 0


def test_a_body_over_the_size_limit_is_413(e2e, server_logs):
    secret = e2e.key()
    big = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
    )
    with running(
        start_proxy(e2e.upstream.url, server_logs, extra_env={"PROXY_MAX_BODY_BYTES": "1000"})
    ) as proxy:
        code, _, payload = raw_post(
            f"{proxy.v1}/chat/completions", big.encode(), {"Authorization": f"Bearer {secret}"}
        )
    assert code == 413 and payload["error"]["type"] == "invalid_request_error"
    assert records_for(secret, 1)[0].status_code == 413
    assert e2e.upstream.stats()["requests"] == 0
