"""Calling the fake over HTTP from a test, and counting what it should have billed with
tiktoken itself, so a test fails if the fake's own counting drifts."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import tiktoken
from multidict import CIMultiDict

from fakeopenai.app import DEFAULT_KEY
from fakeopenai.counting import install_encodings
from fakeopenai.server import FakeOpenAIThread

AUTH = {"Authorization": f"Bearer {DEFAULT_KEY}"}


def n_tokens(text: str, encoding: str = "o200k_base") -> int:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        install_encodings()  # counted at import time, before any fake was started
    return len(tiktoken.get_encoding(encoding).encode(text))


def openai_chat_count(messages: list[dict], encoding: str = "o200k_base") -> int:
    """OpenAI's documented recipe: 3 per message, its values, 3 to prime the reply."""
    return 3 + sum(3 + sum(n_tokens(v, encoding) for v in m.values()) for m in messages)


def _get(fake: FakeOpenAIThread, path: str) -> dict:
    async def fetch() -> dict:
        async with aiohttp.ClientSession() as session, session.get(f"{fake.origin}{path}") as r:
            return await r.json()

    return asyncio.run(fetch())


def stats(fake: FakeOpenAIThread) -> dict:
    return _get(fake, "/_fake/stats")


def bills(fake: FakeOpenAIThread) -> dict:
    return _get(fake, "/_fake/bills")


def bills_where(fake: FakeOpenAIThread, timeout: float = 2.0, **match: object) -> list[dict]:
    """The bills matching `match`, waiting for one: a request a client left is billed when
    its handler unwinds, a moment after the client saw its end."""
    deadline = time.monotonic() + timeout
    while True:
        found = [b for b in bills(fake)["bills"] if all(b[k] == v for k, v in match.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def post(fake: FakeOpenAIThread, path: str, body: dict) -> tuple[int, CIMultiDict, bytes]:
    async def run() -> tuple[int, CIMultiDict, bytes]:
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.post(f"{fake.base_url}{path}", json=body) as r,
        ):
            return r.status, r.headers.copy(), await r.read()

    return asyncio.run(run())


def bill_of(fake: FakeOpenAIThread, headers: CIMultiDict) -> dict:
    [bill] = bills_where(fake, request_id=headers["x-request-id"])
    return bill
