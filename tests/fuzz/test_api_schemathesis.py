"""Schemathesis against the live proxy's /api/schema/: every operation it describes (the usage
and keys API, and /v1/proxy/me), as staff by HTTP Basic and as a proxy key. No 5xx, and every
answer as the schema says. Seeded (derandomize) and bounded, so CI is stable and quick."""

from __future__ import annotations

import base64
import os
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.servers import UPSTREAM_KEY

# Staff log in by HTTP Basic, a password hash per request: about 0.1 s each on this machine.
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_SCHEMA_EXAMPLES", "12"))
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def api_users(e2e, staff):
    key = e2e.key("schema-fuzzer", budget_usd=5)
    basic = base64.b64encode(b"staff:staff-pass").decode()
    return e2e, key, {"staff": f"Basic {basic}", "proxy key": f"Bearer {key}"}


def test_api_schema_fuzz(api_users) -> None:
    e2e, key, auths = api_users
    schema = schemathesis.openapi.from_url(f"{e2e.proxy.url}/api/schema/")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {operation.path for operation in operations}
    assert "/v1/proxy/me" in paths, sorted(paths)
    session = requests.Session()
    sent = 0
    started = time.monotonic()
    log_start = e2e.proxy.log.stat().st_size
    for operation in operations:
        # call() runs within its iteration, so it sees that iteration's `who` (B023).
        for who, authorization in auths.items():

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def call(case) -> None:
                nonlocal sent
                sent += 1
                response = case.call(
                    base_url=e2e.proxy.url,
                    session=session,
                    headers={"Authorization": authorization},  # noqa: B023
                )
                assert (key not in response.text and UPSTREAM_KEY not in response.text) or (
                    # The one answer that shows a key is the one that issues it.
                    case.method == "POST" and response.status_code == 201
                ), f"a key in the answer to {case.method} {case.path} ({who})"  # noqa: B023
                case.validate_response(response, checks=CHECKS)

            call()
    print(
        f"schemathesis: {sent} requests, {len(operations)} operations, "
        f"{time.monotonic() - started:.1f} s"
    )
    with open(e2e.proxy.log, "rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace")
    assert "Traceback" not in written, written[-3000:]
    assert key not in written and UPSTREAM_KEY not in written
