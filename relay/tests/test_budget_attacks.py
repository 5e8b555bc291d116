"""A hard budget holds against every kind of call OpenAI bills beyond its visible text.

Twenty calls of each kind at once, each costlier than what the budget leaves, over two proxy
processes on PostgreSQL, with the fake upstream billing what OpenAI would at most (its own
counting, not the proxy's): recorded spend never passes the budget. Before the reservation
bounded history, tools, images, files, audio and tool fees, these overspent 3-50×
(bench/budget_overspend.py measures the ratios).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest

from tests.attacks import ATTACKS, Attack, send
from tests.e2e import records_for


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_twenty_concurrent_costly_calls_never_pass_the_budget(e2e, two_processes, attack: Attack):
    user = f"attacker-{ATTACKS.index(attack)}"
    ctx = {}
    if attack.setup is not None:  # the same user's unbudgeted key builds what is attacked
        ctx = attack.setup(e2e.client(e2e.key(user)))
    secret = e2e.key(user, budget_usd=attack.budget)
    clients = [
        openai.OpenAI(api_key=secret, base_url=p.v1, max_retries=0, timeout=60)
        for p in two_processes
    ]
    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(lambda i: send(clients[i % 2], attack, ctx), range(20)))

    records = records_for(secret, 20)
    spent = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
    assert spent <= attack.budget, (attack.name, spent, outcomes)
    assert all(r.cost_usd is not None for r in records)  # all priced, none slipped through free
    refused = {o for o in outcomes if o != "ok"}
    assert refused <= {"insufficient_quota"}, outcomes
    # Each call that went through is recorded as the fake billed it (its own counting):
    # tokens, audio and tool calls, so `spent` is what OpenAI would charge.
    bills = {b["request_id"]: b for b in e2e.upstream.bills()["bills"]}
    answered = [r for r in records if r.status_code == 200]
    assert len(answered) == outcomes.count("ok")
    for record in answered:
        bill = bills[record.upstream_request_id]
        assert (record.prompt_tokens, record.completion_tokens) == (
            bill["prompt_tokens"],
            bill["completion_tokens"],
        )
        assert (record.audio_input_tokens, record.audio_output_tokens) == (
            bill["audio_input_tokens"],
            bill["audio_output_tokens"],
        )
        assert sum((record.tool_calls or {}).values()) == sum(bill["tool_calls"].values())
