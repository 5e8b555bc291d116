# Two commands on a fresh machine: `make run` and `make test`. This file owns installation.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# PORT and HOST come from the environment or .env, read by the settings (the environment wins);
# `make run PORT=8001 HOST=0.0.0.0` passes them as flags. No default here: it would beat .env.
ONLY_GIVEN = $(if $(filter command line,$(origin $(1))),$(2) $($(1)))
DEMO_UPSTREAM_PORT ?= 8765
# The demo's own database (known passwords, a live key): never the one `make run` serves.
DEMO_DATABASE_URL ?= sqlite:///var/demo.sqlite3

.PHONY: run test demo bench lint format clean

$(VENV)/.runtime: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

.venv-legacy/.installed: requirements-legacy.txt
	@test -x .venv-legacy/bin/python || $(PYTHON) -m venv .venv-legacy
	.venv-legacy/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-legacy.txt
	@touch $@

## run: install, migrate (SQLite unless DATABASE_URL), load prices, make the admin (its password is
## ADMIN_PASSWORD when set), serve on $HOST:$PORT (from the environment or .env: 127.0.0.1:8000)
run: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_prices
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve $(call ONLY_GIVEN,PORT,--port) $(call ONLY_GIVEN,HOST,--host)

## test: the whole suite (on DATABASE_URL when set, else SQLite)
test: $(VENV)/.dev .venv-legacy/.installed
	@if [ -x /usr/bin/chromium ]; then echo "browser tests: using /usr/bin/chromium"; \
	 else echo "browser tests: SKIPPED, Chromium is not installed (apt-get install chromium, or run .ci/run)"; fi
	@if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then echo "nginx deployment test: SKIPPED, nginx is not installed (apt-get install nginx, or run .ci/run)"; \
	 elif [[ "$$DATABASE_URL" != postgres* || -z "$$TEST_REDIS_URL" ]]; then echo "nginx deployment test: SKIPPED unless DATABASE_URL is PostgreSQL and TEST_REDIS_URL is set (.ci/run sets both)"; \
	 else echo "nginx deployment test: using $$(command -v nginx || echo /usr/sbin/nginx) on PostgreSQL and Redis"; fi
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: a fake OpenAI upstream, the proxy on it, a demo user and key: try it with no OpenAI key.
## All on DEMO_DATABASE_URL; a second run reuses the key, and refuses (saying why) if a port is busy.
demo: $(VENV)/.dev
	@DATABASE_URL=$(DEMO_DATABASE_URL) $(PY) manage.py demo $(call ONLY_GIVEN,PORT,--port) --upstream-port $(DEMO_UPSTREAM_PORT)

## bench: this proxy beside direct-to-upstream and LiteLLM (installed into .venv-litellm on first
## use), on SQLite and on PostgreSQL + Redis when they answer; printed and written to bench/results/
bench: $(VENV)/.dev
	@command -v wrk >/dev/null || { echo "bench: installing wrk (Debian's package)"; \
	 apt-get install -y -qq wrk >/dev/null 2>&1 || sudo apt-get install -y -qq wrk >/dev/null; } \
	 || { echo "bench: needs wrk (apt-get install wrk)"; exit 1; }
	$(PY) bench/gateways.py $(BENCH_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .venv-legacy .venv-litellm .cache test-artifacts
