"""manage.py serve: the production ASGI server (uvicorn with uvloop and httptools).

Also takes the original Flask proxy's flags and maps them onto this project's settings, so
an existing start script keeps working:
  -p PORT  -t DB_TYPE  -m DB_MODULE  -u DB_USERNAME  -w DB_PASSWORD  -b DB_HOST  -d DB_NAME
  -a API_KEY  -n ADMIN  -s ADMIN_PASS
(`-b` stays the database host, as there; the address to listen on is `--host` or $HOST.)
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from proxyserver.secret_key import secret_key_refusal
from relay.upstream import upstream_key_problem

DB_SCHEMES = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "pgsql": "postgres",
    "psql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
}


def database_url(kind: str, user: str, password: str, host: str, name: str) -> str:
    scheme = DB_SCHEMES.get(kind.lower())
    if scheme is None:
        raise CommandError(f"-t {kind}: unknown database type (use postgresql, mysql or sqlite)")
    if scheme == "sqlite":
        return f"sqlite:///{name or 'db.sqlite3'}"
    credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"{scheme}://{credentials}{'@' if credentials else ''}{host or '127.0.0.1'}/{name}"


def _shutdown_grace() -> float:
    if settings.configured:
        return settings.PROXY_SHUTDOWN_GRACE_SECONDS
    return float(os.environ.get("PROXY_SHUTDOWN_GRACE_SECONDS") or 20)


def uvicorn_command(
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "warning",
    app: str = "proxyserver.asgi:application",
) -> list[str]:
    """How the proxy is served; the tests and benchmarks start it the same way."""
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--lifespan", "on",
        "--no-access-log", "--log-level", log_level,
        # Past the relay's own grace for open streams (lifecycle), so they end cleanly first.
        "--timeout-graceful-shutdown", str(int(_shutdown_grace()) + 10),
        "--backlog", "4096",
    ]  # fmt: skip


_SET_HOST = "set HOST in .env to an address of this machine"


def listen_refusal(host: str, port: int) -> str | None:
    """Why the server could not listen on `host`:`port` now, in one line saying what to do;
    None when it could. Checked before "serving on" is printed: uvicorn's own failure comes
    after it, from each worker, as a traceback-like log."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port} ({exc.strerror}): {_SET_HOST}"
    with socket.socket(family, kind, proto) as sock:
        # As uvicorn binds: a port held only by closed connections (TIME_WAIT) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use: set PORT in .env or stop the other server"
            return f"cannot listen on {host}:{port} ({exc.strerror}): {_SET_HOST}"
    return None


_METRICS_DIR_PREFIX = "proxy-metrics-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def metrics_directory(given: str = "") -> str:
    """PROMETHEUS_MULTIPROC_DIR for one server start, where each worker keeps its metrics
    (relay.metrics). One the operator named is made, and emptied of a previous start's files
    (they would be counted again); otherwise a new private one in the temporary folder, named
    after this process, which becomes the server (exec), once those of servers no longer
    running are removed."""
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return str(path)
    for old in Path(tempfile.gettempdir()).glob(f"{_METRICS_DIR_PREFIX}*"):
        pid = old.name.removeprefix(_METRICS_DIR_PREFIX).partition("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_METRICS_DIR_PREFIX}{os.getpid()}-")


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host in ("::1", "[::1]")


class Command(BaseCommand):
    help = "Serve the proxy (ASGI, uvicorn + uvloop + httptools) on $HOST:$PORT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-p", "--port", type=int, default=None, help="port (default $PORT or 8000)"
        )
        parser.add_argument(
            "--host", default=None, help="address to listen on (default $HOST or 127.0.0.1)"
        )
        parser.add_argument(
            "--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1"))
        )
        parser.add_argument("-t", "--db-type", default=None)
        parser.add_argument(
            "-m",
            "--db-module",
            default=None,
            help="accepted for compatibility; the driver follows -t",
        )
        parser.add_argument("-u", "--db-username", default="")
        parser.add_argument("-w", "--db-password", default="")
        parser.add_argument("-b", "--db-host", default="")
        parser.add_argument("-d", "--db-name", default="")
        parser.add_argument("-a", "--api-key", default=None, help="the upstream OpenAI key")
        parser.add_argument("-n", "--admin", default=None, help="admin username")
        parser.add_argument("-s", "--admin-pass", default=None, help="admin password")
        parser.add_argument("--log-level", default="warning")

    def handle(self, *args: object, **options: object) -> None:
        # Before any side effect (the old flags' migrate): the one line, not a worker's each.
        refusal = secret_key_refusal()
        if refusal is not None:
            raise CommandError(refusal)
        env = dict(os.environ)
        setup_needed = False
        if options["db_type"]:
            env["DATABASE_URL"] = database_url(
                str(options["db_type"]),
                str(options["db_username"]),
                str(options["db_password"]),
                str(options["db_host"]),
                str(options["db_name"]),
            )
            setup_needed = True
        if options["api_key"]:
            env["OPENAI_API_KEY"] = str(options["api_key"])
        if options["admin"]:
            env["ADMIN_USERNAME"] = str(options["admin"])
            setup_needed = True
        if options["admin_pass"]:
            env["ADMIN_PASSWORD"] = str(options["admin_pass"])
            setup_needed = True
        port = options["port"] or int(env.get("PORT") or settings.PORT)
        env["PORT"] = str(port)
        host = str(options["host"] or settings.HOST)
        env["HOST"] = host
        if setup_needed:
            # The original proxy created its tables and admin at start; do the same when its
            # flags name a database or an admin.
            manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
            for command in (["migrate", "--noinput"], ["ensure_admin"]):
                subprocess.run([*manage, *command], env=env, check=True)  # noqa: S603
        refusal = listen_refusal(host, port)
        if refusal is not None:
            raise CommandError(refusal)
        # Before any worker imports prometheus_client: /metrics then adds up every worker's.
        given = env.get("PROMETHEUS_MULTIPROC_DIR", "")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_directory(given)
        # Served anyway (health checks, the admin), but said once, loudly, before any user
        # meets it as a failed request; /readyz says it too.
        key_problem = upstream_key_problem(env.get("OPENAI_API_KEY", ""))
        if key_problem is not None:
            self.stderr.write(f"WARNING: {key_problem}")
        only_here = "; only this machine can connect (HOST=0.0.0.0 serves others)"
        self.stderr.write(
            f"serving on http://{host}:{port} (workers: {options['workers']})"
            + (only_here if _loopback(host) else "")
        )
        argv = uvicorn_command(
            host=host,
            port=port,
            workers=int(options["workers"]),  # type: ignore[arg-type]
            log_level=str(options["log_level"]),
        )
        # exec, so the server reads the mapped settings fresh and gets our signals directly.
        os.chdir(settings.BASE_DIR)
        os.execvpe(sys.executable, argv, env)  # noqa: S606
