"""Self-service: an operator invites a user, who sets a password and makes their own keys.

- An invitation is a one-time link to set a password (Django's password-reset token: it stops
  working once the password is set, and after PASSWORD_RESET_TIMEOUT). It is emailed when the
  user has an address, and always given to the operator to pass on.
- A user makes, names, rotates and revokes their own keys, up to `UserLimit.max_keys` active
  keys (an operator's keys count too; no cap set means the user cannot make keys). A key the
  user makes has the limits they choose within their own: the user's limits apply to every key
  of theirs whatever it says, so no key can spend past them.
- Rotating a key makes its successor (same name and limits) and lets the old one work on for
  a grace period the user picks (at most ROTATE_GRACE_MAX), so a deployment can switch over.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from keys.models import ApiKey, UserLimit
from keys.services import LIMIT_FIELDS, key_issue, key_revoke, key_update_limits

log = logging.getLogger(__name__)

ROTATE_GRACE_MAX = dt.timedelta(days=7)


class SelfServiceRefused(Exception):
    """What the user asked for is not theirs to do; the message says why."""


@dataclasses.dataclass(frozen=True)
class Invitation:
    username: str
    link: str
    emailed_to: str  # "" when not emailed


def invite_path(user) -> str:  # noqa: ANN001 (any user model)
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return reverse("invite", kwargs={"uidb64": uid, "token": token})


def user_invite(*, username: str, email: str = "", base_url: str) -> Invitation:
    """Invite `username` (made if new, with no password): a one-time link to set a password,
    emailed when the user has an address. Inviting again gives a new link; a link already
    used no longer works."""
    user, made = get_user_model().objects.get_or_create(username=username)
    if made:
        user.set_unusable_password()
    if email:
        user.email = email
    user.save()
    link = base_url.rstrip("/") + invite_path(user)
    emailed_to = ""
    if user.email:
        try:
            send_mail(
                "Your OpenAI proxy account",
                f"Hello {user.get_username()},\n\nSet your password here (the link works once, "
                f"for {settings.PASSWORD_RESET_TIMEOUT // 86400} days):\n\n{link}\n\nThen make "
                f"your API key on your keys page.\n",
                None,
                [user.email],
            )
            emailed_to = user.email
        except Exception as exc:  # noqa: BLE001 (the operator still has the link)
            log.warning("invitation email to user %s failed (%s)", user.pk, type(exc).__name__)
    return Invitation(username=user.get_username(), link=link, emailed_to=emailed_to)


def user_max_keys_set(*, user, max_keys: int | None) -> UserLimit:  # noqa: ANN001
    """Let the user make their own keys, up to `max_keys` active ones (None: not at all)."""
    limit, _ = UserLimit.objects.get_or_create(user=user)
    limit.max_keys = max_keys
    limit.save(update_fields=["max_keys"])
    return limit


def _active_keys(user, now: dt.datetime):  # noqa: ANN001, ANN202
    return ApiKey.objects.filter(user=user, revoked_at__isnull=True).exclude(expires_at__lte=now)


def self_key_create(
    *,
    user,  # noqa: ANN001 (any user model)
    name: str,
    expires_at: dt.datetime | None = None,
    budget_usd=None,  # noqa: ANN001 (a Decimal or None)
    period: str | None = None,
) -> tuple[ApiKey, str]:
    """A key the user makes for themselves, within the cap their operator set. Returns the
    key and its secret (shown once)."""
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise SelfServiceRefused("The expiry must be in the future.")
    with transaction.atomic():
        # Locked: two keys made at once cannot both take the last place under the cap.
        limit = UserLimit.objects.select_for_update().filter(user=user).first()
        cap = limit.max_keys if limit is not None else None
        if not cap:
            raise SelfServiceRefused(
                "Your operator has not let you make keys yourself: ask them for one."
            )
        held = _active_keys(user, now).count()
        if held >= cap:
            raise SelfServiceRefused(
                f"You hold {held} active keys, the most your operator allows ({cap}): revoke "
                "one first."
            )
        limits = {"budget_usd": budget_usd}
        if period:
            limits["period"] = period
        return key_issue(
            username=user.get_username(), name=name[:100], expires_at=expires_at, **limits
        )


def _own_key(user, key_id: int) -> ApiKey:  # noqa: ANN001
    key = ApiKey.objects.filter(pk=key_id, user=user).first()
    if key is None:
        raise SelfServiceRefused("No such key of yours.")
    return key


def self_key_revoke(*, user, key_id: int) -> ApiKey:  # noqa: ANN001
    return key_revoke(api_key=_own_key(user, key_id))


def self_key_rotate(*, user, key_id: int, grace: dt.timedelta) -> tuple[ApiKey, str]:  # noqa: ANN001
    """The key's successor (same name and limits, a new secret), and the old key working on
    for `grace` (0: revoked at once). Rotating does not need a free place under the cap: the
    old key ends."""
    if grace < dt.timedelta(0) or grace > ROTATE_GRACE_MAX:
        raise SelfServiceRefused(f"The grace period is at most {ROTATE_GRACE_MAX.days} days.")
    now = timezone.now()
    with transaction.atomic():
        old = _own_key(user, key_id)
        if not old.is_active(now):
            raise SelfServiceRefused("That key is no longer active: make a new one instead.")
        new, secret = key_issue(
            username=user.get_username(),
            name=old.name,
            expires_at=old.expires_at,
            log_bodies=old.log_bodies,
            **{field: getattr(old, field) for field in LIMIT_FIELDS},
        )
        if grace:
            ends = now + grace
            if old.expires_at is None or old.expires_at > ends:
                key_update_limits(api_key=old, expires_at=ends)
        else:
            key_revoke(api_key=old)
    return new, secret
