"""LiteLLM's proxy as a benchmark competitor: its own venv, its lightest no-database setup.

This module does not import litellm: it runs under the project's .venv and only installs,
configures and names the command for LiteLLM, which runs from .venv-litellm.

    python = ensure_installed()
    proc = subprocess.Popen(command(port, CONFIG), env=environment(api_base, api_key))
    # clients send  Authorization: Bearer <MASTER_KEY>  to http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = ROOT / ".venv-litellm"
REQUIREMENTS = HERE / "requirements.txt"
CONFIG = HERE / "config.yaml"
MARKER = VENV / ".installed"
# general_settings.master_key in config.yaml: with no database, the only key LiteLLM accepts.
MASTER_KEY = "sk-litellm-bench"

# Inherited variables that would give LiteLLM a database, Redis, other logging or an
# upstream other than the one we point it at. It must run without any of them.
_DROPPED_PREFIXES = ("DATABASE_", "REDIS_", "LITELLM_", "PRISMA_", "LANGFUSE_", "OTEL_")
_DROPPED = {
    "DIRECT_URL",
    "JSON_LOGS",
    "DEBUG",
    "DETAILED_DEBUG",
    "HOST",
    "PORT",
    "NUM_WORKERS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
}


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_installed() -> Path:
    """Create .venv-litellm (python3.11) and install requirements.txt into it, unless the
    marker file says that install is newer than requirements.txt. Returns the venv's python."""
    if MARKER.exists() and MARKER.stat().st_mtime >= REQUIREMENTS.stat().st_mtime:
        return python()
    if not python().exists():
        subprocess.run(
            [shutil.which("python3.11") or "python3.11", "-m", "venv", str(VENV)], check=True
        )
    pip = [str(python()), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-r", str(REQUIREMENTS)], check=True)
    MARKER.touch()
    return python()


def command(port: int, config: Path = CONFIG) -> list[str]:
    """LiteLLM's own CLI, one worker on 127.0.0.1:port. With one worker it runs uvicorn
    in-process with loop="uvloop" (LiteLLM's choice on Linux) and uvicorn's auto HTTP
    parser, which is httptools since requirements.txt installs it."""
    return [
        str(VENV / "bin" / "litellm"),
        "--config", str(config),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip


def environment(api_base: str, api_key: str) -> dict[str, str]:
    """The whole environment to start LiteLLM with (pass it as env=, not merged over
    os.environ): offline, quiet, no telemetry, no database or Redis."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED and not k.startswith(_DROPPED_PREFIXES)
    }
    env.update(
        {
            # Read by config.yaml (os.environ/...): the upstream every model goes to.
            "LITELLM_BENCH_API_BASE": api_base,
            "LITELLM_BENCH_API_KEY": api_key,
            # Nothing downloaded at run time: the bundled copies of what LiteLLM would
            # otherwise fetch from GitHub (model cost map, Anthropic beta headers, the
            # UI's blog posts, policy templates, autorouter presets).
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
            "LITELLM_LOCAL_BLOG_POSTS": "True",
            "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
            "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
            # The telemetry veto (LITELLM_TELEMETRY_* settings; off without a DB anyway).
            "LITELLM_TELEMETRY_DISABLED": "true",
            # Errors only, from LiteLLM's loggers and from uvicorn (no access log).
            "LITELLM_LOG": "ERROR",
            "JSON_LOGS": "False",
            # Loopback upstream: never through an HTTP proxy.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
