from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from fakeopenai.app import DEFAULT_KEY
from fakeopenai.server import FakeOpenAIThread


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIThread]:
    with FakeOpenAIThread() as server:
        yield server


@pytest.fixture
def client(fake: FakeOpenAIThread) -> openai.OpenAI:
    fake.state.responses.clear()
    return openai.OpenAI(api_key=DEFAULT_KEY, base_url=fake.base_url, max_retries=0)
