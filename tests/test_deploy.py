"""Deployable safely: `check --deploy` is clean with the README's production settings, a
guessable SECRET_KEY stops the server, one generated key is shared by every process, HOST is
where the server listens.

Each case runs the project as an operator would, in its own process with its own environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from proxyserver.secret_key import secret_key_weakness
from relay.management.commands.serve import Command as ServeCommand
from relay.management.commands.serve import uvicorn_command
from tests.servers import ROOT, free_port

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
