"""Start-up and shut-down of a relay process (called from the ASGI lifespan in asgi.py)."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async

from relay import recording, upstream
from relay.tokens import count_text, install_encodings

log = logging.getLogger(__name__)


async def startup() -> None:
    # Unpack tiktoken's encodings and load both (about a second) before the first request
    # needs them, instead of during it. Never a download.
    await sync_to_async(install_encodings, thread_sensitive=False)()
    for model in ("gpt-4o", "gpt-4"):
        await sync_to_async(count_text, thread_sensitive=False)("warm up", model)


async def shutdown() -> None:
    try:
        await asyncio.wait_for(recording.drain(), timeout=30)
    except TimeoutError:
        log.error("shutdown: %d usage records still unwritten after 30 s", recording.pending())
    await upstream.close()
