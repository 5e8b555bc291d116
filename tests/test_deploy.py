"""Deployable safely: `check --deploy` is clean with the README's production settings, a
guessable SECRET_KEY stops the server, one generated key is shared by every process, HOST is
where the server listens; a first `make run` from sample.env reads PORT from .env (the
environment and the command line win), says a missing key and a busy port in one line each,
and /readyz names what is missing.

Each case runs the project as an operator would, in its own process with its own environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from proxyserver.secret_key import secret_key_weakness
from relay.management.commands.serve import Command as ServeCommand
from relay.management.commands.serve import uvicorn_command
from tests.servers import ROOT, UPSTREAM_KEY, free_port

SAMPLE_KEY = "change-me-to-a-long-random-string"  # what sample.env shipped


def documented_production_env() -> dict[str, str]:
    """The variables of the README's "Running behind a TLS reverse proxy" block."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running behind a TLS reverse proxy", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README: the TLS reverse proxy section lost its settings block"
    pairs = re.findall(r"^([A-Z_]+)=(.*)$", block.group(1), re.MULTILINE)
    assert pairs and dict(pairs)["DEBUG"] == "false"
    return dict(pairs)


def project_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The caller's environment with `variables` set; blank ones (as sample.env ships them)
    mean "unset" to the settings, and beat anything a developer's .env says."""
    env = {
        **os.environ,
        "SECRET_KEY": "",
        "SECRET_KEY_FILE": str(tmp_path / "var" / "secret-key"),
        "DEBUG": "false",
        "HOST": "",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CACHE_URL": "",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "proxyserver.settings",
    }
    env.update(variables)
    return env


def run(env: dict[str, str], *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def printed_by(env: dict[str, str], code: str) -> list[str]:
    """What `code` prints in a process of its own, with Django set up from `env`."""
    done = run(
        env, "-c", f"import django; django.setup(); from django.conf import settings; {code}"
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    env = project_env(tmp_path, **documented_production_env())

    done = run(env, "manage.py", "check", "--deploy", "--fail-level", "WARNING")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


def test_check_deploy_names_what_a_plain_http_setup_lacks(tmp_path):
    """The defaults are for plain HTTP on a workstation; `check --deploy` says what to set."""
    done = run(project_env(tmp_path), "manage.py", "check", "--deploy", "--fail-level", "WARNING")

    assert done.returncode != 0
    found = set(re.findall(r"security\.W\d+", done.stdout + done.stderr))
    # HSTS, SSL redirect, session cookie, CSRF cookie; never the key (the generated one is strong).
    assert found == {"security.W004", "security.W008", "security.W012", "security.W016"}


def test_cookies_are_secure_by_default_once_tls_is_in_front(tmp_path):
    show = "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)"

    assert printed_by(project_env(tmp_path), show) == ["False", "False"]
    behind_tls = project_env(tmp_path, TRUST_X_FORWARDED_PROTO="true")
    assert printed_by(behind_tls, show) == ["True", "True"]
    opted_out = project_env(tmp_path, TRUST_X_FORWARDED_PROTO="true", SESSION_COOKIE_SECURE="false")
    assert printed_by(opted_out, show) == ["False", "True"]


def test_behind_tls_plain_http_is_redirected_but_health_probes_are_not(db, client, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600

    plain = client.get("/accounts/login/")
    assert plain.status_code == 301 and plain["Location"] == "https://testserver/accounts/login/"
    assert client.get("/healthz").status_code == 200  # a probe talks to the server directly
    secure = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200 and secure["Strict-Transport-Security"] == "max-age=3600"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (SAMPLE_KEY, "is the placeholder from sample.env"),
        ("test-secret", "has 11 characters (at least 50 are needed)"),
        ("django-insecure-" + "x7#k" * 15, "is a development key"),
        ("ab" * 30, "has fewer than 5 different characters"),
    ],
)
def test_a_guessable_key_with_debug_off_stops_the_server_with_one_line(tmp_path, key, reason):
    env = project_env(tmp_path, SECRET_KEY=key)

    serve = run(env, "manage.py", "serve", "--port", str(free_port()))
    uvicorn = run(env, *uvicorn_command(host="127.0.0.1", port=free_port())[1:])

    for done in (serve, uvicorn):
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if "SECRET_KEY" in line]
        assert (
            lines and reason in lines[0] and "Set SECRET_KEY to 50+ random characters" in lines[0]
        )
    assert serve.stderr.strip().count("\n") == 0, serve.stderr  # the one line, nothing else
    assert uvicorn.returncode == 3  # uvicorn's "failed to start": its supervisor gives up


def test_a_guessable_key_is_fine_with_debug_on(tmp_path):
    env = project_env(tmp_path, SECRET_KEY=SAMPLE_KEY, DEBUG="true")

    done = run(env, "-c", "import proxyserver.asgi")

    assert done.returncode == 0, done.stderr


