"""Private PostgreSQL and Redis servers for fault tests: stop, restart and kill them freely.

The machine's shared servers (PostgreSQL on 5432, Redis on 6379) are used by the rest of the
suite and by other people, so a test that wants to pull the plug starts its own: a throwaway
cluster or redis-server in a temp dir, on a free port, owned by this process (a child of
pytest, so killing it and reaping it is ours to do and nothing else notices).

    def test_relay_survives_a_db_crash(private_postgres):
        private_postgres.kill()
        ...
        private_postgres.start()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "postgres"  # the system user that runs the server, and the database superuser

# pg_ctl's shutdown modes are these signals to the postmaster; sending them ourselves lets us
# wait() on our own child (so no zombie is left behind a PID 1 that may not reap).
_PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_user_kwargs() -> dict:
    """Popen arguments that run a server process as the postgres user when we are root.

    initdb and postgres refuse to run as root. Popen's user= switches user in the child just
    before exec, so the pid we hold is the server's own (with runuser or su in between, a
    signal would reach the wrapper, not the postmaster). extra_groups=[] drops root's groups.
    """
    if not _as_root():
        return {}
    return {"user": PG_USER, "group": PG_USER, "extra_groups": []}


def _pg_bin_dir() -> Path:
    """The newest installed server's bin directory, or a skip naming the package to install."""
    candidates = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if all((path / tool).exists() for tool in ("initdb", "postgres", "pg_isready"))
    ]
    if not candidates:
        pytest.skip(
            "needs the PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql)"
        )
    # Sort numerically: "9.6" < "15" < "16".
    return max(candidates, key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])


def _traversable_by_all(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _make_temp_dir(prefix: str, owner: str | None) -> Path:
    """A temp dir the given user owns; under /tmp when the usual temp dir is closed to them
    (pytest's tmp_path lives in /tmp/pytest-of-root, mode 0700)."""
    base = Path(tempfile.gettempdir())
    if owner and not _traversable_by_all(base):
        base = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)
    if owner:
        shutil.chown(path, owner, owner)
    return path


def _pids_with_parent(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name, in parentheses, may hold spaces: split after its ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                pids.append(int(stat.parent.name))
    return pids


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie (dead, its parent not reaping it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _ServerProcess:
    """What both private servers share: the process this test owns and its log."""

    proc: subprocess.Popen | None
    log: Path

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """The server's log, across every start."""
        return self.log.read_text(errors="replace")


class PrivatePostgres(_ServerProcess):
    """A throwaway PostgreSQL cluster on 127.0.0.1 at a free port; call start() to run it.

    The port, data and settings survive stop/start/kill, so clients reconnect to the same url
    and see what was committed before. `settings` override the postgresql.conf lines below.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bin = _pg_bin_dir()
        self.port = _free_port()
        self.dir = _make_temp_dir("private-pg-", PG_USER if _as_root() else None)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        initdb = subprocess.run(
            [
                self.bin / "initdb",
                "--pgdata", str(self.data),
                "--auth=trust",
                "--username", PG_USER,
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",  # the environment's locale may not be generated here
            ],
            cwd=self.dir,  # the postgres user may not be able to enter ours (/root)
            capture_output=True,
            text=True,
            check=False,
            **_pg_user_kwargs(),
        )  # fmt: skip
        if initdb.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        config = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",  # not /var/run/postgresql: shared
            "max_connections": "100",
            # Durability against the machine crashing is not under test: skip the disk flushes.
            "fsync": "off",
            "full_page_writes": "off",
            # Kept on: with it off, a commit is acknowledged before its WAL is even written, so
            # kill() loses the last ~0.5 s of committed work. With fsync off, on costs little.
            "synchronous_commit": "on",
            **(settings or {}),
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/services.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in config.items())

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def _ready(self) -> bool:
        result = subprocess.run(
            [self.bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER],
            check=False,
        )
        return result.returncode == 0  # 1 is "rejecting", e.g. while recovering from kill()

    def start(self, timeout: float = 30) -> None:
        """Start the server (after stop or kill, too) and wait until it accepts connections."""
        if self.running:
            return
        if self._log_file is None:
            self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [self.bin / "postgres", "-D", str(self.data)],
            cwd=self.dir,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            **_pg_user_kwargs(),
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.proc.returncode}:\n{_log_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready in {timeout} s:\n{_log_tail(self.log)}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Shut down as `pg_ctl stop -m MODE` would: "fast" rolls back and disconnects
        clients, "immediate" quits without a checkpoint (recovery runs at the next start)."""
        if mode not in _PG_STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_PG_STOP_SIGNALS)}, not {mode!r}")
        if self.proc is not None:
            _stop_process(self.proc, _PG_STOP_SIGNALS[mode], timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL the postmaster and its children: a crash. start() then recovers."""
        if not self.running:
            return
        # Freeze the postmaster first so it cannot fork a backend we would not see.
        self.proc.send_signal(signal.SIGSTOP)
        children = _pids_with_parent(self.proc.pid)
        for pid in [self.proc.pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        # A new postmaster refuses to start while an old backend still holds the shared
        # memory; the orphaned children are reaped by PID 1 (or not: then they are zombies).
        deadline = time.monotonic() + timeout
        while not all(_gone(pid) for pid in children):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres children {children} outlived SIGKILL")
            time.sleep(0.02)

    def createdb(self, name: str) -> str:
        """Create a database; returns its url."""
        subprocess.run(
            [self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, name],
            check=True,
            capture_output=True,
        )
        return self.url_for(name)

    def cleanup(self) -> None:
        """Stop the server (without a checkpoint: the data is going) and remove its files."""
        self.stop("immediate")
        if self._log_file is not None:
            self._log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis(_ServerProcess):
    """A redis-server on 127.0.0.1 at a free port, without persistence; call start() to run it.

    The port survives stop/start/kill, the data does not: each start is an empty Redis.
    """

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("needs redis-server (apt-get install redis-server)")
        self.binary = binary
        self.port = _free_port()
        self.dir = _make_temp_dir("private-redis-", None)
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10) -> None:
        if self.running:
            return
        if self._log_file is None:
            self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",  # we own the process: stop and kill act on it directly
                "--dir", str(self.dir),  # not the cwd: no stray dump.rdb in the checkout
            ],
            cwd=self.dir,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}:\n{_log_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not ready in {timeout} s:\n{_log_tail(self.log)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGKILL, 10)

    def cleanup(self) -> None:
        self.kill()  # nothing to save
        if self._log_file is not None:
            self._log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# Function-scoped: a fault test leaves its server stopped, killed or half-recovered, and the
# next test should not inherit that. A fresh cluster costs about half a second.


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
