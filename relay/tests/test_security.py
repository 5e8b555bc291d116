"""The relay's security issue, end to end: bodies bounded before they are read, no key in any
log or upstream URL, tenants kept apart upstream, OpenAI's 404 for a base_url without /v1,
type errors that name the field, and CORS for browser clients."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2 as httpx
import openai
import pytest

from tests.e2e import records_for
from tests.servers import running, start_proxy

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]


def raw_http(base: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send `head` (request line and headers, no blank line) and `body` as they are, and read
    the answer to the end of the connection: for requests no HTTP client would send, or
    bodies the client never finishes sending."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before an answer: {data!r}"
            data += chunk
        while chunk := sock.recv(65536):  # every answer here closes the connection
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if not int(size, 16):
                break
            body, rest = body + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        rest = body
    return int(lines[0].split()[1]), headers, rest


def assert_openai_error(status: int, body: bytes, expected: int) -> dict:
    assert status == expected, body
    assert body, f"an empty {status} answer"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- 1. bodies are bounded before they are read ---------------------------------------------------


@pytest.fixture
def small_limit_proxy(e2e, server_logs) -> Iterator:
    with running(
        start_proxy(e2e.upstream.url, server_logs, extra_env={"PROXY_MAX_BODY_BYTES": "1000"})
    ) as proxy:
        yield proxy


def test_a_huge_content_length_is_refused_413_before_the_body_is_sent(e2e, small_limit_proxy):
    secret = e2e.key()
    status, headers, body = raw_http(
        small_limit_proxy.url,
        f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {secret}\n"
        "Content-Type: application/json\nContent-Length: 10000000",
    )  # ... and not one byte of the 10 MB
    error = assert_openai_error(status, body, 413)
    assert error["type"] == "invalid_request_error" and "1000 bytes" in error["message"]
    assert headers["connection"] == "close"
    assert records_for(secret, 1)[0].status_code == 413
    assert e2e.upstream.stats()["requests"] == 0


def test_a_chunked_body_is_cut_at_the_limit(e2e, small_limit_proxy):
    secret = e2e.key()
    chunk = b"x" * 700
    chunked = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    status, _, body = raw_http(
        small_limit_proxy.url,
        f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {secret}\n"
        "Content-Type: application/json\nTransfer-Encoding: chunked",
        chunked * 2,  # 1,400 bytes and no end: the answer comes once 1,000 are passed
    )
    assert_openai_error(status, body, 413)
    assert records_for(secret, 1)[0].status_code == 413
    assert e2e.upstream.stats()["requests"] == 0


def test_a_bad_key_is_401_with_the_body_unread(e2e, small_limit_proxy):
    for auth in ("Authorization: Bearer sk-proxy-not-a-real-key-0000000000000000000", "X: y"):
        status, _, body = raw_http(
            small_limit_proxy.url,
            f"POST /v1/chat/completions HTTP/1.1\nHost: x\n{auth}\nContent-Length: 10000000",
        )
        assert assert_openai_error(status, body, 401)["code"] == "invalid_api_key"
    status, _, body = raw_http(
        small_limit_proxy.url,
        "POST /sk-proxy-not-a-real-key-0000000000000000000/v1/embeddings HTTP/1.1\nHost: x\n"
        "Content-Length: 10000000",
    )
    assert_openai_error(status, body, 401)


def test_a_body_within_the_limit_is_relayed_whole_also_chunked(e2e, small_limit_proxy):
    secret = e2e.key()
    payload = json.dumps({"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 5}).encode()
    # In chunks of 10 bytes: read into memory piece by piece and relayed as one body.
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + 10]), payload[i : i + 10])
        for i in range(0, len(payload), 10)
    )
    status, _, body = raw_http(
        small_limit_proxy.url,
        f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {secret}\n"
        "Content-Type: application/json\nTransfer-Encoding: chunked\nConnection: close",
        chunked + b"0\r\n\r\n",
    )
    assert status == 200, body
    assert json.loads(body)["object"] == "chat.completion"


# -- 2. secrets never leak ------------------------------------------------------------------------


def test_no_proxy_key_in_a_debug_log_whatever_fails(e2e, server_logs):
    secret = e2e.key()
    with running(
        start_proxy(e2e.upstream.url, server_logs, extra_env={"LOG_LEVEL": "DEBUG"})
    ) as proxy:
        client = openai.OpenAI(api_key="x", base_url=f"{proxy.url}/{secret}/v1", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=1000,
                messages=HELLO,
                extra_body={"fake": {"fail_status": 500}},
            )
        with pytest.raises(openai.NotFoundError):  # a base_url without /v1
            openai.OpenAI(
                api_key="x", base_url=f"{proxy.url}/{secret}", max_retries=0
            ).models.list()
        httpx.get(f"{proxy.url}/{secret}/v1/models/{'x' * 300}")
        records_for(secret, 2)
        log = proxy.output()
    assert secret not in log and secret[len("sk-proxy-") :][:12] not in log
    from tests.servers import UPSTREAM_KEY

    assert UPSTREAM_KEY not in log


def test_the_log_filter_masks_keys_in_djangos_request_log_lines():
    from relay.redaction import SecretsFilter

    record = logging.LogRecord(
        "django.request",
        logging.ERROR,
        __file__,
        1,
        "Internal Server Error: %s",
        ("/sk-proxy-AbC123_secret-part/v1/chat/completions",),
        None,
    )
    assert SecretsFilter().filter(record)
    assert record.getMessage() == "Internal Server Error: /sk-proxy-***/v1/chat/completions"
    root = logging.getLogger()
    assert any(
        isinstance(f, SecretsFilter) for handler in root.handlers for f in handler.filters
    ), "the console handler must carry the filter (settings.LOGGING)"


@pytest.mark.parametrize(
    "target",
    [
        "/v1/models/..",
        "/v1/models/.",
        "/v1/models/%2e%2e",
        "/v1/models/%2E%2e",
        "/v1/models/..%2f..",
        "/v1/models/a%2fb",
        "/v1/models/gpt%00x",
        "/v1/responses/..%2f..",
        "/v1/responses/resp_1%2f..%2f..",
    ],
)
def test_dot_segments_and_encoded_slashes_never_reach_upstream(e2e, target):
    secret = e2e.key()
    status, _, body = raw_http(
        e2e.proxy.url,
        f"GET {target} HTTP/1.1\nHost: x\nAuthorization: Bearer {secret}\nConnection: close",
    )
    assert status in (400, 404)
    assert_openai_error(status, body, status)
    assert e2e.upstream.stats()["requests"] == 0
    assert e2e.upstream.bills()["bills"] == []


# -- 3. tenants kept apart upstream ---------------------------------------------------------------


class _Capture(http.server.BaseHTTPRequestHandler):
    """An upstream that answers every chat completion and keeps what it was sent."""

    seen: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        answer = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[str, list]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    _Capture.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Capture.seen
    server.shutdown()


def _chat(proxy, secret: str, body: bytes, **headers: str) -> int:
    return httpx.post(
        f"{proxy.v1}/chat/completions",
        content=body,
        headers={
            "Authorization": f"Bearer {secret}",
            "Content-Type": "application/json",
            **headers,
        },
    ).status_code


def test_idempotency_keys_and_safety_identifiers_are_per_user(e2e, server_logs, capture):
    url, seen = capture
    alice, alice_too, bob = e2e.key("alice"), e2e.key("alice"), e2e.key("bob")
    body = json.dumps({"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 5}).encode()
    with running(start_proxy(url, server_logs)) as proxy:
        for secret in (alice, alice_too, bob):
            assert _chat(proxy, secret, body, **{"Idempotency-Key": "same-key"}) == 200
        own = json.dumps({**json.loads(body), "safety_identifier": "end-user-7"}).encode()
        assert _chat(proxy, alice, own) == 200
    keys = [headers["idempotency-key"] for headers, _ in seen[:3]]
    assert "same-key" not in keys
    assert keys[0] == keys[1] != keys[2]  # one user's keys share it; another user never does
    ids = [json.loads(sent)["safety_identifier"] for _, sent in seen]
    assert ids[0] == ids[1] != ids[2] and all(len(i) <= 64 for i in ids)
    # The client's own identifier is kept (hashed) after its user's part.
    assert ids[3] != ids[0] and ids[3][:32] == ids[0][:32] and "end-user-7" not in ids[3]


def test_with_safety_identifiers_off_the_body_goes_upstream_byte_for_byte(
    e2e, server_logs, capture
):
    url, seen = capture
    secret = e2e.key()
    body = b'{"model":   "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}'
    env = {"PROXY_SAFETY_IDENTIFIER": "false"}
    with running(start_proxy(url, server_logs, extra_env=env)) as proxy:
        assert _chat(proxy, secret, body) == 200
    assert seen[0][1] == body


def test_responses_carry_the_users_safety_identifier(e2e):
    alice, bob = e2e.key("alice"), e2e.key("bob")
    made = [
        e2e.client(secret).responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=20)
        for secret in (alice, alice, bob)
    ]
    ids = [response.safety_identifier for response in made]
    assert ids[0] and ids[0] == ids[1] != ids[2]


# -- 4. a base_url without /v1 --------------------------------------------------------------------


def test_a_base_url_without_v1_gets_openais_404_with_the_fix(e2e):
    secret = e2e.key()
    client = openai.OpenAI(api_key=secret, base_url=e2e.proxy.url, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    message = missing.value.body["message"]
    assert message.startswith("Invalid URL (POST /chat/completions)")
    assert f"set base_url to {e2e.proxy.url}/v1" in message
    keyed = openai.OpenAI(api_key="x", base_url=f"{e2e.proxy.url}/{secret}", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        keyed.embeddings.create(model="text-embedding-3-small", input="x")
    assert secret not in missing.value.response.text
    assert "/<your proxy key>/v1" in missing.value.body["message"]
    assert e2e.upstream.stats()["requests"] == 0


def test_any_path_nothing_serves_is_openais_404_for_api_clients(e2e):
    answer = httpx.post(f"{e2e.proxy.url}/no/such/thing", headers={"Accept": "application/json"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_url"
    page = httpx.get(f"{e2e.proxy.url}/no/such/thing", headers={"Accept": "text/html"})
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]


# -- 5. wrong types name the field ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        (
            "chat/completions",
            {"model": "gpt-4o-mini", "messages": "hi"},
            "messages",
            "Invalid type for 'messages': expected an array of objects, but got a string instead.",
        ),
        (
            "chat/completions",
            {"model": 5, "messages": HELLO},
            "model",
            "Invalid type for 'model': expected a string, but got an integer instead.",
        ),
        (
            "chat/completions",
            {"model": "gpt-4o-mini", "messages": ["hi"]},
            "messages[0]",
            "Invalid type for 'messages[0]': expected an object, but got a string instead.",
        ),
        (
            "chat/completions",
            {"model": "gpt-4o-mini"},
            "messages",
            "Missing required parameter: 'messages'.",
        ),
        (
            "embeddings",
            {"model": "text-embedding-3-small", "input": {"a": 1}},
            "input",
            "Invalid type for 'input': expected a string or an array, but got an object instead.",
        ),
    ],
)
def test_wrong_types_are_named_as_openai_names_them(e2e, path, body, param, message):
    secret = e2e.key()
    answer = httpx.post(
        f"{e2e.proxy.v1}/{path}", json=body, headers={"Authorization": f"Bearer {secret}"}
    )
    error = assert_openai_error(answer.status_code, answer.content, 400)
    assert (error["param"], error["message"]) == (param, message)
    assert e2e.upstream.stats()["requests"] == 0


# -- 6. browser clients ---------------------------------------------------------------------------

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
}


def test_cors_is_off_by_default_and_a_preflight_needs_no_key(e2e):
    answer = httpx.options(
        f"{e2e.proxy.v1}/chat/completions", headers={"Origin": "https://app.example", **PREFLIGHT}
    )
    assert answer.status_code == 405 and answer.json()["error"]["code"] == "method_not_allowed"
    assert not [h for h in answer.headers if h.lower().startswith("access-control-")]
    secret = e2e.key()
    done = httpx.post(
        f"{e2e.proxy.v1}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 5},
        headers={"Authorization": f"Bearer {secret}", "Origin": "https://app.example"},
    )
    assert done.status_code == 200 and "access-control-allow-origin" not in done.headers


def test_an_allowed_origin_is_answered_with_cors_headers(e2e, server_logs):
    secret = e2e.key()
    env = {"CORS_ALLOWED_ORIGINS": "https://app.example"}
    with running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as proxy:
        ok = httpx.options(
            f"{proxy.v1}/chat/completions", headers={"Origin": "https://app.example", **PREFLIGHT}
        )
        other = httpx.options(
            f"{proxy.v1}/chat/completions", headers={"Origin": "https://evil.example", **PREFLIGHT}
        )
        done = httpx.post(
            f"{proxy.v1}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 5},
            headers={"Authorization": f"Bearer {secret}", "Origin": "https://app.example"},
        )
        refused = httpx.post(
            f"{proxy.v1}/chat/completions", json={}, headers={"Origin": "https://app.example"}
        )
        api = httpx.options(
            f"{proxy.url}/api/usage/", headers={"Origin": "https://app.example", **PREFLIGHT}
        )
    assert ok.status_code in (200, 204)
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert done.status_code == 200
    assert done.headers["access-control-allow-origin"] == "https://app.example"
    exposed = done.headers["access-control-expose-headers"]
    assert "x-request-id" in exposed and "x-proxy-budget-remaining-usd" in exposed
    # An error (here a missing key) is readable by the page too.
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    assert api.headers.get("access-control-allow-origin") == "https://app.example"
