"""The Realtime API through the proxy: the WebSocket at /v1/realtime, relayed both ways, metered.

proxyserver.asgi routes the socket to `serve`, and any other WebSocket to `refuse_handshake`.
The parts, in the order a session meets them:

- `handshake`: everything before the handshake (the proxy key, the model, the session's own
  grant, OpenAI's handshake), each refusal answered as an HTTP error in OpenAI's shape.
- `session`: one accepted session (`RealtimeRelay`): the two directions relaying frames as
  they come, and how the session ends.
- `budget`: each response sized at its worst case and reserved before it can run.
- `settlement`: each reservation's end (its `response.done` usage priced, else the proxy's
  estimate) and the session's own record.
- `events`: what the proxy itself says on the socket: error events and close reasons made
  from a refusal, the ids of the events it sends.
"""

from __future__ import annotations

from relay.realtime.handshake import refuse_handshake, serve

__all__ = ["refuse_handshake", "serve"]
