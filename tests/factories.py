"""Usage records as the relay makes them, for tests of the ledger and the record writer."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from django.utils import timezone

from keys.selectors import KeyInfo
from usage.models import RecordState, UsageRecord


def request_record(
    key: KeyInfo,
    *,
    created_at: dt.datetime | None = None,
    status_code: int = 0,
    prompt_tokens: int = 10,
    cost_usd: Decimal | None = Decimal("0.0001"),
    process: str = "test-relay",
    **fields: object,
) -> UsageRecord:
    """A chat request's record: pending (what quota_reserve writes) unless told otherwise."""
    return UsageRecord(
        created_at=created_at or timezone.now(),
        user_id=key.user_id,
        api_key_id=key.id,
        key_prefix=key.prefix,
        endpoint="chat/completions",
        model="gpt-4o-mini",
        status_code=status_code,
        prompt_tokens=prompt_tokens,
        cost_usd=cost_usd,
        estimated=fields.pop("estimated", True),
        state=fields.pop("state", RecordState.PENDING),
        process=process,
        uid=uuid.uuid4(),
        **fields,
    )
