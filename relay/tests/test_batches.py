"""Batches end to end (official SDK → proxy → fake upstream): a batch reserves its worst case
at batch rates when it is made, keeps it while it runs (whichever proxy processes come and go)
and is settled once when it ends, at the batch rates, from what the fake billed its lines
(the fake bills each line by its own rules and marks it with the batch's id)."""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest

from tests.e2e import records_for, wait_for
from tests.servers import running, start_proxy

MILLION = Decimal(1_000_000)
MODEL = "gpt-4o-mini"


def line(custom_id: str, text: str, *, max_tokens: int = 40, model: str = MODEL, url=None) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url or "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_completion_tokens": max_tokens,
        },
    }


def jsonl(*lines: dict) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def upload(client, *lines: dict) -> str:
    return client.files.create(file=("tasks.jsonl", jsonl(*lines)), purpose="batch").id


def batch_rates(model: str = MODEL) -> tuple[Decimal, Decimal]:
    from usage.models import ModelPrice

    row = ModelPrice.objects.filter(model=model).latest("effective_from")
    return row.batch_input_per_1m, row.batch_output_per_1m


def billed_lines(e2e, batch_id: str) -> list[dict]:
    return [b for b in e2e.upstream.bills()["bills"] if b.get("batch_id") == batch_id]


def expected_cost(bills: list[dict], model: str = MODEL) -> Decimal:
    # gpt-4o-mini has no batch cached-input price: cached tokens pay the batch input rate.
    inp, out = batch_rates(model)
    prompt = sum(b["prompt_tokens"] for b in bills)
    completion = sum(b["completion_tokens"] for b in bills)
    return (prompt * inp + completion * out) / MILLION


def batch_record(batch_id: str):
    from usage.models import UsageRecord

    return UsageRecord.objects.get(endpoint="batches", upstream_request_id=batch_id)


def held_record(secret: str):
    from keys.models import key_hash
    from usage.models import UsageRecord

    return UsageRecord.objects.get(
        api_key__key_hash=key_hash(secret), state="pending", endpoint="batches"
    )


def ledger(secret: str):
    from keys.models import QuotaLedger, key_hash

    return QuotaLedger.objects.get(api_key__key_hash=key_hash(secret))


def complete_upstream(e2e, batch_id: str) -> None:
    e2e.upstream._call(f"/_fake/batches/{batch_id}/complete", method="POST")


def test_a_batch_from_upload_to_completion_is_settled_once_at_batch_rates(e2e):
    alice, bob = e2e.key("alice", budget_usd="1"), e2e.key("bob")
    mine, theirs = e2e.client(alice), e2e.client(bob)
    file_id = upload(mine, *(line(f"q{i}", f"Question number {i}?") for i in range(3)))
    batch = mine.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.id.startswith("batch_") and batch.input_file_id == file_id

    # Nobody retrieves it: the proxy's poller sees it end and settles it.
    _upload, record = records_for(alice, 2)
    bills = billed_lines(e2e, batch.id)
    assert len(bills) == 3
    assert record.endpoint == "batches" and record.upstream_request_id == batch.id
    assert record.service_tier == "batch" and record.status_code == 200 and not record.estimated
    assert record.prompt_tokens == sum(b["prompt_tokens"] for b in bills)
    assert record.completion_tokens == sum(b["completion_tokens"] for b in bills)
    assert record.cost_usd == expected_cost(bills) > 0
    # It was reserved at most at the batch rates, and the reservation is gone.
    inp, out = batch_rates()
    assert record.reserved_usd <= (record.reserved_tokens * max(inp, out)) / MILLION
    held = ledger(alice)
    assert held.reserved_usd == 0 and held.spent_usd == record.cost_usd

    # Its output is its creator's: retrieve, list, read it, all through the proxy.
    done = mine.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    answers = [json.loads(x) for x in mine.files.content(done.output_file_id).read().splitlines()]
    assert sorted(a["custom_id"] for a in answers) == ["q0", "q1", "q2"]
    assert [b.id for b in mine.batches.list()] == [batch.id]
    assert done.output_file_id in [f.id for f in mine.files.list()]

    # Bob shares the upstream account and sees none of it.
    assert list(theirs.batches.list()) == []
    for call in (
        lambda: theirs.batches.retrieve(batch.id),
        lambda: theirs.batches.cancel(batch.id),
        lambda: theirs.files.content(done.output_file_id),
        lambda: theirs.files.retrieve(file_id),
        lambda: theirs.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()

    # However often it is seen finished, it was settled once.
    time.sleep(1.5)  # three more polls
    assert batch_record(batch.id).cost_usd == record.cost_usd
    assert ledger(alice).spent_usd == record.cost_usd
    records_for(alice, 2 + 4)  # the retrieve, the content, the list and the file list


def test_retrieves_through_two_processes_settle_it_once(e2e):
    """No poller looks at this batch: the retrieves that see it finished settle it, eight at
    once through two processes, and it is billed once."""
    from usage.models import StoredObject

    secret = e2e.key(budget_usd="1")
    quiet = {"PROXY_BATCH_POLL_SECONDS": "3600"}
    logs = e2e.proxy.log.parent
    with (
        running(start_proxy(e2e.upstream.url, logs, extra_env=quiet)) as a,
        running(start_proxy(e2e.upstream.url, logs, extra_env=quiet)) as b,
    ):
        one, other = (openai.OpenAI(api_key=secret, base_url=p.v1, max_retries=0) for p in (a, b))
        file_id = upload(one, line("a", "Hello?"), line("b", "Goodbye?"))
        batch = one.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"fake_hold": "true"},
        )
        # Out of the session proxy's poller's way: only these retrieves may settle it.
        StoredObject.objects.filter(object_id=batch.id).update(
            checked_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        )
        wait_for(
            lambda: other.batches.retrieve(batch.id).status == "in_progress",
            what="the batch held in progress",
        )
        held = held_record(secret)
        assert held.reserved_usd > 0 and ledger(secret).reserved_usd == held.reserved_usd
        complete_upstream(e2e, batch.id)
        time.sleep(1)
        assert held_record(secret).state == "pending"  # nothing settles it unasked
        clients = [one, other] * 4
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda c: c.batches.retrieve(batch.id).status, clients))
        assert statuses == ["completed"] * 8
        wait_for(lambda: ledger(secret).reserved_usd == 0, what="the batch settled")
        record = batch_record(batch.id)
        assert record.cost_usd == expected_cost(billed_lines(e2e, batch.id)) > 0
        assert ledger(secret).spent_usd == record.cost_usd  # once, not eight times


