"""Every CSV a user or an operator downloads opens in a spreadsheet as text: a model name or a
username a client chose never runs as a formula (OWASP "CSV injection"), whichever export
wrote it (the API, the admin's button and action, the dashboards' tables)."""

from __future__ import annotations

import csv
import io

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.test import AsyncRequestFactory

from keys.services import key_issue
from usage import exports
from usage.apis import UsageRecordOutputSerializer
from usage.selectors import usage_records_for

LINK = '=HYPERLINK("http://x","y")'
SUM = "@SUM(1)"
# What a spreadsheet runs as a formula when a cell starts with it.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@pytest.fixture(autouse=True)
def _fresh_cache():
    # The dashboards cache sums of closed days.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def hostile(alice_key, make_record):
    """Alice asked for two models named like formulas; the upstream answered with them too."""
    alice, secret = alice_key
    for name in (LINK, SUM):
        make_record(alice, model=name, response_model=name)
    return alice, secret


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def assert_inert(rows: list[list[str]], *expected: str) -> None:
    """No cell runs as a formula, and each hostile name is there, shown as the text it was."""
    live = [cell for row in rows for cell in row if cell.startswith(FORMULA_START)]
    assert live == []
    found = {cell for row in rows for cell in row}
    for name in expected:
        assert "'" + name in found


def streamed(response) -> str:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    return b"".join(response.streaming_content).decode()


def test_the_api_export(hostile):
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {hostile[1]}")
    rows = cells(streamed(api.get("/api/usage/", {"format": "csv"})))

    assert_inert(rows, LINK, SUM)
    columns = rows[0]
    models = sorted(row[columns.index("model")] for row in rows[1:])
    assert models == sorted(["'" + LINK, "'" + SUM])


def test_the_api_export_served_by_asgi(hostile):
    request = AsyncRequestFactory().get("/api/usage/", {"format": "csv"})
    response = exports.csv_streaming_response(
        request, usage_records_for(None), UsageRecordOutputSerializer
    )

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response])

    assert_inert(cells(async_to_sync(read)().decode()), LINK, SUM)


def test_the_admin_export_button_and_action(admin_client, hostile):
    records = "/admin/usage/usagerecord/"
    assert_inert(cells(streamed(admin_client.get(f"{records}export/"))), LINK, SUM)

    from usage.models import UsageRecord

    selected = list(UsageRecord.objects.values_list("pk", flat=True))
    action = {"action": "export_csv", "_selected_action": selected}
    assert_inert(cells(streamed(admin_client.post(records, action))), LINK, SUM)


@pytest.mark.parametrize("url", ["/dashboard/usage.csv", "/dashboard/users/alice/usage.csv"])
def test_the_dashboard_table_by_model(client, staff, hostile, url):
    client.force_login(staff)
    response = client.get(url, {"group_by": "model"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = cells(response.content.decode())

    assert_inert(rows, LINK, SUM)
    assert sorted(row[0] for row in rows[1:]) == sorted(["'" + LINK, "'" + SUM])


def test_a_users_own_dashboard_table_by_model(client, hostile, django_user_model):
    client.force_login(django_user_model.objects.get(username="alice"))
    rows = cells(client.get("/dashboard/usage.csv", {"group_by": "model"}).content.decode())

    assert_inert(rows, LINK, SUM)


def test_the_dashboard_table_by_user(client, staff, make_record):
    # `create_api_key` takes any username, so a username can look like a formula too.
    for name in (LINK, SUM):
        api_key, _ = key_issue(username=name)
        make_record(api_key)
    client.force_login(staff)
    rows = cells(client.get("/dashboard/usage.csv", {"group_by": "user"}).content.decode())

    assert_inert(rows, LINK, SUM)
    assert sorted(row[0] for row in rows[1:]) == sorted(["'" + LINK, "'" + SUM])
    # The username is in the download's file name too, defused there as well.
    own = client.get(f"/dashboard/users/{SUM}/usage.csv", {"group_by": "model"})
    assert own["Content-Disposition"].startswith('attachment; filename="usage-_SUM_1_-by-model-')
