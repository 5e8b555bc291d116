"""A factory of usage records, written the way the relay writes them (rollups in step)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from usage.models import UsageRecord
from usage.services import usage_record_create


@pytest.fixture
def make_record(db):
    """make_record(api_key, **fields) -> UsageRecord, saved by usage_record_create."""

    def make(api_key, *, created_at=None, cost="0.001", **fields) -> UsageRecord:
        record = UsageRecord(
            created_at=created_at or timezone.now(),
            user=api_key.user,
            api_key=api_key,
            key_prefix=api_key.prefix,
            endpoint=fields.pop("endpoint", "chat/completions"),
            model=fields.pop("model", "gpt-4o-mini"),
            response_model=fields.pop("response_model", "gpt-4o-mini-2024-07-18"),
            status_code=fields.pop("status_code", 200),
            prompt_tokens=fields.pop("prompt_tokens", 100),
            completion_tokens=fields.pop("completion_tokens", 20),
            cost_usd=None if cost is None else Decimal(cost),
            latency_ms=fields.pop("latency_ms", 250),
            **fields,
        )
        return usage_record_create(record=record)

    return make


@pytest.fixture
def at():
    """at(days_ago, hour) -> an aware UTC datetime, fixed to whole days for date filters."""
    today = timezone.now().astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def moment(days_ago: int = 0, hour: int = 12) -> dt.datetime:
        return today - dt.timedelta(days=days_ago) + dt.timedelta(hours=hour)

    return moment