def test_a_cancelled_batch_pays_only_the_lines_it_ran(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)
    file_id = upload(client, *(line(f"l{i}", f"Line {i}") for i in range(4)))
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"fake_hold": "1"},  # runs one line, then waits
    )
    wait_for(lambda: len(billed_lines(e2e, batch.id)) == 1, what="the first line run")
    assert client.batches.cancel(batch.id).status == "cancelling"
    [record] = [r for r in records_for(secret, 3) if r.endpoint == "batches"]  # + upload, cancel
    assert record.endpoint == "batches" and record.error_code == "batch_cancelled"
    assert record.cost_usd == expected_cost(billed_lines(e2e, batch.id)) > 0
    assert ledger(secret).reserved_usd == 0


def test_a_batch_the_budget_cannot_cover_is_refused_and_never_made(e2e):
    secret = e2e.key(budget_usd="0.001")
    client = e2e.client(secret)
    # Each line may write 16,000 tokens: at $0.30 per 1M, 3 lines can cost $0.0144.
    file_id = upload(
        client, *(line(f"x{i}", "Write an essay.", max_tokens=16_000) for i in range(3))
    )
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.code == "insufficient_quota"
    assert not [b for b in e2e.upstream.bills()["bills"] if b["path"] == "/v1/batches"]
    assert records_for(secret, 2)[1].status_code == 429
    assert ledger(secret).reserved_usd == 0


def test_a_line_the_proxy_cannot_bound_is_named_and_nothing_is_sent(e2e):
    secret = e2e.key(budget_usd="1", budget_mode="strict")
    client = e2e.client(secret)
    unbounded = line("a", "x")
    del unbounded["body"]["max_completion_tokens"]  # a strict budget needs the output bound
    cases = [
        ([line("a", "x"), line("b", "y", url="/v1/embeddings")], "Line 2", "url_mismatch"),
        ([line("a", "x"), line("b", "y", model="gpt-4o")], "Line 2", "model_mismatch"),
        ([unbounded], "Line 1", "missing_required_parameter"),
    ]
    for lines, where, code in cases:
        file_id = upload(client, *lines)
        with pytest.raises(openai.BadRequestError) as bad:
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert bad.value.code == code and where in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(
            input_file_id="file-x", endpoint="/v1/images", completion_window="24h"
        )
    assert bad.value.param == "endpoint"
    assert not [b for b in e2e.upstream.bills()["bills"] if b["path"] == "/v1/batches"]


def test_a_batch_outlives_the_process_that_made_it(e2e):
    """kill -9 of the process that made a batch: the reaper leaves the batch's reservation
    alone, and another process settles the batch when it ends."""
    from usage.services import reservations_heal

    secret = e2e.key(budget_usd="1")
    dying = start_proxy(
        e2e.upstream.url, e2e.proxy.log.parent, extra_env={"PROXY_BATCH_POLL_SECONDS": "3600"}
    )
    client = openai.OpenAI(api_key=secret, base_url=dying.v1, max_retries=0)
    file_id = upload(client, line("a", "Still there?"))
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"fake_hold": "true"},
    )
    dying.proc.kill()
    dying.proc.wait()
    reservations_heal(stale_after=dt.timedelta(0))  # every process taken for dead
    held = held_record(secret)
    assert held.process == "batch" and ledger(secret).reserved_usd == held.reserved_usd > 0
    complete_upstream(e2e, batch.id)
    # The session's proxy polls every 0.5 s and settles it.
    wait_for(lambda: ledger(secret).reserved_usd == 0, what="the batch settled", timeout=15)
    record = batch_record(batch.id)
    assert record.state == "done" and record.cost_usd == expected_cost(billed_lines(e2e, batch.id))
