"""Budget alerts and expiry warnings through a running proxy: the official SDK spends, a local
receiver takes the webhooks, Django's file backend the emails.

Each test starts its own proxy with the alert settings it needs (the session's proxy sends no
alerts: tests.servers). The two-process test needs PostgreSQL and Redis.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from tests.e2e import records_for, wait_for
from tests.servers import running, start_proxy

SECRET = "whsec-test-0123456789abcdef"
HELLO = [{"role": "user", "content": "Count to three"}]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
FIELDS = {"type", "threshold", "scope", "username", "team", "key_prefix", "period",
          "period_start", "budget_usd", "spent_usd", "sent_at"}  # fmt: skip


def alert_env(receiver, **extra: str) -> dict[str, str]:
    return {
        "ALERT_WEBHOOK_URL": receiver.url,
        "ALERT_WEBHOOK_SECRET": SECRET,
        "ALERT_DELIVERY_SECONDS": "0.2",
        "ALERT_RETRY_SECONDS": "0.2",
        **extra,
    }


def client_of(proxy, secret: str):
    from openai import OpenAI

    return OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)


def chat(client, *, max_tokens: int = 20, **fake: object):
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        max_tokens=max_tokens,
        extra_body={"fake": {"completion_tokens": max_tokens, **fake}},
    )


def one_request_costs(e2e, proxy) -> Decimal:
    """What the 20-token request costs, learnt on a key of its own with no budget."""
    secret = e2e.key("probe")
    chat(client_of(proxy, secret))
    return records_for(secret, 1)[0].cost_usd


def signed_by(hit: dict, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), hit["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(hit["headers"]["X-Proxy-Signature"], expected)


def test_spending_through_50_then_100_percent_sends_one_signed_webhook_per_threshold(e2e, receiver):
    from alerts.messages import exact_usd
    from alerts.models import Alert, AlertDelivery
    from keys.models import ApiKey, QuotaLedger, key_hash, period_start

    with running(start_proxy(e2e.upstream.url, e2e.proxy.log.parent,
                             extra_env=alert_env(receiver))) as proxy:  # fmt: skip
        cost = one_request_costs(e2e, proxy)
        # The key's budget is two such requests, the user's four.
        secret = e2e.key("carol", budget_usd=2 * cost, period="day",
                         user_limits={"budget_usd": 4 * cost, "period": "month"})  # fmt: skip
        client = client_of(proxy, secret)
        chat(client)  # the key at exactly 50%, the user at 25%
        wait_for(lambda: len(receiver.hits) == 1, what="the 50% webhook")
        # Capped at one output token, but billed for 20 (usage is what OpenAI charges): the key
        # goes from 50% to 100% in one request, past 80% on the way; the user reaches 50%.
        chat(client, max_tokens=1, usage_completion_tokens=20)
        wait_for(lambda: len(receiver.hits) == 4, what="the 80%, 100% and user webhooks")
        time.sleep(1)  # a second webhook for any threshold would arrive now
        records = records_for(secret, 2)
        assert secret not in proxy.output()

    bodies = receiver.bodies()
    assert len(bodies) == 4
    key = ApiKey.objects.get(key_hash=key_hash(secret))
    day = period_start("day", records[0].created_at).isoformat()
    month = period_start("month", records[0].created_at).isoformat()
    ledger = QuotaLedger.objects.get(api_key=key)
    assert ledger.spent_usd == sum(r.cost_usd for r in records) == 2 * cost
    # Money as the exact Decimal, as a string: "0.0000135" and "0.000027" at today's rates.
    half, whole = exact_usd(cost), exact_usd(2 * cost)
    assert Decimal(half) == cost and Decimal(whole) == 2 * cost
    assert {(b["scope"], b["threshold"]) for b in bodies} == {
        ("key", 50), ("key", 80), ("key", 100), ("user", 50),
    }  # fmt: skip
    by = {(b["scope"], b["threshold"]): b for b in bodies}
    assert by[("key", 50)] == {
        **by[("key", 50)],
        "type": "budget.threshold",
        "username": "carol",
        "key_prefix": key.prefix,
        "period": "day",
        "period_start": day,
        "budget_usd": whole,
        "spent_usd": half,
    }
    for threshold in (80, 100):
        assert by[("key", threshold)]["spent_usd"] == whole
    assert by[("user", 50)] == {
        **by[("user", 50)],
        "key_prefix": None,
        "period": "month",
        "period_start": month,
        "budget_usd": exact_usd(4 * cost),
        "spent_usd": whole,
    }
    for hit, body in zip(receiver.hits, bodies, strict=True):
        assert set(body) == FIELDS
        assert signed_by(hit, SECRET)
        assert not signed_by(hit, SECRET + "x")
        assert dt.datetime.fromisoformat(body["sent_at"]).tzinfo is not None
        assert hit["headers"]["Content-Type"] == "application/json"
        assert secret not in hit["body"].decode()
    assert Alert.objects.filter(status="sent").count() == 4
    assert AlertDelivery.objects.filter(channel="webhook", ok=True).count() == 4
    # The webhook URL's path and query can be a secret: the admin shows the host only.
    assert set(AlertDelivery.objects.values_list("target", flat=True)) == {
        receiver.url.split("/hooks")[0]
    }


def emails_in(folder: Path) -> list[email.message.EmailMessage]:
    """The messages Django's file backend wrote (one file per connection, a line of dashes
    after each message)."""
    text = "".join(p.read_text() for p in sorted(folder.iterdir()))
    return [
        email.message_from_string(part.strip() + "\n", policy=email.policy.default)
        for part in text.split("-" * 79)
        if part.strip()
    ]


def test_a_receiver_that_fails_twice_gets_three_tries_and_one_email(e2e, receiver, tmp_path):
    from alerts.messages import exact_usd
    from alerts.models import Alert, AlertDelivery
    from keys.models import ApiKey, key_hash

    receiver.fail_first = 2
    mail = tmp_path / "mail"
    env = alert_env(
        receiver,
        ALERT_THRESHOLDS="50",
        ALERT_EMAIL_TO="ops@example.com,finance@example.com",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail),
    )
    with running(start_proxy(e2e.upstream.url, e2e.proxy.log.parent, extra_env=env)) as proxy:
        cost = one_request_costs(e2e, proxy)
        secret = e2e.key("dora", budget_usd=2 * cost)
        user = ApiKey.objects.get(key_hash=key_hash(secret)).user
        user.email = "dora@example.com"
        user.save()
        chat(client_of(proxy, secret))
        wait_for(lambda: Alert.objects.filter(status="sent").exists(), timeout=15, what="delivery")
        time.sleep(1)

    alert = Alert.objects.get()
    assert (alert.attempts, alert.status, alert.last_error) == (3, "sent", "")
    tries = list(AlertDelivery.objects.filter(channel="webhook").order_by("attempt"))
    assert [(d.attempt, d.ok, d.status_code) for d in tries] == [
        (1, False, 500), (2, False, 500), (3, True, 204),
    ]  # fmt: skip
    # Tried again after ALERT_RETRY_SECONDS (0.2 s), then twice that.
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(tries)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps
    assert tries[0].error == "HTTP 500"
    assert len(receiver.hits) == 3
    # The three bodies are the same alert, each signed with the time of its own try.
    bodies = receiver.bodies()
    assert len({b["sent_at"] for b in bodies}) == 3
    assert all(signed_by(hit, SECRET) for hit in receiver.hits)
    assert all({**b, "sent_at": None} == {**bodies[0], "sent_at": None} for b in bodies)

    # The email went once, on the first try, to the user and to ALERT_EMAIL_TO.
    emails = AlertDelivery.objects.filter(channel="email")
    assert [(d.attempt, d.ok) for d in emails] == [(1, True)]
    assert emails[0].target == "dora@example.com, ops@example.com, finance@example.com"
    [message] = emails_in(mail)
    assert message["To"] == "dora@example.com, ops@example.com, finance@example.com"
    assert (
        message["Subject"].strip()
        == f"[OpenAI proxy] Key {alert.key_prefix}… has used 50% of its total budget"
    )
    text = message.get_content()
    assert f"has spent ${exact_usd(cost)} of its ${exact_usd(2 * cost)} total budget" in text
    assert secret not in message.as_string()


def test_an_alert_that_never_gets_through_is_marked_failed_after_the_maximum(e2e, receiver):
    from alerts.models import Alert, AlertDelivery

    receiver.fail_first = 100
    env = alert_env(receiver, ALERT_THRESHOLDS="50", ALERT_MAX_ATTEMPTS="3")
    with running(start_proxy(e2e.upstream.url, e2e.proxy.log.parent, extra_env=env)) as proxy:
        cost = one_request_costs(e2e, proxy)
        secret = e2e.key("erin", budget_usd=2 * cost)
        chat(client_of(proxy, secret))
        wait_for(lambda: Alert.objects.filter(status="failed").exists(), timeout=15,
                 what="giving up")  # fmt: skip
        time.sleep(1.5)  # no fourth try

    alert = Alert.objects.get()
    assert (alert.attempts, alert.last_error) == (3, "webhook: HTTP 500")
    assert AlertDelivery.objects.filter(ok=False).count() == 3 == len(receiver.hits)


def test_a_webhook_that_does_not_answer_in_time_is_a_failed_try(e2e, receiver):
    from alerts.models import Alert, AlertDelivery

    receiver.stall = True
    env = alert_env(receiver, ALERT_THRESHOLDS="50", ALERT_WEBHOOK_TIMEOUT="0.5",
                    ALERT_MAX_ATTEMPTS="2")  # fmt: skip
    with running(start_proxy(e2e.upstream.url, e2e.proxy.log.parent, extra_env=env)) as proxy:
        cost = one_request_costs(e2e, proxy)
        secret = e2e.key("ida", budget_usd=2 * cost)
        chat(client_of(proxy, secret))
        wait_for(lambda: Alert.objects.filter(status="failed").exists(), timeout=15,
                 what="giving up")  # fmt: skip

    assert Alert.objects.get().last_error == "webhook: no answer in 0.5 s"
    assert [d.ok for d in AlertDelivery.objects.all()] == [False, False]


def test_a_process_with_sending_off_leaves_its_alerts_pending(e2e):
    from alerts.models import Alert

    # The session's proxy runs with ALERT_DELIVERY_SECONDS=0 (tests.servers).
    cost = one_request_costs(e2e, e2e.proxy)
    secret = e2e.key("jo", budget_usd=2 * cost)
    chat(client_of(e2e.proxy, secret))
    records_for(secret, 1)
    time.sleep(1)
    alert = Alert.objects.get()
    assert (alert.threshold, alert.status, alert.attempts) == (50, "pending", 0)


def test_a_stalled_webhook_receiver_does_not_slow_requests(e2e, receiver):
    from alerts.models import Alert

    receiver.stall = True  # holds each webhook for 30 s
    env = alert_env(receiver, ALERT_THRESHOLDS="1", ALERT_WEBHOOK_TIMEOUT="60")
    with running(start_proxy(e2e.upstream.url, e2e.proxy.log.parent, extra_env=env)) as proxy:
        cost = one_request_costs(e2e, proxy)
        secret = e2e.key("fay", budget_usd=50 * cost)
        client = client_of(proxy, secret)
        chat(client)  # 2% of the budget: past the 1% threshold
        wait_for(lambda: receiver.hits, what="the webhook to reach the stalled receiver")
        took = []
        for _ in range(10):
            started = time.monotonic()
            chat(client)
            took.append(time.monotonic() - started)
        assert receiver.answered == 0  # the webhook is still held
        assert Alert.objects.get().status == "pending"
        receiver.released.set()
    assert max(took) < 1.0, took


def test_a_key_about_to_expire_is_warned_once(e2e, receiver):
    from alerts.models import Alert
    from keys.models import ApiKey, key_hash
    from keys.services import key_revoke

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    soon = e2e.key("gus", expires_at=now + dt.timedelta(days=2))
    e2e.key("gus", expires_at=now + dt.timedelta(days=10))  # not yet
    revoked = e2e.key("gus", expires_at=now + dt.timedelta(days=1))
    key_revoke(api_key=ApiKey.objects.get(key_hash=key_hash(revoked)))
    env = alert_env(receiver, ALERT_EXPIRY_DAYS="7", ALERT_EXPIRY_CHECK_SECONDS="0.3")
    with running(start_proxy(e2e.upstream.url, e2e.proxy.log.parent, extra_env=env)):
        wait_for(lambda: receiver.hits, what="the expiry warning")
        time.sleep(1.5)  # several checks later: still one

    key = ApiKey.objects.get(key_hash=key_hash(soon))
    [hit] = receiver.hits
    body = json.loads(hit["body"])
    assert set(body) == {"type", "key_prefix", "username", "expires_at", "sent_at"}
    assert body == {
        **body,
        "type": "key.expiring",
        "key_prefix": key.prefix,
        "username": "gus",
        "expires_at": key.expires_at.isoformat(),
    }
    assert signed_by(hit, SECRET)
    assert Alert.objects.get().api_key == key


def post_chat(url: str, secret: str) -> int:
    import urllib.error
    import urllib.request

    body = {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 20,
            "fake": {"completion_tokens": 20, "latency_ms": 300}}  # fmt: skip
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_processes_make_and_send_each_alert_once(e2e, server_logs, receiver):
    from django.db import connection

    from alerts.models import Alert, AlertDelivery
    from keys.models import QuotaLedger, key_hash

    if connection.vendor != "postgresql" or not REDIS_URL:
        pytest.skip("needs PostgreSQL (DATABASE_URL) and Redis (TEST_REDIS_URL); .ci/run sets both")
    env = alert_env(receiver, CACHE_URL=REDIS_URL, ALERT_DELIVERY_SECONDS="0.05")
    with (
        running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as a,
        running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as b,
    ):
        cost = one_request_costs(e2e, a)
        secret = e2e.key("hal", budget_usd=20 * cost)
        # 40 requests at once through both: the budget takes some of them, whose settlements
        # race each other past 50%, 80% and (maybe) 100% in both processes.
        with ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(lambda i: post_chat((a, b)[i % 2].url, secret), range(40)))
        assert statuses.count(200) >= 10
        records_for(secret, 40)
        wait_for(lambda: not Alert.objects.filter(status="pending").exists(), what="delivery")
        time.sleep(1)

    alerts = list(Alert.objects.filter(kind="budget.threshold"))
    thresholds = [a.threshold for a in alerts]
    spent = QuotaLedger.objects.get(api_key__key_hash=key_hash(secret)).spent_usd
    # Exactly the thresholds the spend reached (50% at least), one row each.
    reached = [t for t in (50, 80, 100) if spent * 100 >= 20 * cost * t]
    assert 50 in reached
    assert sorted(thresholds) == reached
    sent = sorted(body["threshold"] for body in receiver.bodies())
    assert sent == sorted(thresholds)  # one webhook each
    for alert in alerts:
        assert AlertDelivery.objects.filter(alert=alert).count() == 1


def test_a_team_budget_alert_goes_once_to_the_team_admins_and_the_webhook(e2e, receiver, tmp_path):
    from django.contrib.auth import get_user_model

    from alerts.messages import exact_usd
    from alerts.models import Alert
    from keys.services import team_create, team_member_set

    mail = tmp_path / "mail"
    env = alert_env(
        receiver,
        ALERT_THRESHOLDS="50,100",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mail),
    )
    with running(start_proxy(e2e.upstream.url, e2e.proxy.log.parent, extra_env=env)) as proxy:
        cost = one_request_costs(e2e, proxy)
        team = team_create(name="search", budget_usd=4 * cost, period="month")
        users = get_user_model().objects
        secrets = [e2e.key(name) for name in ("lead", "dev1", "dev2")]
        for name in ("lead", "dev1", "dev2"):
            user = users.get(username=name)
            user.email = f"{name}@example.com"
            user.save()
            team_member_set(team=team, user=user, is_admin=name == "lead")
        # Two members spend half the team's budget together: one alert, not one per member.
        chat(client_of(proxy, secrets[1]))
        chat(client_of(proxy, secrets[2]))
        wait_for(lambda: len(receiver.hits) == 1, what="the team's 50% webhook")
        time.sleep(1)
        assert len(receiver.hits) == 1

    [alert] = Alert.objects.filter(scope="team")
    assert (alert.threshold, alert.team_id, alert.status) == (50, team.pk, "sent")
    [body] = receiver.bodies()
    assert set(body) == FIELDS
    assert body == {
        **body,
        "scope": "team",
        "team": "search",
        "username": None,
        "key_prefix": None,
        "budget_usd": exact_usd(4 * cost),
        "spent_usd": exact_usd(2 * cost),
    }
    # Emailed to the team's admin only: not to the members who spent it.
    [message] = emails_in(mail)
    assert message["To"] == "lead@example.com"
    assert "Team search has used 50% of its month's budget" in message["Subject"]
