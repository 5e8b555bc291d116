"""GET /metrics and the request log, end to end: the SDK → the proxy process → the fake OpenAI.

Counters are compared before and after a test's requests (the session's proxy counted the
tests before it), against the records those requests left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import records_for, wait_for
from tests.servers import (
    ROOT,
    UPSTREAM_KEY,
    ProxyServer,
    _started,
    _wait_http,
    database_url,
    free_port,
    running,
    start_proxy,
)

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]
METRICS_TOKEN = "metrics-token-for-the-tests-0123456789"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"


def scrape(proxy: ProxyServer, authorization: str | None = None) -> str:
    request = urllib.request.Request(f"{proxy.url}/metrics")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def status_of(proxy: ProxyServer, authorization: str | None = None) -> int:
    try:
        scrape(proxy, authorization)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def names(text: str) -> set[str]:
    """Every series name the text declares, with or without samples yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    declared = set()
    for family in text_string_to_metric_families(text):
        declared.add(family.name)
        declared.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return declared


def request_lines(proxy: ProxyServer) -> list[dict]:
    lines = [line for line in proxy.output().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    return [entry for entry in entries if entry["logger"] == "relay.requests"]


# -- counters ----------------------------------------------------------------------------------


def test_counters_move_by_exactly_what_the_requests_did(e2e):
    secret = e2e.key("metrics-counter")
    client = e2e.client(secret)
    before = scrape(e2e.proxy)
    for _ in range(2):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            extra_body={"fake": {"cached_tokens": 8, "reasoning_tokens": 3}},
        )
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    records = records_for(secret, 4)
    after = scrape(e2e.proxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat = {"endpoint": "chat/completions", "model": "gpt-4o-mini", "status": "200"}
    assert delta("proxy_requests_total", **chat) == 3
    assert delta("proxy_requests_total", endpoint="embeddings", status="200") == 1
    assert delta("proxy_requests_total") == 4
    assert delta("proxy_cost_usd_total") == pytest.approx(
        float(sum(r.cost_usd for r in records)), rel=1e-9
    )
    assert delta("proxy_cost_usd_total") > 0
    for kind, column in (
        ("prompt", "prompt_tokens"),
        ("cached", "cached_tokens"),
        ("completion", "completion_tokens"),
        ("reasoning", "reasoning_tokens"),
    ):
        expected = sum(getattr(r, column) for r in records)
        assert expected > 0, column
        assert delta("proxy_tokens_total", kind=kind) == expected, kind
    assert delta("proxy_request_duration_seconds_count", endpoint="chat/completions") == 3
    assert delta("proxy_overhead_seconds_count", endpoint="embeddings") == 1
    assert delta("proxy_refusals_total") == 0
    assert delta("proxy_upstream_errors_total") == 0
    assert "relay.requests" not in e2e.proxy.output()  # LOG_LEVEL=WARNING: no request lines


def test_time_waiting_for_openai_is_not_counted_as_overhead(e2e):
    client = e2e.client(e2e.key("metrics-overhead"))
    before = scrape(e2e.proxy)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_body={"fake": {"latency_ms": 400}}
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        extra_body={"fake": {"chunks": 4, "chunk_delay_ms": 100}},
    )
    list(stream)
    after = scrape(e2e.proxy)
    label = {"endpoint": "chat/completions"}
    took = value(after, "proxy_request_duration_seconds_sum", **label) - value(
        before, "proxy_request_duration_seconds_sum", **label
    )
    overhead = value(after, "proxy_overhead_seconds_sum", **label) - value(
        before, "proxy_overhead_seconds_sum", **label
    )
    assert took >= 0.7  # 400 ms before the answer, 100 ms between the stream's frames
    assert 0 < overhead < 0.2


def test_refusals_and_upstream_errors_are_counted_by_code_and_kind(e2e):
    broke = e2e.client(e2e.key("metrics-broke", budget_usd=0))
    client = e2e.client(e2e.key("metrics-errors"))
    before = scrape(e2e.proxy)
    with pytest.raises(openai.RateLimitError):
        broke.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=10)
    with pytest.raises(openai.PermissionDeniedError):
        client.beta.threads.create()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_body={"fake": {"fail_status": 500}}
        )
    # OpenAI's own 400 is relayed, not a refusal of the proxy's.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_body={"fake": {"fail_status": 400}}
        )
    after = scrape(e2e.proxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("proxy_refusals_total", code="insufficient_quota") == 1
    assert delta("proxy_refusals_total", code="route_not_supported") == 1
    assert delta("proxy_refusals_total") == 2
    assert delta("proxy_upstream_errors_total", kind="5xx") == 1
    assert delta("proxy_upstream_errors_total") == 1
    assert delta("proxy_requests_total", endpoint="other", status="403") == 1
    assert delta("proxy_requests_total", endpoint="chat/completions", status="500") == 1


def test_an_unreachable_upstream_is_an_upstream_error(e2e, server_logs):
    with running(start_proxy(f"http://127.0.0.1:{free_port()}/v1", server_logs)) as proxy:
        client = openai.OpenAI(api_key=e2e.key("metrics-down"), base_url=proxy.v1, max_retries=0)
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        text = scrape(proxy)
    assert value(text, "proxy_upstream_errors_total", kind="unreachable") == 1
    assert value(text, "proxy_refusals_total") == 0


def test_ids_and_unknown_paths_never_become_labels(e2e):
    client = e2e.client(e2e.key("metrics-labels"))
    uploaded = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="batch")
    client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.get(f"/no-such-route/{uploaded.id}", cast_to=object)
    text = scrape(e2e.proxy)
    assert uploaded.id not in text
    assert "no-such-route" not in text
    assert value(text, "proxy_requests_total", endpoint="files/{id}") >= 1
    assert value(text, "proxy_requests_total", endpoint="other", status="404") >= 1
    assert value(text, "proxy_refusals_total", code="unknown_url") >= 1


