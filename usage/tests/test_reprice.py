"""`manage.py reprice` end to end: records billed through the running proxy at a wrong price
are corrected, with their rollups and their budget ledgers, after the price is fixed."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.e2e import records_for

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]
MILLION = Decimal(1_000_000)


def _books(secret: str):
    from keys.models import ApiKey, QuotaLedger, key_hash
    from usage.models import UsageDaily

    api_key = ApiKey.objects.get(key_hash=key_hash(secret))
    key_ledger = QuotaLedger.objects.get(api_key=api_key)
    user_ledger = QuotaLedger.objects.get(user=api_key.user)
    daily = sum((d.cost_usd for d in UsageDaily.objects.filter(api_key=api_key)), Decimal(0))
    return key_ledger.spent_usd, user_ledger.spent_usd, daily


def test_reprice_corrects_records_rollups_and_ledgers_after_a_wrong_price(e2e):
    from usage.models import ModelPrice

    # The operator typed the input price of gpt-4o-mini's snapshot (what OpenAI answers
    # with, so what is billed) ten times too high.
    row = ModelPrice.objects.filter(model="gpt-4o-mini-2024-07-18").latest("effective_from")
    right_input = row.input_per_1m
    ModelPrice.objects.filter(pk=row.pk).update(input_per_1m=right_input * 10)
    secret = e2e.key(budget_usd="1", user_limits={"budget_usd": Decimal("2")})
    other = e2e.key("bob")  # another user's records of another model stay as they are
    client = e2e.client(secret)
    answers = [
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=30)
        for _ in range(3)
    ]
    e2e.client(other).chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=30)
    records = records_for(secret, 3)
    [bob_record] = records_for(other, 1)
    billed = sum((r.cost_usd for r in records), Decimal(0))
    assert all(r.price_id == row.pk for r in records)  # each record keeps its price row
    assert _books(secret) == (billed, billed, billed)

    ModelPrice.objects.filter(pk=row.pk).update(input_per_1m=right_input)  # corrected
    since = (records[0].created_at - dt.timedelta(minutes=1)).isoformat()

    dry = io.StringIO()
    call_command("reprice", "--from", since, "--model", "gpt-4o-mini", "--dry-run", stdout=dry)
    assert "3 would change" in dry.getvalue()
    assert _books(secret) == (billed, billed, billed)  # a dry run changes nothing

    out = io.StringIO()
    call_command("reprice", "--from", since, "--model", "gpt-4o-mini", stdout=out)

    right = [
        (a.usage.prompt_tokens * right_input + a.usage.completion_tokens * row.output_per_1m)
        / MILLION
        for a in answers
    ]
    fixed = records_for(secret, 3)
    assert [r.cost_usd for r in fixed] == right
    total = sum(right, Decimal(0))
    assert _books(secret) == (total, total, total)  # ledgers and rollups moved with them
    text = out.getvalue()
    assert "3 changed" in text and "2 budget ledgers adjusted" in text
    assert "gpt-4o-mini-2024-07-18: 3 records" in text and "total: -$" in text
    assert records_for(other, 1)[0].cost_usd == bob_record.cost_usd

    again = io.StringIO()
    call_command("reprice", "--from", since, stdout=again)
    assert "0 changed" in again.getvalue()  # a second run moves nothing


def test_reprice_says_what_is_wrong_with_its_dates(db):
    with pytest.raises(CommandError, match="--from: not a date"):
        call_command("reprice", "--from", "yesterday")
    with pytest.raises(CommandError, match="--to must be after --from"):
        call_command("reprice", "--from", "2026-12-02", "--to", "2026-12-01")
