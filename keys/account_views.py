"""A user's own account pages: their keys (make, rotate, revoke), how to connect, and the
invitation link that sets their first password (keys.selfservice holds the rules)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from keys.models import ApiKey, Period, UserLimit
from keys.selectors import ledger_for
from keys.selfservice import (
    ROTATE_GRACE_MAX,
    SelfServiceRefused,
    self_key_create,
    self_key_revoke,
    self_key_rotate,
)
from usage.models import UsageRecord

GRACES = [
    (0, "none: revoke it now"),
    (3600, "1 hour"),
    (86400, "1 day"),
    (int(ROTATE_GRACE_MAX.total_seconds()), f"{ROTATE_GRACE_MAX.days} days"),
]


class NewKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Where you will use it: laptop, ci, app…")
    expires = forms.DateField(required=False, help_text="Optional: it stops working that day.")
    budget_usd = forms.CharField(
        required=False, label="Budget (USD)", help_text="Optional; your own limits apply anyway."
    )
    period = forms.ChoiceField(choices=Period.choices, initial=Period.MONTH)

    def clean_expires(self) -> dt.datetime | None:
        day = self.cleaned_data.get("expires")
        if day is None:
            return None
        when = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        if when <= timezone.now():
            raise forms.ValidationError("The expiry must be a day in the future.")
        return when

    def clean_budget_usd(self) -> Decimal | None:
        raw = (self.cleaned_data.get("budget_usd") or "").strip().lstrip("$")
        if not raw:
            return None
        try:
            amount = Decimal(raw)
        except InvalidOperation:
            raise forms.ValidationError(f"Not an amount in USD: '{raw[:20]}'.") from None
        if not amount.is_finite() or amount < 0 or amount >= Decimal("1e12"):
            raise forms.ValidationError("The budget is an amount from 0 to under $1e12.")
        if amount != amount.quantize(Decimal("0.000001")):
            raise forms.ValidationError("At most 6 decimal places.")
        return amount


def _keys_context(request: HttpRequest, form: NewKeyForm, **extra: object) -> dict:
    user, now = request.user, timezone.now()
    rows = []
    for key in ApiKey.objects.filter(user=user).order_by("-created_at"):
        ledger = ledger_for(api_key_id=key.id, period=key.period, now=now)
        last = (
            UsageRecord.objects.filter(api_key=key)
            .order_by("-created_at")
            .values_list("created_at", flat=True)
            .first()
        )
        rows.append(
            {
                "key": key,
                "status": key.status,
                "active": key.is_active(now),
                "spent": ledger.spent_usd if ledger is not None else Decimal(0),
                "last_used": last,
            }
        )
    limit = UserLimit.objects.filter(user=user).first()
    cap = limit.max_keys if limit is not None else None
    return {
        "rows": rows,
        "form": form,
        "cap": cap,
        "active_count": sum(1 for row in rows if row["active"]),
        "graces": GRACES,
        "base_url": request.build_absolute_uri("/v1"),
        **extra,
    }


def _shown_once(request: HttpRequest, context: dict) -> HttpResponse:
    response = render(request, "keys/account_keys.html", context)
    response["Cache-Control"] = "no-store"  # the page holds a secret
    return response


@login_required
@require_http_methods(["GET", "POST"])
def account_keys(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "keys/account_keys.html", _keys_context(request, NewKeyForm()))
    form = NewKeyForm(request.POST)
    if not form.is_valid():
        return render(request, "keys/account_keys.html", _keys_context(request, form), status=400)
    data = form.cleaned_data
    try:
        key, secret = self_key_create(
            user=request.user,
            name=data["name"],
            expires_at=data["expires"],
            budget_usd=data["budget_usd"],
            period=data["period"],
        )
    except SelfServiceRefused as no:
        form.add_error(None, str(no))
        return render(request, "keys/account_keys.html", _keys_context(request, form), status=403)
    return _shown_once(request, _keys_context(request, NewKeyForm(), secret=secret, made=key))


@login_required
@require_POST
def account_key_rotate(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        grace = dt.timedelta(seconds=int(request.POST.get("grace", "0")))
        key, secret = self_key_rotate(user=request.user, key_id=key_id, grace=grace)
    except (ValueError, OverflowError):
        messages.error(request, "Choose a grace period from the list.")
        return redirect("account_keys")
    except SelfServiceRefused as no:
        messages.error(request, str(no))
        return redirect("account_keys")
    return _shown_once(
        request, _keys_context(request, NewKeyForm(), secret=secret, made=key, rotated=True)
    )


@login_required
@require_POST
def account_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        key = self_key_revoke(user=request.user, key_id=key_id)
    except SelfServiceRefused as no:
        messages.error(request, str(no))
    else:
        messages.success(request, f"Key {key.prefix}… is revoked: it stops working at once.")
    return redirect("account_keys")


class InviteView(auth_views.PasswordResetConfirmView):
    """The invitation link: set a first password, then straight to the keys page."""

    template_name = "registration/invite_confirm.html"
    post_reset_login = True
    post_reset_login_backend = "django.contrib.auth.backends.ModelBackend"
    success_url = reverse_lazy("account_keys")
