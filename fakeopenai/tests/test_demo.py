"""`make demo` as a newcomer runs it: its own database, a key that works with the SDK line it
prints, the same key on a second run, and one line (no traceback) when its ports are busy."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth.hashers import check_password

from fakeopenai.management.commands.demo import port_busy
from tests.servers import ROOT, free_port

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="needs make")
# The prerequisites are taken as made: the test runs in the venv they would make.
MAKE_DEMO = [MAKE, "-s", "-o", ".venv/.dev", "-o", ".venv/.runtime", "demo"]


def demo_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("ADMIN_USERNAME", "ADMIN_PASSWORD", "DATABASE_URL", "PORT"):
        env.pop(name, None)
    return env


class Demo:
    """`make demo` running in its own process group, as in a terminal (Ctrl-C reaches all)."""

    def __init__(self, database: Path, port: int, upstream: int) -> None:
        self.proc = subprocess.Popen(
            [
                *MAKE_DEMO,
                f"PORT={port}",
                f"DEMO_UPSTREAM_PORT={upstream}",
                f"DEMO_DATABASE_URL=sqlite:///{database}",
            ],
            cwd=ROOT,
            env=demo_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, start: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if line.startswith(start):
                return line
        raise AssertionError(f"no line starting {start!r}; the demo said: {self.seen}")

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=60)


def rows(database: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(database) as db:
        return db.execute(sql).fetchall()


def password_of(database: Path, username: str) -> str:
    [(encoded,)] = rows(database, f"SELECT password FROM auth_user WHERE username = '{username}'")
    return encoded


def test_make_demo_runs_on_its_own_database_and_keeps_its_key(tmp_path):
    database = tmp_path / "demo.sqlite3"
    port, upstream = free_port(), free_port()

    demo = Demo(database, port, upstream)
    try:
        key_line = demo.wait_for("Demo key")
        secret = key_line.rsplit(" ", 1)[-1]
        try_line = demo.wait_for("Try:")
        demo.wait_for("Stop with Ctrl-C.")
        assert "max_completion_tokens=100" in try_line and secret in try_line

        # The printed SDK line works as printed (a strict $5 budget: it names its maximum).
        sdk = subprocess.run(
            ["bash", "-c", try_line.removeprefix("Try:").strip()],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sdk.returncode == 0, sdk.stderr
        assert "fake reply" in sdk.stdout

        # A second demo on the same ports says why it cannot start, in one line, at once.
        second = subprocess.run(
            [*MAKE_DEMO, f"PORT={port}", f"DEMO_UPSTREAM_PORT={upstream}",
             f"DEMO_DATABASE_URL=sqlite:///{database}"],
            cwd=ROOT, env=demo_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        said = [
            line
            for line in (second.stdout + second.stderr).splitlines()
            # make's own "Error 1" line ("make[1]: ..." when run from inside `make test`)
            if not re.match(r"make(\[\d+\])?: \*\*\*", line)
        ]
        assert second.returncode != 0
        assert len(said) == 1 and f"ports {port} and {upstream} are in use" in said[0], said
        assert "make demo PORT=" in said[0]
        assert "Traceback" not in second.stderr
    finally:
        demo.ctrl_c()

    # Ctrl-C stopped both servers; the demo's request is in the demo's database.
    assert not port_busy(port) and not port_busy(upstream)
    assert rows(database, "SELECT model, status_code FROM usage_usagerecord") == [
        ("gpt-4o-mini", 200)
    ]
    assert check_password("admin", password_of(database, "admin"))
    assert check_password("demo", password_of(database, "demo"))

    again = Demo(database, port, upstream)
    try:
        key_line = again.wait_for("Demo key")
        again.wait_for("Stop with Ctrl-C.")
    finally:
        again.ctrl_c()
    assert key_line.endswith(f"the same as last time): {secret}")
    assert rows(database, "SELECT count(*) FROM keys_apikey WHERE revoked_at IS NULL") == [(1,)]
    assert (tmp_path / "demo.key").stat().st_mode & 0o777 == 0o600


def test_the_demo_refuses_a_database_that_is_not_its_own(tmp_path):
    served = tmp_path / "db.sqlite3"
    env = {**demo_env(), "DATABASE_URL": f"sqlite:///{served}"}
    done = subprocess.run(
        [sys.executable, "manage.py", "demo", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "CommandError: the demo writes known passwords, so it runs only on a database of its "
        f"own: `make demo`, or DATABASE_URL=sqlite:///var/demo.sqlite3 (this one is {served})"
    ]
    assert not served.exists()


def test_make_demo_never_uses_the_database_make_run_serves():
    def recipe(target: str) -> str:
        return subprocess.run(
            [MAKE, "-n", "-o", ".venv/.dev", "-o", ".venv/.runtime", target],
            cwd=ROOT,
            env=demo_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    demo = [line for line in recipe("demo").splitlines() if "manage.py" in line]
    assert demo and all("DATABASE_URL=sqlite:///var/demo.sqlite3 " in line for line in demo)
    assert "demo.sqlite3" not in recipe("run")
