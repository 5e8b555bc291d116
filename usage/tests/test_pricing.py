"""What a request costs, to the Decimal, with the price table `migrate` ships.

Every expected figure below is worked out by hand from the rows of usage/data/*.csv (quoted
beside each case), not by the code under test: a wrong rate, a wrong rule or a wrong model
resolution fails here.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from usage.pricing import Ceiling, TokenUsage, price_book, price_book_reset

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
D = Decimal


@pytest.fixture
def book(db):
    price_book_reset()
    yield price_book()
    price_book_reset()


# (model as OpenAI names it, usage, service tier, expected USD, why)
CASES = [
    # gpt-4o: input 2.5, cached 1.25, output 10 per 1M
    ("gpt-4o", TokenUsage(prompt=1000, completion=100), "", D("0.0035"), "chat"),
    (
        "gpt-4o",
        TokenUsage(prompt=1000, cached=600, completion=100),
        "",
        D("0.00275"),  # 400 × 2.5 + 600 × 1.25 + 100 × 10
        "cached input at the cached rate",
    ),
    # gpt-5: 1.25 / 0.125 / 10; reasoning is inside completion, never added again
    (
        "gpt-5-2025-08-07",
        TokenUsage(prompt=100, completion=1000, reasoning=800),
        "",
        D("0.010125"),
        "reasoning (Responses, dated snapshot with its own row)",
    ),
    # gpt-5 flex: 0.625 / 0.0625 / 5
    ("gpt-5", TokenUsage(prompt=1000, completion=1000), "flex", D("0.005625"), "flex"),
    # gpt-4o priority: 4.25 / 2.125 / 17
    ("gpt-4o", TokenUsage(prompt=1000, completion=1000), "priority", D("0.02125"), "priority"),
    # gpt-4o-mini batch: 0.075 / (none: input) / 0.3
    (
        "gpt-4o-mini",
        TokenUsage(prompt=1000, cached=200, completion=1000),
        "batch",
        D("0.000375"),
        "batch, no batch cached price: cached tokens pay the batch input price",
    ),
    ("gpt-4o-mini", TokenUsage(prompt=1000, completion=1000), "default", D("0.00075"), "tier"),
    # gpt-realtime-mini: text 0.6 / cached 0.06 / out 2.4, audio 10 / out 20, cached audio 0.3
    (
        "gpt-realtime-mini",
        TokenUsage(prompt=1000, cached=600, audio_cached=400, audio_input=300, completion=100),
        "",
        D("0.003432"),  # 100 × 0.6 + 200 × 0.06 + 400 × 0.3 + 300 × 10 + 100 × 2.4, ÷ 1M
        "cached audio at the cached audio rate, the other cached tokens at the cached text rate",
    ),
    # gpt-4o-2024-05-13 has its own row: 5 / 15, not gpt-4o's 2.5 / 10
    ("gpt-4o-2024-05-13", TokenUsage(prompt=1000, completion=1000), "", D("0.02"), "own row"),
    # gpt-4.1-mini: 0.4 / 0.1 / 1.6 — a snapshot the table does not list
    (
        "gpt-4.1-mini-2026-01-15",
        TokenUsage(prompt=1000, completion=1000),
        "",
        D("0.002"),
        "dated snapshot of a known model",
    ),
    ("gpt-4.1-mini-0115", TokenUsage(prompt=1000, completion=1000), "", D("0.002"), "-MMDD"),
    # ft:gpt-4o-mini-2024-07-18: 0.3 / 0.15 / 1.2 (twice the base model)
    (
        "ft:gpt-4o-mini-2024-07-18:acme::AbC123",
        TokenUsage(prompt=1000, cached=500, completion=1000),
        "",
        D("0.001425"),  # 500 × 0.3 + 500 × 0.15 + 1000 × 1.2
        "fine-tune priced by its base's fine-tune row",
    ),
    # alias gpt-4-0125-preview → gpt-4-turbo: 10 / 30 (gpt-4 would be 30 / 60)
    (
        "gpt-4-0125-preview",
        TokenUsage(prompt=1000, completion=1000),
        "",
        D("0.04"),
        "alias",
    ),
    # alias gpt-4o-audio-preview → gpt-4o-audio-preview-2025-06-03: text 2.5 / 10, audio
    # 40 / 80; audio tokens are inside prompt and completion
    (
        "gpt-4o-audio-preview",
        TokenUsage(prompt=1000, audio_input=800, completion=500, audio_output=400),
        "",
        D("0.0655"),  # 200 × 2.5 + 800 × 40 + 100 × 10 + 400 × 80
        "audio at audio rates",
    ),
    # daybreak-blue-latest: 4 / 0.4 / cache write 5 / 20; over 272k input: 8 / 0.8 / 30
    (
        "daybreak-blue-latest",
        TokenUsage(prompt=1000, cache_write=500, completion=100),
        "",
        D("0.0065"),  # 500 × 4 + 500 × 5 + 100 × 20
        "cache writes at the cache-write rate",
    ),
    (
        "daybreak-blue-latest",
        TokenUsage(prompt=300_000, cached=100_000, completion=1000),
        "",
        D("1.71"),  # 200,000 × 8 + 100,000 × 0.8 + 1000 × 30
        "a prompt over 272k tokens at the long-context rates",
    ),
    # web search on gpt-5: $0.01 a call on top of the tokens (125 + 1000 × 10 = 0.010125)
    (
        "gpt-5",
        TokenUsage(prompt=100, completion=1000, tool_calls={"web_search": 2}),
        "",
        D("0.030125"),
        "built-in tool fees",
    ),
    # web search preview on gpt-4o (non-reasoning): $0.025 a call; file search $0.0025
    (
        "gpt-4o",
        TokenUsage(prompt=1000, completion=100, tool_calls={"web_search_preview": 1}),
        "",
        D("0.0285"),
        "web search preview, non-reasoning model",
    ),
    (
        "gpt-4o",
        TokenUsage(
            prompt=1000,
            completion=100,
            tool_calls={
                "file_search": 3,
                "code_interpreter:4g": 1,
                "image_generation:gpt-image-1:high:1024x1536": 1,
            },
        ),
        "",
        D("0.381"),  # 0.0035 + 3 × 0.0025 + 0.12 + 0.25
        "file search, a 4 GB container, an image",
    ),
]


@pytest.mark.parametrize(("model", "usage", "tier", "expected", "why"), CASES)
def test_each_kind_of_call_is_priced_exactly(book, model, usage, tier, expected, why):
    cost, price = book.bill(model, usage, tier=tier, at=NOW)
    assert cost == expected, why
    assert price is not None and price.id is not None  # the record keeps the row


@pytest.mark.parametrize(
    ("model", "row", "rule"),
    [
        ("gpt-4o-mini", "gpt-4o-mini", "exact"),
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06", "exact"),
        ("gpt-4.1-nano-2026-02-02", "gpt-4.1-nano", "snapshot"),
        ("ft:gpt-4.1-2025-04-14:acme:support:xyz", "ft:gpt-4.1-2025-04-14", "fine-tune"),
        ("ft:gpt-3.5-turbo-0125:acme::x1", "ft:gpt-3.5-turbo-0125", "fine-tune"),
        ("gpt-4-turbo-preview", "gpt-4-turbo", "alias"),
        ("gpt-4o-mini-audio-preview", "gpt-4o-mini-audio-preview-2024-12-17", "alias"),
        # Never a guess by prefix:
        ("o1-mini", None, "unknown"),  # not o1
        # A snapshot of an alias is not the alias's snapshot (this one cost 2.5× more).
        ("gpt-4o-audio-preview-2024-10-01", None, "unknown"),
        ("gpt-4o-mni", None, "unknown"),  # a typo is not gpt-4o
        ("gpt-4-32k", None, "unknown"),  # not gpt-4
        ("ft:gpt-4o-mini:acme::x", None, "unknown"),  # not the base model's price
        ("gpt-6-nova", None, "unknown"),
        ("", None, "unknown"),
    ],
)
def test_model_names_resolve_by_explicit_rules_only(book, model, row, rule):
    assert book.resolution(model) == (row, rule)


def test_an_unknown_model_is_unpriced_never_free(book):
    assert book.bill("o1-mini", TokenUsage(prompt=10, completion=10), tier="", at=NOW) == (
        None,
        None,
    )
    # Nothing used costs nothing, whatever the model.
    assert book.bill("o1-mini", TokenUsage(), tier="", at=NOW) == (Decimal(0), None)


def test_a_tool_with_no_fee_makes_the_call_unpriced(book):
    usage = TokenUsage(prompt=10, completion=10, tool_calls={"image_generation:gpt-image-9:*:*": 1})
    cost, price = book.bill("gpt-4o", usage, tier="", at=NOW)
    assert cost is None and price is not None


def test_an_alias_edited_in_the_admin_applies_after_the_cache(book):
    from usage.models import ModelAlias

    ModelAlias.objects.create(alias="o1-mini", model="o1")
    price_book_reset()
    assert price_book().resolution("o1-mini") == ("o1", "alias")


@pytest.mark.parametrize(
    ("model", "ceiling", "expected"),
    [
        # The audio case: 100 text tokens in, up to 1000 tokens out, all of which may
        # be audio (80 per 1M): 100 × 2.5 + 1000 × 80. The old bound gave 0.01025.
        ("gpt-4o-audio-preview", Ceiling(input=100, output=1000, audio_output=True), D("0.08025")),
        # Audio input at its rate (40), text input at the dearest tier (none here: 2.5).
        ("gpt-4o-audio-preview", Ceiling(input=100, audio_input=1000, output=0), D("0.04025")),
        # gpt-4o: the dearest tier is priority (4.25 / 17).
        ("gpt-4o", Ceiling(input=1000, output=1000), D("0.02125")),
        # daybreak: cache writes (5) beat input (4), long context (8 / 30) beats both.
        ("daybreak-blue-latest", Ceiling(input=1000, output=1000), D("0.038")),
        # Tool fees: two web searches at $0.01, a 1 GB container at $0.03, an image of
        # unknown quality and size at the dearest ($0.25).
        (
            "gpt-5",
            Ceiling(
                input=0,
                output=0,
                tool_calls={
                    "web_search": 2,
                    "code_interpreter:1g": 1,
                    "image_generation:gpt-image-1:*:*": 1,
                },
            ),
            D("0.3"),
        ),
    ],
)
def test_the_worst_case_bounds_what_the_call_can_cost(book, model, ceiling, expected):
    price = book.price(model, NOW)
    assert book.worst_case(price, ceiling, model=model, at=NOW) == expected


def test_every_shipped_price_has_its_source_and_date(db):
    from usage.models import ModelAlias, ModelPrice, ToolPrice

    for table in (ModelPrice, ModelAlias, ToolPrice):
        rows = table.objects.all()
        assert rows.exists()
        assert not rows.filter(source="").exists(), table.__name__
        assert not rows.filter(source_date__isnull=True).exists(), table.__name__


def test_every_start_keeps_what_the_operator_edited_in_the_admin(db, tmp_path):
    """`make run` loads the shipped files at each start: an edit made in the admin (a price,
    an alias, a tool fee) survives it; a newer reading of the source replaces it."""
    import io

    from django.core.management import call_command

    from usage.models import ModelAlias, ModelPrice, ToolPrice

    ModelPrice.objects.filter(model="gpt-4o").update(input_per_1m=D("2.75"))
    ModelAlias.objects.filter(alias="gpt-4-turbo-preview").update(model="gpt-4-1106-preview")
    ToolPrice.objects.filter(tool="file_search").update(usd_per_call=D("0.003"))
    out = io.StringIO()
    call_command("load_prices", stdout=out)
    assert "kept as edited" in out.getvalue()
    assert ModelPrice.objects.filter(model="gpt-4o").get().input_per_1m == D("2.75")
    assert ModelAlias.objects.get(alias="gpt-4-turbo-preview").model == "gpt-4-1106-preview"
    assert ToolPrice.objects.get(tool="file_search").usd_per_call == D("0.003")

    newer = tmp_path / "prices.csv"
    newer.write_text(
        "model,input_per_1m,cached_input_per_1m,output_per_1m,mode,source,source_date\n"
        "gpt-4o,2.5,1.25,10,chat,openai.com/api/pricing,2027-01-05\n"
    )
    call_command("load_prices", str(newer), stdout=io.StringIO())
    rows = ModelPrice.objects.filter(model="gpt-4o").order_by("effective_from")
    assert [r.input_per_1m for r in rows] == [D("2.75"), D("2.5")]  # history kept, newer wins


@pytest.mark.parametrize(
    "model,ceiling,expected",
    [
        # gpt-4o-mini batch: 0.075 in / 0.3 out, not the dearest tier (priority 0.25 / 1).
        ("gpt-4o-mini", Ceiling(input=1000, output=1000), D("0.000375")),
        # gpt-4o batch: 1.25 / 5.
        ("gpt-4o", Ceiling(input=1000, output=1000), D("0.00625")),
        # text-embedding-3-small batch: 0.01 per 1M input tokens.
        ("text-embedding-3-small", Ceiling(input=1_000_000), D("0.01")),
        # A model with no batch rates: the dearest tier, as for any request (daybreak above).
        ("daybreak-blue-latest", Ceiling(input=1000, output=1000), D("0.038")),
    ],
)
def test_a_batch_line_is_bounded_at_the_batch_rates(book, model, ceiling, expected):
    price = book.price(model, NOW)
    assert book.worst_case(price, ceiling, model=model, at=NOW, tier="batch") == expected
    # And what it can cost is never less than what it is billed at the batch rates.
    billed, _ = book.bill(
        model, TokenUsage(prompt=ceiling.input, completion=ceiling.output), tier="batch", at=NOW
    )
    assert billed <= expected
