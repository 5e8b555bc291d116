"""/api/keys/ and /api/users/<username>/limits/ as staff, key owners and strangers see them."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from keys.models import ApiKey, UserLimit, key_hash
from keys.services import key_issue

KEYS = "/api/keys/"


def basic(username: str, password: str) -> APIClient:
    client = APIClient()
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {token}")
    return client


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def staff_api(staff):
    return basic("staff", "staff-pass")


@pytest.fixture
def alice_login(alice_key):
    """Alice logged in with her password (not a key)."""
    alice = alice_key[0].user
    alice.set_password("alice-pass")
    alice.save()
    return basic("alice", "alice-pass")


def test_staff_issue_a_key_that_works_until_revoked(staff_api):
    response = staff_api.post(
        KEYS,
        {
            "username": "carol",
            "budget_usd": "5",
            "period": "month",
            "models": ["gpt-4o*"],
            "rpm": 60,
            "name": "carol's notebook",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["key"]
    assert secret.startswith("sk-proxy-") and len(secret) >= len("sk-proxy-") + 32
    assert secret.startswith(body["prefix"])
    assert body["username"] == "carol" and body["name"] == "carol's notebook"
    assert body["budget_usd"] == "5.00" and body["period"] == "month"
    assert body["models"] == ["gpt-4o*"] and body["rpm"] == 60 and body["status"] == "active"
    # Only the hash is stored, and no response carries it.
    stored = ApiKey.objects.get(pk=body["id"])
    assert stored.key_hash == key_hash(secret)
    assert stored.key_hash not in response.content.decode() and "key_hash" not in body

    assert bearer(secret).get("/api/usage/").status_code == 200
    # Never shown again: not in the key's page nor in the list.
    shown = staff_api.get(f"{KEYS}{body['id']}/").json()
    assert "key" not in shown and secret not in str(staff_api.get(KEYS).json())

    assert staff_api.delete(f"{KEYS}{body['id']}/").status_code == 204
    assert bearer(secret).get("/api/usage/").status_code == 401
    assert staff_api.get(f"{KEYS}{body['id']}/").json()["status"] == "revoked"


def test_models_may_be_a_comma_separated_string(staff_api):
    body = staff_api.post(
        KEYS, {"username": "dave", "models": "gpt-4o-mini, o3-mini"}, format="json"
    ).json()
    assert body["models"] == ["gpt-4o-mini", "o3-mini"]
    assert ApiKey.objects.get(pk=body["id"]).model_allowed("o3-mini")


def test_a_key_with_no_limits_has_none(staff_api):
    body = staff_api.post(KEYS, {"username": "erin"}, format="json").json()
    assert body["budget_usd"] is None and body["models"] == [] and body["period"] == "total"
    assert body["expires_at"] is None and body["log_bodies"] is None


def test_an_expiry_is_kept_and_a_past_one_refused(staff_api):
    future = (timezone.now() + dt.timedelta(days=30)).replace(microsecond=0)
    body = staff_api.post(
        KEYS, {"username": "fay", "expires_at": future.isoformat()}, format="json"
    ).json()
    assert dt.datetime.fromisoformat(body["expires_at"]) == future
    past = staff_api.post(
        KEYS, {"username": "fay", "expires_at": "2001-01-01T00:00:00Z"}, format="json"
    )
    assert past.status_code == 400 and "expires_at" in past.json()


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"username": "bad name!"},
        {"username": "gus", "budget_usd": "-1"},
        {"username": "gus", "budget_usd": "lots"},
        {"username": "gus", "budget_usd": "0.0000000000001"},
        {"username": "gus", "period": "fortnight"},
        {"username": "gus", "models": [1, 2]},
        {"username": "gus", "models": {"gpt-4o": True}},
        {"username": "gus", "rpm": -5},
        {"username": "gus", "tpm": 10**12},
        {"username": "gus", "token_limit": "many"},
    ],
)
def test_bad_input_is_a_400_naming_the_field(staff_api, payload):
    response = staff_api.post(KEYS, payload, format="json")
    assert response.status_code == 400
    assert set(response.json()) == (set(payload) - {"username"} or {"username"})
    assert not ApiKey.objects.filter(user__username="gus").exists()


def test_only_staff_logged_in_with_a_password_may_issue(alice_key, alice_login, staff):
    payload = {"username": "mallory"}
    assert alice_login.post(KEYS, payload, format="json").status_code == 403
    assert bearer(alice_key[1]).post(KEYS, payload, format="json").status_code == 403
    # A staff member's own proxy key is a key, not a login.
    _, staff_secret = key_issue(username="staff")
    assert bearer(staff_secret).post(KEYS, payload, format="json").status_code == 403
    assert APIClient().post(KEYS, payload, format="json").status_code == 401
    assert not ApiKey.objects.filter(user__username="mallory").exists()


def test_staff_list_every_key_and_users_their_own(staff_api, alice_key, bob_key, alice_login):
    everyone = staff_api.get(KEYS).json()
    assert everyone["count"] == 2
    assert {k["username"] for k in everyone["results"]} == {"alice", "bob"}
    for client in (alice_login, bearer(alice_key[1])):
        mine = client.get(KEYS).json()
        assert [k["id"] for k in mine["results"]] == [alice_key[0].pk]
    assert staff_api.get(KEYS, {"username": "bob"}).json()["results"][0]["name"] == "bob ci"


def test_the_list_filters_active_keys(staff_api, alice_key, bob_key):
    staff_api.delete(f"{KEYS}{bob_key[0].pk}/")
    active = staff_api.get(KEYS, {"active": "true"}).json()["results"]
    inactive = staff_api.get(KEYS, {"active": "false"}).json()["results"]
    assert [k["username"] for k in active] == ["alice"]
    assert [k["username"] for k in inactive] == ["bob"]
    assert staff_api.get(KEYS, {"active": "sometimes"}).status_code == 400


def test_someone_elses_key_is_not_found(alice_key, bob_key, alice_login):
    assert alice_login.get(f"{KEYS}{bob_key[0].pk}/").status_code == 404
    assert alice_login.delete(f"{KEYS}{bob_key[0].pk}/").status_code == 404
    assert bearer(bob_key[1]).get("/api/usage/").status_code == 200  # bob's key still works
    assert alice_login.get(f"{KEYS}{alice_key[0].pk}/").json()["name"] == "alice laptop"


def test_a_user_may_revoke_their_own_key(alice_key, alice_login):
    assert alice_login.delete(f"{KEYS}{alice_key[0].pk}/").status_code == 204
    assert bearer(alice_key[1]).get("/api/usage/").status_code == 401


def test_staff_change_limits_and_null_removes_one(staff_api, bob_key):
    url = f"{KEYS}{bob_key[0].pk}/"
    body = staff_api.patch(
        url,
        {"budget_usd": "2.50", "rpm": 10, "models": "gpt-4o", "name": "bob ci 2"},
        format="json",
    ).json()
    assert body["budget_usd"] == "2.50" and body["rpm"] == 10 and body["name"] == "bob ci 2"
    assert body["models"] == ["gpt-4o"] and body["period"] == "total"  # untouched
    body = staff_api.patch(url, {"budget_usd": None}, format="json").json()
    assert body["budget_usd"] is None and body["rpm"] == 10
    assert ApiKey.objects.get(pk=bob_key[0].pk).budget_usd is None


def test_only_staff_change_limits(alice_key, alice_login):
    url = f"{KEYS}{alice_key[0].pk}/"
    assert alice_login.patch(url, {"budget_usd": "1000"}, format="json").status_code == 403
    assert bearer(alice_key[1]).patch(url, {"rpm": 1}, format="json").status_code == 403
    assert ApiKey.objects.get(pk=alice_key[0].pk).budget_usd is None


def test_a_bad_limit_change_is_a_400(staff_api, bob_key):
    response = staff_api.patch(f"{KEYS}{bob_key[0].pk}/", {"period": "year"}, format="json")
    assert response.status_code == 400 and "period" in response.json()
    assert staff_api.patch(f"{KEYS}999999/", {"rpm": 1}, format="json").status_code == 404


def test_staff_can_expire_a_key_at_once(staff_api, alice_key):
    assert bearer(alice_key[1]).get("/api/usage/").status_code == 200
    past = (timezone.now() - dt.timedelta(minutes=1)).isoformat()
    body = staff_api.patch(f"{KEYS}{alice_key[0].pk}/", {"expires_at": past}, format="json").json()
    assert body["status"] == "expired"
    response = bearer(alice_key[1]).get("/api/usage/")
    assert response.status_code == 401 and "expired" in response.json()["detail"]


# --- user limits ---------------------------------------------------------------------------


def test_staff_read_and_set_a_users_limits(staff_api, alice_key):
    url = "/api/users/alice/limits/"
    empty = staff_api.get(url).json()
    assert empty == {
        "username": "alice",
        "budget_usd": None,
        "period": "total",
        "budget_mode": "",
        "models": [],
        "rpm": None,
        "tpm": None,
        "max_concurrent": None,
        "token_limit": None,
        "request_limit": None,
    }
    body = staff_api.put(
        url,
        {"budget_usd": "20", "period": "week", "models": ["gpt-4o-mini"], "tpm": 1000},
        format="json",
    ).json()
    assert body["budget_usd"] == "20.00" and body["period"] == "week" and body["tpm"] == 1000
    limit = UserLimit.objects.get(user__username="alice")
    assert limit.budget_usd == Decimal("20") and limit.allowed_models == "gpt-4o-mini"
    assert staff_api.get(url).json() == body

    # PUT replaces: what is left out is no longer limited.
    body = staff_api.put(url, {"rpm": 5}, format="json").json()
    assert body["budget_usd"] is None and body["period"] == "total" and body["rpm"] == 5
    assert body["models"] == [] and body["tpm"] is None


def test_user_limits_are_for_staff_only(alice_key, alice_login, staff_api):
    url = "/api/users/alice/limits/"
    assert alice_login.get(url).status_code == 403
    assert alice_login.put(url, {"budget_usd": "999"}, format="json").status_code == 403
    assert bearer(alice_key[1]).get(url).status_code == 403
    assert APIClient().get(url).status_code == 401
    assert staff_api.get("/api/users/nobody/limits/").status_code == 404
    assert staff_api.put(url, {"budget_usd": "-3"}, format="json").status_code == 400


DEEP_JSON = "[" * 10_000 + "]" * 10_000


def test_json_nested_too_deeply_is_a_400_not_a_500(staff_api, client):
    answer = staff_api.post("/api/keys/", DEEP_JSON, content_type="application/json")
    assert answer.status_code == 400
    # The original proxy's route reads the body before anyone has logged in.
    legacy = client.post("/create_api_key/zed", DEEP_JSON, content_type="application/json")
    assert legacy.status_code == 401
    assert legacy.json()["error"]["code"] == "invalid_admin_credentials"


def test_a_key_id_past_the_column_is_not_found(staff_api):
    assert staff_api.get("/api/keys/99999999999999999999/").status_code == 404


def test_the_legacy_route_refuses_a_username_no_user_can_have(staff, client):
    auth = "Basic " + base64.b64encode(b"staff:staff-pass").decode()
    for name in ("a%00b", "x" * 151):
        answer = client.post(f"/create_api_key/{name}", HTTP_AUTHORIZATION=auth)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_username"
    nul_password = "Basic " + base64.b64encode(b"staff:staff\x00pass").decode()
    assert client.post("/create_api_key/zed", HTTP_AUTHORIZATION=nul_password).status_code == 401
