"""Password logins resist guessing (django-axes, proxyserver.login_lockout).

The admin, the dashboard login, HTTP Basic on /api/ and the original /create_api_key route
lock an account, and an address, out after AXES_FAILURE_LIMIT failures; they say so (a page,
or OpenAI's error shape with 429 and Retry-After) and open again after the cool-off or when
staff reset it. Proxy keys on /v1 are not logins and keep working.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.cookiejar
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from itertools import count

import pytest
import time_machine
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from keys.models import ApiKey

LIMIT = 5  # AXES_FAILURE_LIMIT's default
COOL_OFF = dt.timedelta(minutes=15)  # AXES_COOLOFF_MINUTES's default
HOME = "127.0.0.1"
_names = count()


@pytest.fixture(autouse=True)
def _fast_hashes(request, settings):
    # Each refused guess checks a password; the default hasher makes that a good part of a
    # second. (Not for the running server, which checks passwords with its own settings.)
    if "e2e" not in request.fixturenames:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    name: str
    login: Callable[..., object]  # (username, password, ip) -> response
    ok_status: int
    refused_status: int
    json: bool


def _admin(username: str, password: str, ip: str = HOME):
    return Client().post(
        "/admin/login/", {"username": username, "password": password}, REMOTE_ADDR=ip
    )


def _dashboard(username: str, password: str, ip: str = HOME):
    return Client().post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=ip
    )


def _api_basic(username: str, password: str, ip: str = HOME):
    return Client().get("/api/usage/", HTTP_AUTHORIZATION=basic(username, password), REMOTE_ADDR=ip)


def _create_api_key(username: str, password: str, ip: str = HOME):
    # The original route with its form fields; each call asks for a new user's key.
    return Client().post(
        f"/create_api_key/new-user-{next(_names)}",
        {"user": username, "password": password},
        REMOTE_ADDR=ip,
    )


ENTRY_POINTS = [
    EntryPoint("admin", _admin, ok_status=302, refused_status=200, json=False),
    EntryPoint("dashboard", _dashboard, ok_status=302, refused_status=200, json=False),
    EntryPoint("api_basic", _api_basic, ok_status=200, refused_status=401, json=True),
    EntryPoint("create_api_key", _create_api_key, ok_status=201, refused_status=401, json=True),
]
each_entry_point = pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.name)


def assert_locked_out(entry: EntryPoint, response) -> None:
    assert response.status_code == 429, (response.status_code, response.content[:300])
    assert response["Retry-After"] == "900"
    if entry.json:
        error = response.json()["error"]
        assert error["code"] == "login_locked_out" and error["type"] == "requests"
        assert error["param"] is None
        assert "locked for 15 minutes" in error["message"]
        assert "Ask an operator" in error["message"]
        assert response["x-should-retry"] == "false"
    else:
        page = " ".join(response.content.decode().split())
        assert "Login locked" in page and "Logins are locked for 15 minutes" in page
        assert "ask an operator" in page


def assert_logged_in(entry: EntryPoint, response) -> None:
    assert response.status_code == entry.ok_status, (response.status_code, response.content[:300])


@each_entry_point
def test_thirty_wrong_passwords_lock_the_account_and_then_the_right_one_is_refused(entry, staff):
    answers = [entry.login("staff", f"guess-{i}") for i in range(30)]

    assert [a.status_code for a in answers[: LIMIT - 1]] == [entry.refused_status] * (LIMIT - 1)
    for answer in answers[LIMIT - 1 :]:
        assert_locked_out(entry, answer)
    assert_locked_out(entry, entry.login("staff", "staff-pass"))
    # Nothing was issued to a guesser, nor to the locked-out operator.
    assert not ApiKey.objects.exists()


@each_entry_point
def test_guessing_other_accounts_from_one_address_locks_that_address(entry, staff):
    for i in range(LIMIT):
        entry.login(f"someone-{i}", "guess", ip="203.0.113.7")

    assert_locked_out(entry, entry.login("staff", "staff-pass", ip="203.0.113.7"))
    # The account itself was not guessed at: from elsewhere it logs in.
    assert_logged_in(entry, entry.login("staff", "staff-pass", ip="198.51.100.1"))


@each_entry_point
def test_guessing_one_account_from_many_addresses_locks_that_account(entry, staff):
    for i in range(LIMIT):
        entry.login("staff", "guess", ip=f"203.0.113.{10 + i}")

    assert_locked_out(entry, entry.login("staff", "staff-pass", ip="198.51.100.1"))


@each_entry_point
def test_the_right_password_works_again_after_staff_reset_the_account(entry, staff):
    for i in range(30):
        entry.login("staff", f"guess-{i}")
    assert_locked_out(entry, entry.login("staff", "staff-pass"))

    out = io.StringIO()
    call_command("axes_reset_username", "staff", stdout=out)

    assert "attempts removed" in out.getvalue()
    assert_logged_in(entry, entry.login("staff", "staff-pass"))


@each_entry_point
def test_an_address_works_again_after_staff_reset_it(entry, staff):
    for i in range(LIMIT):
        entry.login(f"someone-{i}", "guess", ip="203.0.113.7")
    assert_locked_out(entry, entry.login("staff", "staff-pass", ip="203.0.113.7"))

    call_command("axes_reset_ip", "203.0.113.7", stdout=io.StringIO())

    assert_logged_in(entry, entry.login("staff", "staff-pass", ip="203.0.113.7"))


@each_entry_point
def test_the_right_password_works_again_after_the_cool_off(entry, staff):
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        for i in range(30):
            entry.login("staff", f"guess-{i}")
    # Each try while locked starts the cool-off again, as the lockout message says.
    with time_machine.travel(start + COOL_OFF - dt.timedelta(seconds=30), tick=False):
        assert_locked_out(entry, entry.login("staff", "staff-pass"))
    again = start + 2 * COOL_OFF - dt.timedelta(seconds=40)
    with time_machine.travel(again, tick=False):
        assert_locked_out(entry, entry.login("staff", "staff-pass"))

    with time_machine.travel(again + COOL_OFF + dt.timedelta(seconds=1), tick=False):
        assert_logged_in(entry, entry.login("staff", "staff-pass"))


def test_staff_unlock_an_account_in_the_admin(staff, django_user_model):
    operator = django_user_model.objects.create_superuser("operator", "op@example.com", "op-pass")
    for i in range(LIMIT):
        _admin("staff", f"guess-{i}")
    assert_locked_out(ENTRY_POINTS[0], _admin("staff", "staff-pass"))

    admin = Client()
    admin.force_login(operator)
    listing = admin.get("/admin/axes/accessattempt/", {"locked_out": "yes", "q": "staff"})
    assert listing.status_code == 200 and "Locked Out" in listing.content.decode()
    ids = [str(pk) for pk in AccessAttempt.objects.values_list("pk", flat=True)]
    deleted = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )

    assert deleted.status_code == 302 and not AccessAttempt.objects.exists()
    assert_logged_in(ENTRY_POINTS[0], _admin("staff", "staff-pass"))


def test_basic_failures_count_whatever_the_body(staff):
    # Axes reads the form body when it counts a failure; a body that cannot be read as one
    # (malformed JSON, over a thousand form fields) must not leave the failure uncounted.
    api, create = Client(), Client()
    for i in range(LIMIT - 1):
        refused = api.post(
            "/api/keys/",
            "{not json",
            content_type="application/json",
            HTTP_AUTHORIZATION=basic("staff", f"guess-{i}"),
        )
        assert refused.status_code == 401
    fields = "&".join(f"f{i}=1" for i in range(1001))
    last = create.post(
        "/create_api_key/mallory",
        fields,
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=basic("staff", "guess-last"),
    )

    assert_locked_out(ENTRY_POINTS[3], last)
    assert_locked_out(ENTRY_POINTS[2], _api_basic("staff", "staff-pass"))


def test_a_long_basic_username_is_refused_not_an_error(db):
    response = _api_basic("x" * 300, "guess")

    assert response.status_code == 401
    assert AccessAttempt.objects.get().username == "x" * 255


# --- Through the running server (ASGI: axes' async middleware, uvicorn's client address) ----


def _http(url: str, *, data: bytes | None = None, headers: dict | None = None, opener=None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _live_dashboard_login(url: str, username: str, password: str, forwarded_for: str):
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        _NoRedirect(),
    )
    headers = {"X-Forwarded-For": forwarded_for}
    _, _, page = _http(f"{url}/accounts/login/", headers=headers, opener=opener)
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    return _http(
        f"{url}/accounts/login/",
        data=form,
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
        opener=opener,
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_proxy_keys_on_v1_work_while_their_user_is_locked_out(
    e2e, fresh_key_caches, django_user_model
):
    secret = e2e.key("alice")
    alice = django_user_model.objects.get(username="alice")
    alice.set_password("alice-pass")
    alice.save()
    api = f"{e2e.proxy.url}/api/usage/"
    statuses = [
        _http(api, headers={"Authorization": basic("alice", f"guess-{i}")})[0] for i in range(LIMIT)
    ]
    status, headers, body = _http(api, headers={"Authorization": basic("alice", "alice-pass")})

    assert statuses == [401] * (LIMIT - 1) + [429]
    assert status == 429 and headers["Retry-After"] == "900"
    assert json.loads(body)["error"]["code"] == "login_locked_out"
    client = e2e.client(secret)
    assert client.models.list().data
    reply = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content


def test_behind_a_proxy_the_forwarded_client_is_locked_out_not_the_proxy(e2e, django_user_model):
    django_user_model.objects.create_user("dana", password="dana-pass")
    url = e2e.proxy.url
    # The test talks to uvicorn from 127.0.0.1, which FORWARDED_ALLOW_IPS trusts by default:
    # it stands for the reverse proxy here.
    for i in range(LIMIT - 1):
        status, _, _ = _live_dashboard_login(url, f"someone-{i}", "guess", "203.0.113.7")
        assert status == 200
    status, headers, page = _live_dashboard_login(url, "someone", "guess", "203.0.113.7")

    assert status == 429 and headers["Retry-After"] == "900"
    assert b"Login locked" in page and b"ask an operator" in page
    assert _live_dashboard_login(url, "dana", "dana-pass", "203.0.113.7")[0] == 429
    # Another client behind the same proxy logs in.
    assert _live_dashboard_login(url, "dana", "dana-pass", "198.51.100.1")[0] == 302
