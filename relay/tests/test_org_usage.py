"""The client of OpenAI's organization Usage and Costs API (relay.org_usage), read against the
fake upstream's: every family and every page, by day and the model OpenAI names."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import openai
import pytest

from fakeopenai.app import DEFAULT_KEY
from fakeopenai.org_api import DEFAULT_ADMIN_KEY
from fakeopenai.server import FakeOpenAIThread
from relay.org_usage import OrgUsageError, model_of_line_item, org_usage_fetch


@pytest.fixture
def fake(settings) -> Iterator[FakeOpenAIThread]:
    with FakeOpenAIThread() as server:
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_ADMIN_KEY = DEFAULT_ADMIN_KEY
        yield server


def test_tokens_are_text_and_audio_together_and_images_report_none(fake):
    client = openai.OpenAI(api_key=DEFAULT_KEY, base_url=fake.base_url, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-audio-preview",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "Say it out loud."}],
    )
    client.images.generate(model="dall-e-3", prompt="a ledger", size="1024x1024")
    [spoken] = [b for b in fake.state.bills.values() if b["path"] == "/v1/chat/completions"]
    assert spoken["audio_output_tokens"] > 0
    today = dt.datetime.now(dt.UTC).date()

    # Ten days: two pages of OpenAI's default seven buckets.
    usage = org_usage_fetch(start=today - dt.timedelta(days=9), end=today)

    audio = usage[(today, "gpt-4o-audio-preview")]
    assert audio.requests == 1
    assert audio.input_tokens == spoken["prompt_tokens"]
    assert audio.output_tokens == spoken["completion_tokens"]  # its audio tokens included
    image = usage[(today, "dall-e-3")]
    assert (image.requests, image.input_tokens, image.output_tokens) == (1, None, None)


def test_a_day_outside_the_range_is_not_read(fake):
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    client = openai.OpenAI(api_key=DEFAULT_KEY, base_url=fake.base_url, max_retries=0)
    client.embeddings.create(model="text-embedding-3-small", input="today only")
    assert org_usage_fetch(start=yesterday, end=yesterday) == {}


@pytest.mark.parametrize(
    ("line_item", "model"),
    [
        ("gpt-4o-mini-2024-07-18, input", "gpt-4o-mini-2024-07-18"),
        ("gpt-4o-mini-2024-07-18, cached input", "gpt-4o-mini-2024-07-18"),
        ("gpt-audio-mini-2025-12-15 audio, input", "gpt-audio-mini-2025-12-15"),
        ("web search tool calls", "web search tool calls"),
        (None, ""),
    ],
)
def test_a_cost_line_item_is_counted_under_its_model(line_item, model):
    assert model_of_line_item(line_item) == model


def test_a_refused_key_is_one_line(fake, settings):
    settings.OPENAI_ADMIN_KEY = DEFAULT_KEY  # the project key is not an admin key
    today = dt.datetime.now(dt.UTC).date()
    with pytest.raises(OrgUsageError, match=r"refused OPENAI_ADMIN_KEY \(401\)") as refused:
        org_usage_fetch(start=today, end=today)
    assert "\n" not in str(refused.value)
