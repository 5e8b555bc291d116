"""Loading the price files: model prices, the model-alias table and built-in tool fees.

The shipped files (usage/data/) are OpenAI's published prices, each row with its source and
the date it was read there. `migrate` loads them; `manage.py load_prices` refreshes them. A
price that changed gets a new row effective from the load (or `effective_from`), so records
keep the row they were billed with, and `manage.py reprice` can recompute records when a
price was wrong.

Each change a load makes is in the audit trail (audit.trail: "manage.py load_prices"), except
the first load into an empty table, which is the shipped table itself, not a change.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import functools
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

from auditlog.context import disable_auditlog
from django.db import transaction
from django.utils import timezone

from usage.models import ALWAYS, PRICE_COLUMNS, ModelAlias, ModelPrice, ToolPrice
from usage.pricing import price_book_reset

T = TypeVar("T")

DATA = Path(__file__).resolve().parent / "data"
SHIPPED_PRICES = DATA / "openai_prices.csv"
SHIPPED_ALIASES = DATA / "openai_model_aliases.csv"
SHIPPED_TOOL_PRICES = DATA / "openai_tool_prices.csv"


@dataclasses.dataclass
class PriceLoadResult:
    created: int = 0
    unchanged: int = 0
    changed: int = 0
    kept: int = 0  # differs from the file, but the table's row is newer or the operator's

    def __str__(self) -> str:
        text = f"{self.created} new, {self.changed} changed, {self.unchanged} unchanged"
        if self.kept:
            text += f", {self.kept} kept as edited (the file's row is not newer)"
        return text


def _file_wins(file_date: dt.date | None, row_date: dt.date | None) -> bool:
    """Whether a file's row replaces the table's, when they differ. A file without dates
    (an operator's own) always does. Otherwise only a newer reading of the source does: a
    row edited in the admin, or added there (no date), survives every start (`make run`
    loads the shipped files each time)."""
    if file_date is None:
        return True
    return row_date is not None and file_date > row_date


def _audited(model: type) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A loader whose changes are audited, unless it fills `model`'s empty table."""

    def wrap(load: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(load)
        def audited(*args: object, **kwargs: object) -> T:
            first = not model.objects.exists()
            with disable_auditlog() if first else contextlib.nullcontext():
                return load(*args, **kwargs)

        return audited

    return wrap


def _decimal(text: str | None) -> Decimal | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a price: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a price: {text!r}")
    return value


def _date(text: str | None) -> dt.date | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: needs the columns {', '.join(required)}")
        return [
            {k: (v or "").strip() for k, v in line.items() if k}
            for line in reader
            if (line.get(required[0]) or "").strip()
        ]


@_audited(ModelPrice)
@transaction.atomic
def prices_load(
    *, path: Path = SHIPPED_PRICES, effective_from: dt.datetime | None = None
) -> PriceLoadResult:
    """Load a price file (the shipped one by default). A model whose price differs from the
    one in force gets a new row from `effective_from` (now by default), so past records keep
    the price they were billed at, unless the row in force was edited in the admin and the
    file's is no newer (`_file_wins`); a model seen for the first time is priced from always."""
    when = effective_from or timezone.now()
    result = PriceLoadResult()
    for line in _rows(path, ("model", "input_per_1m")):
        model = line["model"]
        rates = {c: _decimal(line.get(c)) for c in PRICE_COLUMNS if c in line}
        extra = {
            "mode": line.get("mode", ""),
            "deprecation_date": _date(line.get("deprecation_date")),
            "max_input_tokens": int(line["max_input_tokens"])
            if line.get("max_input_tokens")
            else None,
            "source": line.get("source", "")[:300],
            "source_date": _date(line.get("source_date")),
        }
        current = (
            ModelPrice.objects.filter(model=model, effective_from__lte=when)
            .order_by("-effective_from")
            .first()
        )
        if current is None:
            ModelPrice.objects.create(model=model, effective_from=ALWAYS, **rates, **extra)
            result.created += 1
        elif all(getattr(current, c) == v for c, v in rates.items()):
            if not current.source and extra["source"]:
                current.source, current.source_date = extra["source"], extra["source_date"]
                current.save(update_fields=["source", "source_date"])
            result.unchanged += 1
        elif not _file_wins(extra["source_date"], current.source_date):
            result.kept += 1
        else:
            ModelPrice.objects.update_or_create(
                model=model, effective_from=when, defaults={**rates, **extra}
            )
            result.changed += 1
    price_book_reset()
    return result


@_audited(ModelAlias)
@transaction.atomic
def aliases_load(*, path: Path = SHIPPED_ALIASES) -> PriceLoadResult:
    """Load a model-alias file; an alias changed in the admin is kept unless the file's row
    is a newer reading of its source (see `_file_wins`)."""
    result = PriceLoadResult()
    for line in _rows(path, ("alias", "model")):
        fields = {
            "model": line["model"],
            "source": line.get("source", "")[:300],
            "source_date": _date(line.get("source_date")),
            "note": line.get("note", "")[:200],
        }
        alias = ModelAlias.objects.filter(alias=line["alias"]).first()
        if alias is None:
            ModelAlias.objects.create(alias=line["alias"], **fields)
            result.created += 1
        elif alias.model == fields["model"]:
            result.unchanged += 1
        elif not _file_wins(fields["source_date"], alias.source_date):
            result.kept += 1
        else:
            for name, value in fields.items():
                setattr(alias, name, value)
            alias.save()
            result.changed += 1
    price_book_reset()
    return result


@_audited(ToolPrice)
@transaction.atomic
def tool_prices_load(
    *, path: Path = SHIPPED_TOOL_PRICES, effective_from: dt.datetime | None = None
) -> PriceLoadResult:
    """Load a built-in tool fee file; a changed fee gets a new row, as model prices do."""
    when = effective_from or timezone.now()
    result = PriceLoadResult()
    for line in _rows(path, ("tool", "usd_per_call")):
        usd = _decimal(line["usd_per_call"])
        if usd is None:
            raise ValueError(f"{path}: {line['tool']} has no usd_per_call")
        ident = {
            "tool": line["tool"],
            "model_patterns": line.get("model_patterns") or "*",
            "variant": line.get("variant", ""),
        }
        extra = {
            "source": line.get("source", "")[:300],
            "source_date": _date(line.get("source_date")),
        }
        current = (
            ToolPrice.objects.filter(**ident, effective_from__lte=when)
            .order_by("-effective_from")
            .first()
        )
        if current is None:
            ToolPrice.objects.create(**ident, effective_from=ALWAYS, usd_per_call=usd, **extra)
            result.created += 1
        elif current.usd_per_call == usd:
            result.unchanged += 1
        elif not _file_wins(extra["source_date"], current.source_date):
            result.kept += 1
        else:
            ToolPrice.objects.update_or_create(
                **ident, effective_from=when, defaults={"usd_per_call": usd, **extra}
            )
            result.changed += 1
    price_book_reset()
    return result
