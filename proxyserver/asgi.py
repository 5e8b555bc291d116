"""The ASGI application, with the startup and shutdown the relay needs.

Django's handler does not speak the ASGI lifespan protocol, so a thin wrapper does: at
startup the tiktoken encodings are unpacked, at shutdown pending usage records are written
and the upstream connection pool is closed.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")

django_application = get_asgi_application()


async def application(scope: dict, receive, send) -> None:  # noqa: ANN001 (ASGI callables)
    if scope["type"] != "lifespan":
        await django_application(scope, receive, send)
        return
    from relay import lifecycle

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await lifecycle.startup()
            except Exception as exc:  # noqa: BLE001 (reported to the server, which exits)
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