def test_open_streams_and_the_record_queue_are_gauges(e2e):
    client = e2e.client(e2e.key("metrics-gauges"))
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        extra_body={"fake": {"stall_after": 1}},  # held until the client leaves
    )
    next(iter(stream))
    wait_for(lambda: value(scrape(e2e.proxy), "proxy_open_streams") == 1, what="one open stream")
    stream.close()
    wait_for(lambda: value(scrape(e2e.proxy), "proxy_open_streams") == 0, what="no stream")
    text = scrape(e2e.proxy)
    assert "proxy_usage_queue_depth" in names(text)
    assert value(text, "proxy_usage_queue_depth") >= 0


# -- the token, secrets, the log ----------------------------------------------------------------


def test_metrics_token_is_required_when_set_and_no_secret_is_shown(e2e, server_logs):
    env = {"METRICS_TOKEN": METRICS_TOKEN, "LOG_LEVEL": "INFO"}
    with running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as proxy:
        secret = e2e.key("metrics-secret-owner")
        client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        # The key-in-URL form too, and a model name a client made to break a log line.
        path_client = openai.OpenAI(api_key="x", base_url=f"{proxy.url}/{secret}/v1")
        path_client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with contextlib.suppress(openai.APIStatusError):
            client.chat.completions.create(
                model=f"gpt 4o\nINFO relay.requests request forged=1 {secret}", messages=HELLO
            )
        records = records_for(secret, 3)
        assert status_of(proxy) == 401
        assert status_of(proxy, "Bearer wrong-token") == 401
        assert status_of(proxy, f"Basic {METRICS_TOKEN}") == 401
        assert status_of(proxy, f"Bearer {METRICS_TOKEN}x") == 401
        text = scrape(proxy, f"Bearer {METRICS_TOKEN}")
        log = proxy.output()
    assert value(text, "proxy_requests_total") == 3
    prefix = records[0].key_prefix
    assert "sk-proxy-***" in log  # the key in the model name, masked
    for shown in (text, log):
        assert secret not in shown
        assert UPSTREAM_KEY not in shown
    assert prefix not in text
    assert "metrics-secret-owner" not in text
    lines = [line for line in log.splitlines() if " relay.requests request " in line]
    assert len(lines) == 3
    assert "forged=1" not in "".join(line.partition('model="')[0] for line in lines)
    for record, line in zip(records, lines, strict=True):
        assert f"request_id={record.uid}" in line
        assert f"key_prefix={prefix}" in line
        assert f"status={record.status_code}" in line


def test_log_format_json_is_one_parseable_line_per_request(e2e, server_logs):
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    with running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as proxy:
        secret = e2e.key("metrics-json")
        client = openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)
        client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_body={"fake": {"reasoning_tokens": 2}}
        )
        stream = client.responses.create(model="gpt-4o-mini", input="hello", stream=True)
        list(stream)
        with pytest.raises(openai.PermissionDeniedError):
            client.beta.threads.create()
        records = records_for(secret, 3)
        lines = wait_for(lambda: len(request_lines(proxy)) == 3 and request_lines(proxy))
        log = proxy.output()
    assert secret not in log
    for line in log.splitlines():
        assert isinstance(json.loads(line), dict), line
    by_id = {line["request_id"]: line for line in lines}
    assert set(by_id) == {str(r.uid) for r in records}
    for record in records:
        line = by_id[str(record.uid)]
        assert line["level"] == "INFO"
        assert line["user_id"] == record.user_id
        assert line["key_prefix"] == record.key_prefix
        assert line["model"] == (record.response_model or record.model)
        assert line["endpoint"] == record.endpoint
        assert line["status"] == record.status_code
        assert line["prompt_tokens"] == record.prompt_tokens
        assert line["completion_tokens"] == record.completion_tokens
        assert line["reasoning_tokens"] == record.reasoning_tokens
        assert Decimal(line["cost_usd"]) == record.cost_usd
        assert line["latency_ms"] == record.latency_ms
        assert line["upstream_request_id"] == record.upstream_request_id
        assert "request_body" not in line and "response_body" not in line
    assert by_id[str(records[0].uid)]["upstream_request_id"]
    assert by_id[str(records[2].uid)]["error_code"] == "route_not_supported"


