"""manage.py demo: the proxy on the fake OpenAI upstream, with a demo user and key (`make demo`).

The demo has known passwords (admin / admin, demo / demo) and a live $5-a-day key, so it only
runs on a database of its own, a file named `demo.sqlite3` (`make demo` gives it
`var/demo.sqlite3` through DATABASE_URL): never the one `make run` serves. Its key is kept
beside that file, so a second run prints the same key again instead of minting another. Both
ports are checked before anything starts: a demo already running is named in one line, not
in a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from keys.models import ApiKey, Period
from keys.selectors import key_info_for_secret
from keys.services import key_issue, key_revoke

DEMO_DATABASE = "demo.sqlite3"
DEMO_USER = "demo"
# The demo's published passwords, only ever in its own database.
DEMO_PASSWORD = "demo"  # noqa: S105
DEMO_ADMIN_PASSWORD = "admin"  # noqa: S105 (when ADMIN_PASSWORD is unset)
DEMO_KEY_NAME = "demo"
DEMO_BUDGET = Decimal(5)
UPSTREAM_KEY = "sk-demo-upstream"
HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
# The SDK call the demo prints: a strict budget (the default) wants an output maximum.
SDK_CALL = (
    "from openai import OpenAI; print(OpenAI().chat.completions.create(model='gpt-4o-mini', "
    "max_completion_tokens=100, messages=[{'role':'user','content':'hi'}])"
    ".choices[0].message.content)"
)


def port_busy(port: int) -> bool:
    """Whether a server could not listen on HOST:`port` now. SO_REUSEADDR as the servers set
    it, so a port held only by closed connections (TIME_WAIT) counts as free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


class Command(BaseCommand):
    help = (
        "Serve the proxy on the fake OpenAI upstream with a demo user and key, on a database "
        "of its own (DATABASE_URL=sqlite:///var/demo.sqlite3, as `make demo` sets it)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=settings.PORT, help="the proxy's port")
        parser.add_argument(
            "--upstream-port", type=int, default=8765, help="the fake upstream's port"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the servers got it too
            self._demo(int(options["port"]), int(options["upstream_port"]))

    def _demo(self, port: int, upstream_port: int) -> None:
        database = self._demo_database()
        self._check_ports(port, upstream_port)
        database.parent.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("ensure_admin", default_password=DEMO_ADMIN_PASSWORD)
        secret, reused = self._demo_key(database.with_suffix(".key"))

        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{database}",
            "OPENAI_BASE_URL": f"http://{HOST}:{upstream_port}/v1",
            "OPENAI_API_KEY": UPSTREAM_KEY,
        }
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        servers = {
            "the fake upstream": [
                *manage, "fake_openai", "--port", str(upstream_port), "--key", UPSTREAM_KEY
            ],
            "the proxy": [*manage, "serve", "--host", HOST, "--port", str(port)],
        }  # fmt: skip
        # SIGTERM ends the demo as Ctrl-C does: the servers are stopped, not left behind.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        children: dict[str, subprocess.Popen] = {}
        try:
            for name, argv in servers.items():
                children[name] = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR)  # noqa: S603
            self._wait_ready(list(children.values()), port, upstream_port)
            self._say_ready(database, port, secret, reused)
            while all(child.poll() is None for child in children.values()):
                time.sleep(0.5)
            name, child = next((n, c) for n, c in children.items() if c.poll() is not None)
            # 0 or a signal: stopped as asked (Ctrl-C reaches the servers too); else it failed.
            if child.returncode > 0:
                raise CommandError(f"the demo stopped: {name} exited with {child.returncode}")
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.terminate()
            for child in children.values():
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def _demo_database(self) -> Path:
        db = settings.DATABASES["default"]
        name = Path(str(db["NAME"]))
        if db["ENGINE"] != "django.db.backends.sqlite3" or name.name != DEMO_DATABASE:
            raise CommandError(
                "the demo writes known passwords, so it runs only on a database of its own: "
                f"`make demo`, or DATABASE_URL=sqlite:///var/{DEMO_DATABASE} (this one is {name})"
            )
        return name.resolve()

    def _check_ports(self, port: int, upstream_port: int) -> None:
        if port == upstream_port:
            raise CommandError(f"the proxy and the fake upstream cannot share port {port}")
        busy = [p for p in (port, upstream_port) if port_busy(p)]
        if not busy:
            return
        ports = f"port {busy[0]} is" if len(busy) == 1 else f"ports {port} and {upstream_port} are"
        free = next(
            (
                (port + n, upstream_port + n)
                for n in range(1, 100)
                if upstream_port + n != port and port + n != upstream_port
                and not port_busy(port + n) and not port_busy(upstream_port + n)
            ),
            None,
        )  # fmt: skip
        instead = f": make demo PORT={free[0]} DEMO_UPSTREAM_PORT={free[1]}" if free else ""
        raise CommandError(
            f"{ports} in use (a demo or `make run` already running?): stop it, or pick "
            f"others{instead}"
        )

    def _demo_key(self, key_file: Path) -> tuple[str, bool]:
        """The demo key of the last run if it still works, else a new one (and the old ones
        revoked): (secret, reused). The secret is kept in `key_file`, readable by its owner
        only, beside the demo's database."""
        user, _ = get_user_model().objects.get_or_create(username=DEMO_USER)
        user.set_password(DEMO_PASSWORD)
        user.is_active = True
        user.save()
        with contextlib.suppress(FileNotFoundError):
            secret = key_file.read_text().strip()
            info = key_info_for_secret(secret)
            if info is not None and info.user_id == user.pk:
                return secret, True
        for old in ApiKey.objects.filter(user=user, revoked_at__isnull=True):
            key_revoke(api_key=old)
        _, secret = key_issue(
            username=DEMO_USER, name=DEMO_KEY_NAME, budget_usd=DEMO_BUDGET, period=Period.DAY
        )
        with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(secret + "\n")
        return secret, False

    def _wait_ready(self, children: list[subprocess.Popen], port: int, upstream: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if any(child.poll() is not None for child in children):
                raise CommandError("the demo could not start: see the lines above")
            try:
                with socket.create_connection((HOST, upstream), timeout=1):
                    pass
                with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise CommandError(f"the demo did not answer on port {port} within {READY_TIMEOUT:.0f} s")

    @staticmethod
    def _shown(path: Path) -> str:
        """`path` as the person who typed `make demo` in the project folder would write it."""
        try:
            return str(path.relative_to(settings.BASE_DIR))
        except ValueError:
            return str(path)

    def _say_ready(self, database: Path, port: int, secret: str, reused: bool) -> None:
        base = f"http://{HOST}:{port}"
        python = self._shown(Path(sys.executable))
        admin = os.environ.get("ADMIN_USERNAME") or settings.ADMIN_USERNAME
        where = self._shown(database)
        same = "; the same as last time" if reused else ""
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"Demo on its own database ({where}), apart from what `make run` serves.",
                    f"Demo key (user '{DEMO_USER}', ${DEMO_BUDGET} a day{same}): {secret}",
                    f"Try:  OPENAI_API_KEY={secret} OPENAI_BASE_URL={base}/v1 "
                    f'{python} -c "{SDK_CALL}"',
                    f"Dashboard: {base}/dashboard/ (user {DEMO_USER} / {DEMO_PASSWORD}; admin: "
                    f"{base}/admin/ as {admin}, password ADMIN_PASSWORD or '{DEMO_ADMIN_PASSWORD}')",
                    "Stop with Ctrl-C.",
                    "",
                ]
            )
        )
        self.stdout.flush()