def test_processes_without_a_secret_key_share_one_generated_key(tmp_path):
    """Four processes start at once on a fresh checkout, as `--workers 4` does: one key."""
    env = project_env(tmp_path)
    show = (
        "import django, hashlib; django.setup(); from django.conf import settings; "
        "print(hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest())"
    )
    argv = [sys.executable, "-c", show]
    procs = [
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    hashes = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    later = run(env, *argv[1:]).stdout.strip()  # a restart

    key_file = tmp_path / "var" / "secret-key"
    assert len(hashes) == 1 and later in hashes
    assert hashlib.sha256(key_file.read_text().strip().encode()).hexdigest() == later
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert secret_key_weakness(key_file.read_text().strip()) is None
    assert not [p for p in key_file.parent.iterdir() if p != key_file]  # no scratch files left


def test_a_weak_key_in_the_key_file_is_refused_naming_the_file(tmp_path):
    key_file = tmp_path / "var" / "secret-key"
    key_file.parent.mkdir()
    key_file.write_text("short\n")

    done = run(project_env(tmp_path), "manage.py", "serve", "--port", str(free_port()))

    assert done.returncode != 0 and f"the key in {key_file} has 5 characters" in done.stderr


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _serve(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def _wait_until_answering(proc: subprocess.Popen, host: str, port: int) -> None:
    deadline = time.monotonic() + 30
    while not _answers(host, port):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"nothing answered on {host}:{port}"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


def _loopback_aliases_work() -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


needs_127_0_0_2 = pytest.mark.skipif(
    not _loopback_aliases_work(), reason="this machine does not route 127.0.0.2 to loopback"
)


@needs_127_0_0_2
def test_serve_listens_on_loopback_only_by_default_with_no_secret_key(tmp_path):
    """`make run` out of the box: DEBUG off, no SECRET_KEY, no HOST."""
    proc, port = _serve(project_env(tmp_path))
    try:
        _wait_until_answering(proc, "127.0.0.1", port)
        assert not _answers("127.0.0.2", port)  # bound to 127.0.0.1 alone, not to every address
    finally:
        stderr = _stop(proc)
    assert f"serving on http://127.0.0.1:{port}" in stderr
    assert "only this machine can connect (HOST=0.0.0.0 serves others)" in stderr


@needs_127_0_0_2
@pytest.mark.parametrize("how", ["HOST", "--host"])
def test_serve_listens_where_host_says(tmp_path, how):
    # A name clients use beyond loopback's own goes into ALLOWED_HOSTS, as sample.env says.
    env = project_env(
        tmp_path, HOST="127.0.0.2" if how == "HOST" else "", ALLOWED_HOSTS="127.0.0.2"
    )
    proc, port = _serve(env, *(["--host", "127.0.0.2"] if how == "--host" else []))
    try:
        _wait_until_answering(proc, "127.0.0.2", port)
        assert not _answers("127.0.0.1", port)
    finally:
        _stop(proc)


def test_serve_keeps_the_flask_proxys_b_as_the_database_host():
    parser = ServeCommand().create_parser("manage.py", "serve")

    options = parser.parse_args(["-b", "db.internal", "-p", "9000", "--host", "0.0.0.0"])

    assert options.db_host == "db.internal" and options.host == "0.0.0.0" and options.port == 9000


# -- first run: what a new user meets with `cp sample.env .env && make run` -------------------

SAMPLE_ENV = (ROOT / "sample.env").read_text()
# Everything sample.env sets: a developer's or CI's own values must not leak into a first run.
DOCUMENTED = set(re.findall(r"^([A-Z_]+)=", SAMPLE_ENV, re.MULTILINE))


@pytest.fixture(scope="module")
def fresh_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as a new user has it (no .env, no database), sharing this venv."""
    checkout = tmp_path_factory.mktemp("checkout") / "project"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "var", "db.sqlite3*", ".cache", ".env", "test-artifacts", "bench",
            "*_cache", "__pycache__",
        ),
    )  # fmt: skip
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    return checkout


def first_run_env(**variables: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in DOCUMENTED}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return {**env, **variables}


def write_dotenv(checkout: Path, **changes: str) -> None:
    """sample.env copied to .env, with `changes` edited in, as the README says to."""
    text = SAMPLE_ENV
    for name, value in changes.items():
        text, found = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
        assert found == 1, name
    (checkout / ".env").write_text(text)


def make_run(checkout: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    # `-o`: the shared venv counts as installed (a test never reinstalls it).
    return subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.runtime", "run", *args],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _stop_group(proc: subprocess.Popen) -> str:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0]


def _wait_for_make_run(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 90
    while not _answers("127.0.0.1", port):
        assert proc.poll() is None, _stop_group(proc)
        assert time.monotonic() < deadline, f"make run never answered on {port}"
        time.sleep(0.2)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_run_serves_on_the_port_in_dotenv_and_a_second_one_says_it_is_taken(fresh_checkout):
    port = free_port()
    write_dotenv(fresh_checkout, PORT=str(port))

    first = make_run(fresh_checkout, first_run_env())
    try:
        _wait_for_make_run(first, port)
        second = make_run(fresh_checkout, first_run_env())
        second_output = second.communicate(timeout=90)[0]
    finally:
        first_output = _stop_group(first)

    assert f"serving on http://127.0.0.1:{port}" in first_output
    # sample.env's placeholder key: said once, before users meet it as failed requests.
    [warning] = [line for line in first_output.splitlines() if "OPENAI_API_KEY" in line]
    assert warning.startswith("WARNING: OPENAI_API_KEY is sample.env's placeholder")
    assert second.returncode != 0 and "serving on" not in second_output
    [busy] = [line for line in second_output.splitlines() if " is in use: " in line]
    assert busy.endswith(
        f"port {port} on 127.0.0.1 is in use: set PORT in .env or stop the other server"
    )
    assert "Traceback" not in second_output


@needs_make
@pytest.mark.parametrize("where", ["environment", "make command line"])
def test_make_run_port_from_the_environment_or_command_line_beats_dotenv(fresh_checkout, where):
    in_dotenv, wanted = free_port(), free_port()
    write_dotenv(fresh_checkout, PORT=str(in_dotenv), OPENAI_API_KEY=UPSTREAM_KEY)
    if where == "environment":
        proc = make_run(fresh_checkout, first_run_env(PORT=str(wanted)))
    else:
        proc = make_run(fresh_checkout, first_run_env(PORT="1"), f"PORT={wanted}")
    try:
        _wait_for_make_run(proc, wanted)
        assert not _answers("127.0.0.1", in_dotenv)
    finally:
        output = _stop_group(proc)
    assert f"serving on http://127.0.0.1:{wanted}" in output
    assert "OPENAI_API_KEY" not in output  # a real-looking key: no warning


def test_serve_on_a_busy_port_says_so_in_one_line_before_serving(tmp_path):
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        done = run(project_env(tmp_path, OPENAI_API_KEY=UPSTREAM_KEY), "manage.py", "serve",
                   "--port", str(port))  # fmt: skip

    assert done.returncode != 0
    assert done.stderr.strip() == (
        f"CommandError: port {port} on 127.0.0.1 is in use: set PORT in .env or stop the other "
        "server"
    )


def _readyz(env: dict[str, str]) -> tuple[int, dict, str]:
    """(status, body) of /readyz from `serve` started with `env`, and what it printed."""
    proc, port = _serve(env)
    try:
        _wait_until_answering(proc, "127.0.0.1", port)
        answer = urllib.request.Request(f"http://127.0.0.1:{port}/readyz")
        try:
            with urllib.request.urlopen(answer, timeout=10) as resp:
                status, body = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as error:
            status, body = error.code, json.loads(error.read())
    finally:
        stderr = _stop(proc)
    return status, body, stderr


@pytest.mark.parametrize(
    ("key", "problem"),
    [("", "is not set"), ("sk-your-real-openai-key", "is sample.env's placeholder")],
)
def test_a_missing_or_placeholder_key_is_said_at_start_and_by_readyz(tmp_path, key, problem):
    status, body, stderr = _readyz(project_env(tmp_path, OPENAI_API_KEY=key))

    [warning] = [line for line in stderr.splitlines() if "OPENAI_API_KEY" in line]
    assert warning.startswith(f"WARNING: OPENAI_API_KEY {problem}")
    assert stderr.index(warning) < stderr.index("serving on")
    assert status == 503 and body["status"] == "unavailable"
    assert body["checks"]["database"] == body["checks"]["cache"] == "ok"
    assert body["checks"]["upstream_key"].startswith(f"error: OPENAI_API_KEY {problem}")


def test_readyz_asks_upstream_when_told_to(tmp_path, fake_openai):
    env = project_env(tmp_path, OPENAI_BASE_URL=fake_openai.url, OPENAI_API_KEY=UPSTREAM_KEY)

    unasked = _readyz(env)[:2]
    accepted = _readyz({**env, "READYZ_CHECK_UPSTREAM": "1"})[:2]
    refused = _readyz({**env, "READYZ_CHECK_UPSTREAM": "1", "OPENAI_API_KEY": "sk-wrong-key"})
    away = _readyz(
        {
            **env,
            "READYZ_CHECK_UPSTREAM": "1",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        }
    )

    assert unasked[0] == 200 and "upstream" not in unasked[1]["checks"]
    assert accepted[0] == 200 and accepted[1]["checks"]["upstream"] == "ok"
    assert refused[0] == 503
    assert (
        refused[1]["checks"]["upstream"]
        == "error: upstream answered 401: it refuses OPENAI_API_KEY"
    )
    assert "sk-wrong-key" not in refused[2]
    assert away[0] == 503 and "unreachable" in away[1]["checks"]["upstream"]