# -- several worker processes -------------------------------------------------------------------


def _serve(upstream_url: str, log_dir: Path, workers: int) -> ProxyServer:
    """The proxy as `manage.py serve --workers N` starts it (its own metrics directory)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "SECRET_KEY": "test-secret-never-used-outside-the-tests-0123456789abcdef",
        "LOG_LEVEL": "WARNING",
        "ALERT_DELIVERY_SECONDS": "0",
        "PROXY_BATCH_POLL_SECONDS": "0.5",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = log_dir / f"proxy-serve-{port}.log"
    command = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    _started.append(proc)
    server = ProxyServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    _wait_http(f"{server.url}/healthz", proc)
    return server


def _workers(proxy: ProxyServer) -> list[int]:
    """uvicorn's worker processes (not multiprocessing's resource tracker beside them)."""
    children = Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children").read_text()
    workers = []
    for pid in children.split():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            workers.append(int(pid))
    return workers


def test_counts_over_two_workers_are_exact_whichever_worker_answers(e2e, server_logs):
    with running(_serve(e2e.upstream.url, server_logs, workers=2)) as proxy:
        wait_for(lambda: len(_workers(proxy)) == 2, what="two workers", timeout=30)
        secret = e2e.key("metrics-workers")
        sent = 0
        # A new connection each time, so the kernel hands requests to either worker.
        for _ in range(200):
            with openai.OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0) as client:
                client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            sent += 1
            if (
                sent >= 20
                and sent % 10 == 0
                and len({r.process for r in records_for(secret, sent)}) > 1
            ):
                break
        records = records_for(secret, sent)
        assert len({r.process for r in records}) == 2, "every request went to one worker"
        # Each worker counted only its own part: a scrape saying `sent` added up both.
        for _ in range(10):
            assert value(scrape(proxy), "proxy_requests_total") == sent
        victim = _workers(proxy)[0]
        multiproc_dir = next(Path("/tmp").glob(f"proxy-metrics-{proxy.proc.pid}-*"))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in _workers(proxy), what="the worker gone")
        for _ in range(10):
            text = scrape(proxy)
            assert value(text, "proxy_requests_total") == sent  # its counts are kept
            assert value(text, "proxy_open_streams") == 0
        assert list(multiproc_dir.glob(f"counter_{victim}.db"))
        assert not list(multiproc_dir.glob(f"gauge_livesum_{victim}.db"))
    time.sleep(0.2)


# -- the dashboard ------------------------------------------------------------------------------


def test_the_grafana_dashboard_charts_only_metrics_the_proxy_exports(e2e):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"]
    variables = dashboard["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(expressions) >= 10
    for panel in dashboard["panels"]:
        if panel.get("type") != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    client = e2e.client(e2e.key("metrics-dashboard"))
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    exported = names(scrape(e2e.proxy))
    queried = {name for expr in expressions for name in re.findall(r"\b(proxy_[a-z_]+)\b", expr)}
    assert queried, "the dashboard queries no proxy metric"
    assert queried <= exported, queried - exported
    assert {
        "proxy_requests_total",
        "proxy_cost_usd_total",
        "proxy_tokens_total",
        "proxy_request_duration_seconds_bucket",
        "proxy_overhead_seconds_bucket",
        "proxy_refusals_total",
        "proxy_upstream_errors_total",
        "proxy_open_streams",
        "proxy_usage_queue_depth",
    } <= queried


# -- the metrics directory of a server start ----------------------------------------------------


def test_each_server_start_gets_a_fresh_metrics_directory(tmp_path, monkeypatch):
    from relay.management.commands.serve import metrics_directory

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"proxy-metrics-{dead.pid}-old"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"x")
    alive = tmp_path / f"proxy-metrics-{os.getpid()}-running"
    alive.mkdir()
    made = Path(metrics_directory())
    assert made.parent == tmp_path and made.is_dir() and not list(made.iterdir())
    assert made.stat().st_mode & 0o077 == 0  # the operator's alone
    assert not stale.exists()  # a server no longer running
    assert alive.exists()
    # One the operator named: emptied of a previous start's values, kept otherwise.
    named = tmp_path / "named"
    named.mkdir()
    (named / "counter_123.db").write_bytes(b"x")
    (named / "README").write_text("mine")
    assert metrics_directory(str(named)) == str(named)
    assert [p.name for p in named.iterdir()] == ["README"]
