"""Turning token counts into dollars: which price row applies and what a request cost.

Prices are read once per process into memory (refreshed every PRICE_CACHE_SECONDS) so the
relay can price a request, and size a reservation, with no query.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import fnmatch
import re
import threading
import time
from collections.abc import Mapping
from decimal import Decimal

from django.conf import settings

PER_TOKEN = Decimal(1_000_000)
# Model names a price book remembers the resolution of (it is replaced every
# PRICE_CACHE_SECONDS; a client sending ever new names only fills it up to this).
_RESOLVED_MAX = 10_000
# Service tiers billed at the standard rates.
FREE_TIERS = ("", "default", "auto", "standard")
ZERO = Decimal(0)
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


def model_undated(model: str) -> str:
    """`model` without a snapshot's date: `gpt-4o-mini-2024-07-18` → `gpt-4o-mini`."""
    return _DATED.sub("", model)


# A row with any of these is priced (DALL·E rows have none: their fees are per image).
_PRICED_BY = (
    "input_per_1m",
    "output_per_1m",
    "image_output_per_1m",
    "characters_per_1m",
    "audio_per_minute",
)


@dataclasses.dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts as OpenAI reports them: cached, cache-write and audio input are inside
    `prompt`; reasoning and audio output are inside `completion` (never add them twice).
    `tool_calls` counts the built-in tool calls billed per call, by fee key (`web_search`,
    `code_interpreter:1g`, `image_generation:high:1024x1536`, ...)."""

    prompt: int = 0
    cached: int = 0
    completion: int = 0
    reasoning: int = 0
    cache_write: int = 0
    audio_input: int = 0
    audio_output: int = 0
    tool_calls: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # Cached audio input (Realtime): inside `cached`, billed at the cached audio rate.
    audio_cached: int = 0
    # Image tokens (gpt-image models) are inside `prompt` and `completion` too.
    image_input: int = 0
    image_output: int = 0
    # Units of models not billed by the token: characters (tts-1), seconds of audio (whisper-1).
    characters: int = 0
    audio_seconds: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @property
    def billable(self) -> bool:
        """Whether anything was used that costs money."""
        return bool(self.total or self.tool_calls or self.characters or self.audio_seconds)


@dataclasses.dataclass(frozen=True, slots=True)
class Ceiling:
    """The most a request can be billed for, as the relay bounded it from the request.

    `input` is every input token billed at the text rate (text, images, files, tool
    definitions, the history behind `previous_response_id`, each tool turn's context);
    `audio_input` is billed at the audio rate; `output` may all be audio when `audio_output`.
    `tool_calls` maps a fee key (its variant may hold `*`, priced at its dearest match) to
    the most calls the request can make."""

    input: int = 0
    audio_input: int = 0
    output: int = 0
    audio_output: bool = False
    tool_calls: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # Image tokens, billed at the image rates; not inside `input` / `output`.
    image_input: int = 0
    image_output: int = 0
    characters: int = 0
    audio_seconds: int = 0

    @property
    def tokens(self) -> int:
        return self.input + self.audio_input + self.output + self.image_input + self.image_output


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    model: str
    effective_from: dt.datetime
    rates: dict[str, Decimal | None]
    id: int | None = None
    source: str = ""
    max_input_tokens: int | None = None

    def rate(self, column: str) -> Decimal | None:
        return self.rates.get(column)

    @property
    def is_priced(self) -> bool:
        return any(self.rates.get(c) is not None for c in _PRICED_BY)

    def unpriced_units(self, usage: TokenUsage | Ceiling) -> str | None:
        """The first thing `usage` holds that this row has no rate for (image tokens on a row
        without image rates, characters, seconds), else None: never priced as $0."""
        for amount, column in (
            (usage.image_input, "image_input_per_1m"),
            (usage.image_output, "image_output_per_1m"),
            (usage.characters, "characters_per_1m"),
            (usage.audio_seconds, "audio_per_minute"),
        ):
            if amount and self.rates.get(column) is None:
                return column
        return None

    def _unit_cost(self, usage: TokenUsage | Ceiling) -> Decimal:
        """Characters and seconds of audio, at their own rates (zero where unused)."""
        total = ZERO
        if usage.characters:
            total += usage.characters * (self.rate("characters_per_1m") or ZERO) / PER_TOKEN
        if usage.audio_seconds:
            total += usage.audio_seconds * (self.rate("audio_per_minute") or ZERO) / 60
        return total

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
        """What the tokens cost (built-in tool fees are the book's: `PriceBook.cost`)."""
        inp, cached, out = self.tier_rates(tier, usage.prompt)
        cache_write = self.rate("cache_write_per_1m")
        audio_in = self.rate("audio_input_per_1m")
        audio_out = self.rate("audio_output_per_1m")
        audio_in_tokens = usage.audio_input if audio_in is not None else 0
        audio_out_tokens = usage.audio_output if audio_out is not None else 0
        write_tokens = usage.cache_write if cache_write is not None else 0
        cached_tokens = min(usage.cached, usage.prompt)
        audio_cached = self.rate("audio_cached_input_per_1m")
        audio_cached_tokens = (
            min(usage.audio_cached, cached_tokens) if audio_cached is not None else 0
        )
        image_in = self.rate("image_input_per_1m")
        image_out = self.rate("image_output_per_1m")
        image_in_tokens = usage.image_input if image_in is not None else 0
        image_out_tokens = usage.image_output if image_out is not None else 0
        text_in = max(
            usage.prompt - cached_tokens - write_tokens - audio_in_tokens - image_in_tokens, 0
        )
        text_out = max(usage.completion - audio_out_tokens - image_out_tokens, 0)
        total = text_in * inp + (cached_tokens - audio_cached_tokens) * cached + text_out * out
        if audio_cached_tokens:
            total += audio_cached_tokens * audio_cached
        if image_in_tokens:
            total += image_in_tokens * image_in
        if image_out_tokens:
            total += image_out_tokens * image_out
        if write_tokens:
            total += write_tokens * cache_write
        if audio_in_tokens:
            total += audio_in_tokens * audio_in
        if audio_out_tokens:
            total += audio_out_tokens * audio_out
        return total / PER_TOKEN + self._unit_cost(usage)

    def _dearest(self, *columns: str) -> Decimal:
        rates = [self.rate(c) for c in columns]
        return max((r for r in rates if r is not None), default=ZERO)

    def worst_case_tokens(self, ceiling: Ceiling, tier: str | None = None) -> Decimal:
        """The most the ceiling's tokens can cost: every input token uncached (or written to
        the cache, when that is dearer), at the dearest tier; audio at audio rates. `tier`
        "batch": a Batch API line, which OpenAI bills at the batch rates when the row has them
        (as `cost` does)."""
        tiers = ("", "priority_", "gt272k_")
        inp = self._dearest(*(f"{t}input_per_1m" for t in tiers), "cache_write_per_1m")
        out = self._dearest(*(f"{t}output_per_1m" for t in tiers))
        if tier == "batch" and self.rate("batch_input_per_1m") is not None:
            inp = self._dearest("batch_input_per_1m", "cache_write_per_1m")
            out = self._dearest("batch_output_per_1m") or self._dearest("output_per_1m")
        audio_in = max(inp, self._dearest("audio_input_per_1m"))
        if ceiling.audio_output:
            out = max(out, self._dearest("audio_output_per_1m"))
        total = ceiling.input * inp + ceiling.audio_input * audio_in + ceiling.output * out
        if ceiling.image_input:
            total += ceiling.image_input * max(inp, self._dearest("image_input_per_1m"))
        if ceiling.image_output:
            total += ceiling.image_output * max(out, self._dearest("image_output_per_1m"))
        return total / PER_TOKEN + self._unit_cost(ceiling)


@dataclasses.dataclass(frozen=True, slots=True)
class ToolFee:
    """One built-in tool's fee per call (see usage.models.ToolPrice)."""

    tool: str
    patterns: tuple[str, ...]
    variant: str
    usd_per_call: Decimal
    effective_from: dt.datetime

    def matches(self, names: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for n in names for p in self.patterns)

    @property
    def specificity(self) -> tuple[int, int]:
        """Patterns without a wildcard first, then the longest: `gpt-4o*` beats `*`."""
        exact = all("*" not in p and "?" not in p for p in self.patterns)
        return (1 if exact else 0, max(len(p) for p in self.patterns))


def fee_key(tool: str, variant: str = "") -> str:
    return f"{tool}:{variant}" if variant else tool


class PriceBook:
    """All price rows of all models (by model, oldest first), the alias table and the
    built-in tool fees: everything a request is priced with, held in memory."""

    def __init__(
        self,
        prices: list[Price],
        aliases: Mapping[str, str] | None = None,
        tool_fees: list[ToolFee] | None = None,
    ) -> None:
        self._by_model: dict[str, list[Price]] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            self._by_model.setdefault(price.model, []).append(price)
        self._starts = {m: [p.effective_from for p in rows] for m, rows in self._by_model.items()}
        # A request resolves its model several times (price, tool fees, billing); the book
        # never changes, so each name is worked out once per book.
        self._resolved: dict[str, tuple[str | None, str]] = {}
        self._aliases = dict(aliases or {})
        self._fees: dict[str, list[ToolFee]] = {}
        for fee in sorted(tool_fees or [], key=lambda f: f.effective_from):
            self._fees.setdefault(fee.tool, []).append(fee)

    def resolution(self, model: str) -> tuple[str | None, str]:
        """The price-table name for a model OpenAI named, and the rule that found it: its
        own row ("exact"), a fine-tune's base row ("fine-tune": `ft:gpt-4o-mini-2024-07-18`
        for `ft:gpt-4o-mini-2024-07-18:org::id`), a dated snapshot of a known model
        ("snapshot": `-YYYY-MM-DD` / `-MMDD`), the alias table ("alias"), else (None,
        "unknown"). Never a guess by prefix: `gpt-4-0125-preview` is not `gpt-4`."""
        found = self._resolved.get(model)
        if found is None:
            found = self._resolve(model)
            if len(self._resolved) < _RESOLVED_MAX:  # clients choose the names: bounded
                self._resolved[model] = found
        return found

    def _resolve(self, model: str) -> tuple[str | None, str]:
        if not model:
            return None, "unknown"
        if model in self._by_model:
            return model, "exact"
        if model.startswith("ft:"):
            base = "ft:" + model[3:].split(":", 1)[0]
            for name in (base, _DATED.sub("", base)):
                if name in self._by_model:
                    return name, "fine-tune"
            target = self._alias_target(base)
            return (target, "fine-tune") if target else (None, "unknown")
        undated = _DATED.sub("", model)
        if undated != model and undated in self._by_model:
            return undated, "snapshot"
        target = self._alias_target(model)
        return (target, "alias") if target else (None, "unknown")

    def _alias_target(self, model: str) -> str | None:
        # The exact name only: a dated name is a snapshot of its own, perhaps at another
        # price (gpt-4o-audio-preview-2024-10-01 is not the alias's 2025-06-03).
        target = self._aliases.get(model)
        if target is None:
            return None
        if target in self._by_model:
            return target
        undated = _DATED.sub("", target)
        return undated if undated in self._by_model else None

    def resolve(self, model: str) -> str | None:
        return self.resolution(model)[0]

    def price(self, model: str, at: dt.datetime) -> Price | None:
        name = self.resolve(model)
        if name is None:
            return None
        i = bisect.bisect_right(self._starts[name], at)
        return self._by_model[name][i - 1] if i else None

    def models(self) -> list[str]:
        return list(self._by_model)

    # -- built-in tools --------------------------------------------------------------------
    def tool_fee(self, key: str, model: str, at: dt.datetime) -> Decimal | None:
        """The fee per call for a fee key (`tool` or `tool:variant`; a variant may hold `*`
        and is then priced at its dearest match), for `model`, at `at`. None: no fee known."""
        tool, _, variant = key.partition(":")
        names = tuple(n for n in (model, self.resolve(model)) if n)
        # Per variant the most specific pattern wins, then the latest row; a `*` variant is
        # priced at the dearest of the variants it matches.
        chosen: dict[str, tuple[tuple[int, int], dt.datetime, Decimal]] = {}
        for fee in self._fees.get(tool, ()):
            if fee.effective_from > at or not fee.matches(names):
                continue
            if not fnmatch.fnmatchcase(fee.variant, variant):
                continue
            rank = (fee.specificity, fee.effective_from, fee.usd_per_call)
            if fee.variant not in chosen or rank[:2] > chosen[fee.variant][:2]:
                chosen[fee.variant] = rank
        return max((rank[2] for rank in chosen.values()), default=None)

    def tool_cost(self, calls: Mapping[str, int], model: str, at: dt.datetime) -> Decimal | None:
        """What the built-in tool calls cost; None if one has no fee in the table."""
        total = ZERO
        for key, count in calls.items():
            if count <= 0:
                continue
            fee = self.tool_fee(key, model, at)
            if fee is None:
                return None
            total += fee * count
        return total

    def cost(
        self, price: Price, usage: TokenUsage, *, tier: str | None, model: str, at: dt.datetime
    ) -> Decimal | None:
        """A request's whole cost: its tokens and its built-in tool calls (None if a tool
        call has no fee: unpriced, never $0)."""
        if price.unpriced_units(usage) is not None:
            return None
        tools = self.tool_cost(usage.tool_calls, model, at)
        return None if tools is None else price.cost(usage, tier) + tools

    def bill(
        self, model: str, usage: TokenUsage, *, tier: str, at: dt.datetime
    ) -> tuple[Decimal | None, Price | None]:
        """What a request's usage costs, and the price row that says so: (None, row) when
        unpriced (never $0); nothing used costs $0 whatever the model. `tier` is the
        service tier OpenAI answered with."""
        if not usage.billable:
            return ZERO, None
        price = self.price(model, at)
        # A row with no rates prices only what has no tokens: DALL·E's images, by the fee table.
        if price is None or not (price.is_priced or not usage.total):
            return None, price
        billed_tier = None if tier in FREE_TIERS else tier
        return self.cost(price, usage, tier=billed_tier, model=model, at=at), price

    def worst_case(
        self,
        price: Price,
        ceiling: Ceiling,
        *,
        model: str,
        at: dt.datetime,
        tier: str | None = None,
    ) -> Decimal | None:
        """The most a request bounded by `ceiling` can cost; None if a tool it may call has
        no fee in the table (it cannot be bounded)."""
        if price.unpriced_units(ceiling) is not None:
            return None
        tools = self.tool_cost(ceiling.tool_calls, model, at)
        return None if tools is None else price.worst_case_tokens(ceiling, tier) + tools


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
            from usage.selectors import price_aliases, price_rows, tool_fees

            _book = PriceBook(price_rows(), price_aliases(), tool_fees())
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
