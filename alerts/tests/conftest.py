"""Alerts' fixtures: fresh per-process caches, and a local webhook receiver."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture(autouse=True)
def fresh_alert_caches(fresh_key_caches):
    """Owners' budgets and the owners checked are kept per process: never across tests."""
    from alerts import services

    services._owners.clear()
    services._checked.clear()
    yield
    services._owners.clear()
    services._checked.clear()


@dataclasses.dataclass
class Receiver:
    """A webhook endpoint on this machine: it keeps what each POST carried and answers 500 to
    the first `fail_first` of them; with `stall`, it holds every request until released."""

    url: str
    fail_first: int = 0
    stall: bool = False
    hits: list[dict] = dataclasses.field(default_factory=list)
    answered: int = 0
    released: threading.Event = dataclasses.field(default_factory=threading.Event)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(hit["body"]) for hit in self.hits]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.hits.append({"path": self.path, "headers": dict(self.headers), "body": body})
                failing = len(state.hits) <= state.fail_first
            if state.stall:
                state.released.wait(30)  # a receiver that sleeps 30 s
            self.send_response(500 if failing else 204)
            self.end_headers()
            with state.lock:
                state.answered += 1

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = Receiver(url=f"http://127.0.0.1:{server.server_port}/hooks/budget?token=s3cret-path")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.released.set()
    server.shutdown()
    server.server_close()
