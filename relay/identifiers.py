"""What upstream is told about who is calling. Every user shares the operator's one OpenAI
account, so two things a client sends are made per user before they go upstream:

- `Idempotency-Key`: OpenAI keeps one namespace per account, so two tenants sending the same
  key would get each other's answer. Upstream gets a keyed hash of (user, key) instead.
- `safety_identifier` (chat completions and Responses; legacy completions have none): without
  one, OpenAI's abuse signals point at the operator's account as a whole. Upstream gets a keyed
  hash of the user (PROXY_SAFETY_IDENTIFIER, on by default), stable across keys and restarts,
  revealing nothing about the user. A client's own identifier (its end-user) is kept, hashed,
  after the user's part: it cannot pass for another tenant's, and OpenAI can still tell the
  client's end-users apart. 64 characters at most, within OpenAI's limit.

Both hashes are HMAC-SHA256 keyed by SECRET_KEY: a new SECRET_KEY gives every user new ones.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from django.conf import settings

SAFETY_IDENTIFIED = frozenset({"chat", "responses"})


def _keyed(purpose: str, value: str) -> str:
    message = f"{purpose}\x00{value}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=4096)
def user_safety_identifier(user_id: int) -> str:
    return _keyed("safety_identifier", str(user_id))


def safety_identifier(user_id: int, client_value: object) -> str:
    """What upstream gets as `safety_identifier` for a request of `user_id` whose body named
    `client_value` (None when it named none)."""
    own = user_safety_identifier(user_id)
    if not isinstance(client_value, str) or not client_value:
        return own
    end_user = hashlib.sha256(client_value.encode()).hexdigest()
    return f"{own[:32]}-{end_user[:31]}"


def idempotency_key(user_id: int, client_key: str) -> str:
    """The Idempotency-Key upstream gets for `client_key` from `user_id`: the same for the
    same user (a retry of one user's request still matches), never another user's."""
    return _keyed("idempotency-key", f"{user_id}\x00{client_key}")
