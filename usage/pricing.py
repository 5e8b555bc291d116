"""Turning token counts into dollars: which price row applies and what a request cost.

Prices are read once per process into memory (refreshed every PRICE_CACHE_SECONDS) so the
relay can price a request, and size a reservation, with no query.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import re
import threading
import time
from decimal import Decimal

from django.conf import settings

PER_TOKEN = Decimal(1_000_000)
ZERO = Decimal(0)
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


@dataclasses.dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts as OpenAI reports them: cached, cache-write and audio input are inside
    `prompt`; reasoning and audio output are inside `completion` (never add them twice)."""

    prompt: int = 0
    cached: int = 0
    completion: int = 0
    reasoning: int = 0
    cache_write: int = 0
    audio_input: int = 0
    audio_output: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    model: str
    effective_from: dt.datetime
    rates: dict[str, Decimal | None]

    def rate(self, column: str) -> Decimal | None:
        return self.rates.get(column)

    @property
    def is_priced(self) -> bool:
        return (
            self.rates.get("input_per_1m") is not None
            or self.rates.get("output_per_1m") is not None
        )

    def tier_rates(self, tier: str | None, prompt_tokens: int) -> tuple[Decimal, Decimal, Decimal]:
        """(input, cached input, output) per 1M for the tier actually used."""
        base_in = self.rate("input_per_1m") or ZERO
        base_out = self.rate("output_per_1m") or ZERO
        cached = self.rate("cached_input_per_1m")
        inp, out = base_in, base_out
        # A tier the file has no price for is billed at the standard rate: OpenAI answers with
        # `service_tier: "default"` in that case anyway.
        prefix = {"flex": "flex_", "priority": "priority_", "batch": "batch_"}.get(tier or "")
        if (
            prefix is None
            and prompt_tokens > 272_000
            and self.rate("gt272k_input_per_1m") is not None
        ):
            prefix = "gt272k_"
        if prefix and self.rate(f"{prefix}input_per_1m") is not None:
            inp = self.rate(f"{prefix}input_per_1m") or ZERO
            out = self.rate(f"{prefix}output_per_1m") or base_out
            cached = self.rate(f"{prefix}cached_input_per_1m")
        # No cached price means no discount: cached tokens pay the input price.
        return inp, (inp if cached is None else cached), out

    def cost(self, usage: TokenUsage, tier: str | None = None) -> Decimal:
        inp, cached, out = self.tier_rates(tier, usage.prompt)
        cache_write = self.rate("cache_write_per_1m")
        audio_in = self.rate("audio_input_per_1m")
        audio_out = self.rate("audio_output_per_1m")
        audio_in_tokens = usage.audio_input if audio_in is not None else 0
        audio_out_tokens = usage.audio_output if audio_out is not None else 0
        write_tokens = usage.cache_write if cache_write is not None else 0
        cached_tokens = min(usage.cached, usage.prompt)
        text_in = max(usage.prompt - cached_tokens - write_tokens - audio_in_tokens, 0)
        text_out = max(usage.completion - audio_out_tokens, 0)
        total = text_in * inp + cached_tokens * cached + text_out * out
        if write_tokens:
            total += write_tokens * cache_write
        if audio_in_tokens:
            total += audio_in_tokens * audio_in
        if audio_out_tokens:
            total += audio_out_tokens * audio_out
        return total / PER_TOKEN

    def worst_case(self, prompt_tokens: int, max_output_tokens: int) -> Decimal:
        """The most a request can cost: every input token uncached, at the dearest tier."""
        rates_in = [self.rate(f"{p}input_per_1m") for p in ("", "priority_", "gt272k_")]
        rates_out = [self.rate(f"{p}output_per_1m") for p in ("", "priority_", "gt272k_")]
        inp = max((r for r in rates_in if r is not None), default=ZERO)
        out = max((r for r in rates_out if r is not None), default=ZERO)
        return (prompt_tokens * inp + max_output_tokens * out) / PER_TOKEN


class PriceBook:
    """All price rows of all models, by model, oldest first."""

    def __init__(self, prices: list[Price]) -> None:
        self._by_model: dict[str, list[Price]] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            self._by_model.setdefault(price.model, []).append(price)
        self._names = sorted(self._by_model, key=len, reverse=True)

    def resolve(self, model: str) -> str | None:
        """The price-table name for a model OpenAI named: exact, fine-tune base, undated, prefix."""
        if not model:
            return None
        if model in self._by_model:
            return model
        if model.startswith("ft:"):
            base = model[3:].split(":", 1)[0]
            return self.resolve(base)
        undated = _DATED.sub("", model)
        if undated != model and undated in self._by_model:
            return undated
        for name in self._names:
            if model.startswith(name + "-"):
                return name
        return None

    def price(self, model: str, at: dt.datetime) -> Price | None:
        name = self.resolve(model)
        if name is None:
            return None
        rows = self._by_model[name]
        i = bisect.bisect_right([p.effective_from for p in rows], at)
        return rows[i - 1] if i else None

    def models(self) -> list[str]:
        return list(self._by_model)


_book: PriceBook | None = None
_book_loaded_at = 0.0
_book_lock = threading.Lock()


def price_book() -> PriceBook:
    """The process's price book; sync (it may query), so async callers use `aprice_book`."""
    global _book, _book_loaded_at
    ttl = getattr(settings, "PRICE_CACHE_SECONDS", 60.0)
    if _book is not None and time.monotonic() - _book_loaded_at < ttl:
        return _book
    with _book_lock:
        if _book is None or time.monotonic() - _book_loaded_at >= ttl:
            from usage.selectors import price_rows

            _book = PriceBook(price_rows())
            _book_loaded_at = time.monotonic()
    return _book


def price_book_cached(*, stale_ok: bool = False) -> PriceBook | None:
    """The process's price book if it is fresh (or, with `stale_ok`, at all), with no query."""
    ttl = getattr(settings, "PRICE_CACHE_SECONDS", 60.0)
    if _book is not None and (stale_ok or time.monotonic() - _book_loaded_at < ttl):
        return _book
    return None


def price_book_reset() -> None:
    """Forget the cached prices (after loading or editing them in this process)."""
    global _book
    _book = None
