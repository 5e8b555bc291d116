"""Real servers for end-to-end tests: the fake OpenAI upstream and the proxy under uvicorn.

The proxy runs in its own process, on the test database, exactly as `manage.py serve` runs it;
tests talk to it over HTTP with the official SDK. Data a test makes must be committed for the
server to see it, so end-to-end tests use `transactional_db` (the `e2e` fixture does).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.management.commands.serve import uvicorn_command

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-upstream-test-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scratch_env(
    prefix: str, database_url: str, cache_url: str, upstream_key: str
) -> dict[str, str]:
    """The environment of a benchmark's server processes: its own database (a SQLite file in
    a new temporary folder unless `database_url` names one), its cache, the fake's key."""
    scratch = tempfile.mkdtemp(prefix=prefix)
    return {
        **os.environ,
        "DATABASE_URL": database_url or f"sqlite:///{scratch}/bench.sqlite3",
        "CACHE_URL": cache_url,
        "OPENAI_API_KEY": upstream_key,
        "LOG_LEVEL": "WARNING",
        "SECRET_KEY": "bench-secret-never-used-outside-the-benchmarks-0123456789",
    }


def manage(env: dict[str, str], *args: str) -> str:
    """Run `manage.py` with `env` (a scratch database, say); its standard output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:  # noqa: BLE001
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url} in {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclasses.dataclass
class FakeOpenAI:
    url: str  # base URL, ending in /v1
    proc: subprocess.Popen

    def _call(self, path: str, method: str = "GET") -> dict:
        root = self.url.removesuffix("/v1")
        request = urllib.request.Request(
            root + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read() or b"{}")

    def stats(self) -> dict:
        return self._call("/_fake/stats")

    def reset(self) -> None:
        self._call("/_fake/reset", method="POST")

    def bills(self) -> dict:
        """What "OpenAI" billed since the last reset: {"bills": [...], "totals": {...}}, one
        bill per /v1 request keyed by the x-request-id it answered with (fakeopenai.state).
        A bill's prompt_tokens / completion_tokens include its audio_input_tokens /
        audio_output_tokens; tool_calls counts built-in tool calls by tool type."""
        return self._call("/_fake/bills")


@dataclasses.dataclass
class ProxyServer:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_fake_openai(log_dir: Path) -> FakeOpenAI:
    port = free_port()
    log = open(log_dir / f"fake-openai-{port}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "fake_openai", "--port", str(port), "--key", UPSTREAM_KEY],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    fake = FakeOpenAI(url=f"http://127.0.0.1:{port}/v1", proc=proc)
    _wait_http(f"http://127.0.0.1:{port}/_fake/stats", proc)
    return fake


def database_url() -> str:
    from django.db import connection

    cfg = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{cfg['NAME']}"
    user = cfg.get("USER") or ""
    password = f":{cfg['PASSWORD']}" if cfg.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return (
        f"postgres://{auth}{cfg.get('HOST') or '127.0.0.1'}:{cfg.get('PORT') or 5432}/{cfg['NAME']}"
    )


def start_proxy(
    upstream_url: str,
    log_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    app: str = "proxyserver.asgi:application",
) -> ProxyServer:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "PRICE_CACHE_SECONDS": "0.5",
        "PROXY_KEY_CACHE_SECONDS": "30",
        # Finished batches are settled within a second (relay.batches); production: a minute.
        "PROXY_BATCH_POLL_SECONDS": "0.5",
        # No alert sending unless a test asks (alerts/tests): the session's proxy would claim
        # the alerts of a test's own proxy and send them with its own settings.
        "ALERT_DELIVERY_SECONDS": "0",
        # 50+ characters, or the server refuses to start (proxyserver.secret_key).
        "SECRET_KEY": "test-secret-never-used-outside-the-tests-0123456789abcdef",
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    env.setdefault("CACHE_URL", "")
    log = log_dir / f"proxy-{port}.log"
    proc = subprocess.Popen(
        uvicorn_command(host="127.0.0.1", port=port, app=app),
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    _started.append(proc)
    server = ProxyServer(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    _wait_http(f"{server.url}/healthz", proc)
    return server


# Every proxy process a test started: one a failing test did not stop is killed when the test
# run ends, so no server outlives the run (and holds a port or a database).
_started: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in _started:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def fake_openai(server_logs: Path) -> Iterator[FakeOpenAI]:
    fake = start_fake_openai(server_logs)
    yield fake
    _stop(fake.proc)


@pytest.fixture(scope="session")
def proxy(
    django_db_setup, django_db_blocker, fake_openai: FakeOpenAI, server_logs: Path
) -> Iterator[ProxyServer]:
    """One proxy process for the session, on the test database, with in-process rate limits."""
    with django_db_blocker.unblock():
        server = start_proxy(fake_openai.url, server_logs)
    yield server
    _stop(server.proc)


@contextlib.contextmanager
def running(server: ProxyServer) -> Iterator[ProxyServer]:
    try:
        yield server
    finally:
        _stop(server.proc)
