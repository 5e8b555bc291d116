# Two commands on a fresh machine: `make run` and `make test`. This file owns installation.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
DEMO_UPSTREAM_PORT ?= 8765

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

## run: install, migrate (SQLite unless DATABASE_URL), load prices, make the admin, serve on $PORT
run: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_prices
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve --port $(PORT)

## test: the whole suite (on DATABASE_URL when set, else SQLite)
test: $(VENV)/.dev .venv-legacy/.installed
	@if [ -x /usr/bin/chromium ]; then echo "browser tests: using /usr/bin/chromium"; \
	 else echo "browser tests: SKIPPED, Chromium is not installed (apt-get install chromium, or run .ci/run)"; fi
	$(PY) -m pytest $(PYTEST_ARGS)

## demo: a fake OpenAI upstream, the proxy on it, a demo user and key: try it with no OpenAI key
demo: $(VENV)/.dev
	$(PY) manage.py migrate --noinput
	ADMIN_PASSWORD=$${ADMIN_PASSWORD:-admin} $(PY) manage.py ensure_admin
	@$(PY) manage.py fake_openai --port $(DEMO_UPSTREAM_PORT) --key sk-demo-upstream & \
	 upstream=$$!; trap "kill $$upstream" EXIT; \
	 key=$$($(PY) manage.py create_api_key demo --budget 5 --period day --name demo 2>/dev/null | tail -n 1); \
	 echo; echo "Demo key (user 'demo', \$$5 a day): $$key"; \
	 echo "Try:  OPENAI_API_KEY=$$key OPENAI_BASE_URL=http://127.0.0.1:$(PORT)/v1 $(PY) -c \"from openai import OpenAI; print(OpenAI().chat.completions.create(model='gpt-4o-mini', max_completion_tokens=100, messages=[{'role':'user','content':'hi'}]).choices[0].message.content)\""; \
	 $(PY) manage.py shell -c "from django.contrib.auth import get_user_model as users; u = users().objects.get(username='demo'); u.set_password('demo'); u.save()"; \
	 echo "Dashboard: http://127.0.0.1:$(PORT)/dashboard/ (user demo / demo; admin: /admin/ as admin, password ADMIN_PASSWORD or 'admin')"; echo; \
	 OPENAI_BASE_URL=http://127.0.0.1:$(DEMO_UPSTREAM_PORT)/v1 OPENAI_API_KEY=sk-demo-upstream $(PY) manage.py serve --port $(PORT)

## bench: relay latency against the fake upstream, and the quota step's cost
bench: $(VENV)/.dev
	$(PY) bench/relay_latency.py
	$(PY) bench/quota_step.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .venv-legacy .cache test-artifacts
