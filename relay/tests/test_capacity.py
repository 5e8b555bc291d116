"""Capacity: a full upstream connection pool queues a request (for a bounded, documented
time) instead of failing it as a connect timeout, and when the queue's bound passes the client
hears that the proxy is busy (503, retried by the SDKs), never a 504 for a request that was
never sent. Each request still leaves its one record.
"""

from __future__ import annotations

import concurrent.futures
import time

import openai
import pytest

from tests.e2e import records_for
from tests.servers import running, start_proxy

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]


def _slow_call(client: openai.OpenAI, latency_ms: int) -> object:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        max_tokens=5,
        extra_body={"fake": {"latency_ms": latency_ms}},
    )


@pytest.mark.django_db(transaction=True)
def test_a_full_upstream_pool_queues_requests_rather_than_timing_them_out(e2e, server_logs):
    secret = e2e.key()
    # One upstream connection and a connect timeout shorter than the wait for it: before, the
    # wait for a pooled connection counted as connecting, and the 2nd and 3rd calls got 504.
    env = {"PROXY_UPSTREAM_MAX_CONNECTIONS": "1", "PROXY_UPSTREAM_CONNECT_TIMEOUT": "0.3"}
    with running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as proxy:
        client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _slow_call(client, 400), range(3)))
        assert all(answer.choices[0].message.content for answer in answers)
        records = records_for(secret, 3)
    assert [r.status_code for r in records] == [200, 200, 200]
    assert e2e.upstream.stats()["requests"] == 3


@pytest.mark.django_db(transaction=True)
def test_a_request_queued_past_the_bound_is_told_the_proxy_is_busy(e2e, server_logs):
    secret = e2e.key()
    env = {"PROXY_UPSTREAM_MAX_CONNECTIONS": "1", "PROXY_UPSTREAM_QUEUE_SECONDS": "0.3"}
    with running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as proxy:
        client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            holding = pool.submit(_slow_call, client, 2000)
            time.sleep(0.3)  # the first call has the one connection
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as refused:
                _slow_call(client, 0)
            waited = time.monotonic() - started
            assert holding.result().choices
        records = records_for(secret, 2)
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"
    body = refused.value.body
    assert body["code"] == "upstream_busy", body
    assert "PROXY_UPSTREAM_MAX_CONNECTIONS" in body["message"]
    assert 0.25 <= waited < 1.5
    assert sorted(r.status_code for r in records) == [200, 503]
    busy = next(r for r in records if r.status_code == 503)
    assert busy.error_code == "upstream_busy"
    assert busy.cost_usd == 0
    # The refused request never reached OpenAI.
    assert e2e.upstream.stats()["requests"] == 2 - 1
