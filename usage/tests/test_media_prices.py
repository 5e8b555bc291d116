"""Media prices: the rules (pure), and migration 0006 on rows the earlier schema wrote."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from relay.media_metering import image_output_tokens
from relay.multipart import BadForm, parse
from usage.pricing import Ceiling, Price, PriceBook, TokenUsage, ToolFee

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def price(model: str, **rates: str) -> Price:
    return Price(model=model, effective_from=EPOCH, rates={k: Decimal(v) for k, v in rates.items()})


GPT_IMAGE = price(
    "gpt-image-1", input_per_1m="5", image_input_per_1m="10", image_output_per_1m="40"
)
TTS = price("tts-1", characters_per_1m="15")
WHISPER = price("whisper-1", audio_per_minute="0.006")
DALL_E = price("dall-e-3")
BOOK = PriceBook(
    [GPT_IMAGE, TTS, WHISPER, DALL_E],
    tool_fees=[ToolFee("image", ("dall-e-3",), "hd:1024x1792", Decimal("0.12"), EPOCH)],
)


def test_image_tokens_are_billed_at_image_rates_and_text_at_text_rates():
    usage = TokenUsage(prompt=1010, image_input=1000, completion=4160, image_output=4160)
    cost, _ = BOOK.bill("gpt-image-1", usage, tier="", at=NOW)
    assert cost == (10 * 5 + 1000 * 10 + 4160 * 40) / Decimal(1_000_000)


def test_characters_and_seconds_at_their_rates():
    assert BOOK.bill("tts-1", TokenUsage(characters=1000), tier="", at=NOW)[0] == Decimal("0.015")
    assert BOOK.bill("whisper-1", TokenUsage(audio_seconds=90), tier="", at=NOW)[0] == Decimal(
        "0.009"
    )


def test_dall_e_is_priced_per_image_from_the_fee_table_only():
    usage = TokenUsage(tool_calls={"image:hd:1024x1792": 2})
    assert BOOK.bill("dall-e-3", usage, tier="", at=NOW)[0] == Decimal("0.24")
    # A size with no fee is unpriced, never $0.
    assert (
        BOOK.bill("dall-e-3", TokenUsage(tool_calls={"image:hd:512x512": 1}), tier="", at=NOW)[0]
        is None
    )


def test_units_a_row_has_no_rate_for_are_unpriced_never_free():
    no_image_rates = price("gpt-image-2", input_per_1m="5")
    book = PriceBook([no_image_rates])
    assert (
        book.bill(
            "gpt-image-2", TokenUsage(prompt=5, completion=100, image_output=100), tier="", at=NOW
        )[0]
        is None
    )
    assert (
        book.worst_case(
            no_image_rates, Ceiling(input=5, image_output=100), model="gpt-image-2", at=NOW
        )
        is None
    )
    assert BOOK.bill("tts-1", TokenUsage(audio_seconds=3), tier="", at=NOW)[0] is None


def test_the_worst_case_covers_the_bill():
    ceiling = Ceiling(input=20, image_input=7000, image_output=2 * 6240)
    worst = BOOK.worst_case(GPT_IMAGE, ceiling, model="gpt-image-1", at=NOW)
    billed, _ = BOOK.bill(
        "gpt-image-1",
        TokenUsage(prompt=7020, image_input=7000, completion=12480, image_output=12480),
        tier="",
        at=NOW,
    )
    assert worst == billed


def test_image_output_tokens_follow_openais_table_and_bound_other_sizes_by_area():
    assert image_output_tokens("low", "1024x1024") == 272
    assert image_output_tokens("high", "1024x1536") == 6240
    assert image_output_tokens("auto", "auto") == 6240
    assert image_output_tokens("high", "2048x2048") > 6240
    assert image_output_tokens("medium", "nonsense") == 1584


def test_a_multipart_form_is_read_without_copying_its_parts():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF\r\n\r\nbytes\r\n--b--\r\n"
    )
    form = parse(body, "multipart/form-data; boundary=b")
    assert form.get("model") == "whisper-1"
    [upload] = form.files
    assert (upload.name, upload.filename, upload.data) == ("file", "a.wav", b"RIFF\r\n\r\nbytes")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "multipart/form-data; boundary=b"),
        (b"--b\r\nno end", "multipart/form-data; boundary=b"),
        (
            b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--",
            "multipart/form-data; boundary=b",
        ),
        (b"--b--", "application/json"),
        (
            b"--b" + b"\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b" * 300,
            "multipart/form-data; boundary=b",
        ),
    ],
)
def test_a_broken_form_is_refused_by_name(body, content_type):
    with pytest.raises(BadForm):
        parse(body, content_type)


# --- migration 0006 on what 0005 wrote -------------------------------------------------------

BEFORE = [("usage", "0005_billing_rows_protect_owners")]
AFTER = [("usage", "0006_media_prices_and_units")]


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_records_and_prices_and_adds_the_media_rows():
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(BEFORE)
        apps = executor.loader.project_state(BEFORE).apps
        Price_ = apps.get_model("usage", "ModelPrice")
        Record = apps.get_model("usage", "UsageRecord")
        User = apps.get_model("auth", "User")
        Key = apps.get_model("keys", "ApiKey")
        own = Price_.objects.create(
            model="my-image-model", input_per_1m=Decimal("1"), source="mine"
        )
        Price_.objects.filter(model="gpt-image-1").update(input_per_1m=Decimal("5"))
        user = User.objects.create(username="old")
        key = Key.objects.create(user=user, key_hash="h" * 64, prefix="sk-proxy-old")
        record = Record.objects.create(
            user=user,
            api_key=key,
            key_prefix="sk-proxy-old",
            created_at=NOW,
            endpoint="chat/completions",
            status_code=200,
            prompt_tokens=7,
            cost_usd=Decimal("0.000123456789"),
        )
        before = Record.objects.filter(pk=record.pk).values().get()
        executor = MigrationExecutor(connection)
        executor.migrate(AFTER)
        apps = executor.loader.project_state(AFTER).apps
        Record = apps.get_model("usage", "UsageRecord")
        Price_ = apps.get_model("usage", "ModelPrice")
        ToolPrice = apps.get_model("usage", "ToolPrice")
        after = Record.objects.filter(pk=record.pk).values().get()
        assert {k: after[k] for k in before} == before
        assert (after["characters"], after["audio_seconds"], after["image_output_tokens"]) == (
            0,
            0,
            0,
        )
        assert Price_.objects.get(pk=own.pk).image_output_per_1m is None  # an operator's own row
        image = Price_.objects.filter(model="gpt-image-1").latest("effective_from")
        assert image.image_output_per_1m == Decimal("40")
        assert Price_.objects.get(model="whisper-1").audio_per_minute == Decimal("0.006")
        assert Price_.objects.get(model="tts-1-hd").characters_per_1m == Decimal("30")
        assert ToolPrice.objects.filter(tool="image", model_patterns="dall-e-3").count() == 6
    finally:
        MigrationExecutor(connection).migrate(
            MigrationExecutor(connection).loader.graph.leaf_nodes()
        )
