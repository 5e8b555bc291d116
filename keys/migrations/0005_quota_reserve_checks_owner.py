"""PostgreSQL only: the one-call reservation also checks that each ledger row belongs to the
key / user and period it is reserved for, so a wrong cached id can miss but never bill another
tenant. keys.services._reserve_in_one_call calls it inside the statement that also writes the
request's pending usage record (one round trip)."""

from __future__ import annotations

from django.conf import settings
from django.db import migrations

NEW_SIGNATURE = (
    "bigint, bigint, bigint, bigint, timestamptz, timestamptz, numeric, bigint,"
    " numeric, bigint, bigint, numeric, bigint, bigint"
)

FUNCTION = """
CREATE OR REPLACE FUNCTION oaiproxy_quota_reserve(
    p_key_ledger bigint, p_user_ledger bigint, p_key_id bigint, p_user_id bigint,
    p_key_start timestamptz, p_user_start timestamptz, p_cost numeric, p_tokens bigint,
    p_key_budget numeric, p_key_token_limit bigint, p_key_request_limit bigint,
    p_user_budget numeric, p_user_token_limit bigint, p_user_request_limit bigint)
RETURNS TABLE(
    k_spent numeric, k_reserved numeric, k_tokens bigint, k_reserved_tokens bigint,
    k_requests bigint, u_spent numeric, u_reserved numeric, u_tokens bigint,
    u_reserved_tokens bigint, u_requests bigint)
LANGUAGE plpgsql AS $$
BEGIN
  -- The same conditional UPDATEs as keys.services._reserve_one: the WHERE is evaluated on the
  -- locked row, so concurrent reservations can never together pass a budget.
  UPDATE keys_quotaledger l
     SET reserved_usd = l.reserved_usd + p_cost, reserved_tokens = l.reserved_tokens + p_tokens,
         requests = l.requests + 1
   WHERE l.id = p_key_ledger AND l.api_key_id = p_key_id AND l.period_start = p_key_start
     AND (p_key_budget IS NULL OR l.spent_usd + l.reserved_usd + p_cost <= p_key_budget)
     AND (p_key_token_limit IS NULL OR l.tokens + l.reserved_tokens + p_tokens <= p_key_token_limit)
     AND (p_key_request_limit IS NULL OR l.requests + 1 <= p_key_request_limit)
     AND EXISTS (SELECT 1 FROM keys_apikey k JOIN {users} u ON u.id = k.user_id
                  WHERE k.id = p_key_id AND k.revoked_at IS NULL AND u.is_active)
  RETURNING l.spent_usd, l.reserved_usd, l.tokens, l.reserved_tokens, l.requests
       INTO k_spent, k_reserved, k_tokens, k_reserved_tokens, k_requests;
  IF NOT FOUND THEN
    RETURN;  -- no row: the caller takes the slow path, which says why
  END IF;
  UPDATE keys_quotaledger l
     SET reserved_usd = l.reserved_usd + p_cost, reserved_tokens = l.reserved_tokens + p_tokens,
         requests = l.requests + 1
   WHERE l.id = p_user_ledger AND l.user_id = p_user_id AND l.period_start = p_user_start
     AND (p_user_budget IS NULL OR l.spent_usd + l.reserved_usd + p_cost <= p_user_budget)
     AND (p_user_token_limit IS NULL OR l.tokens + l.reserved_tokens + p_tokens <= p_user_token_limit)
     AND (p_user_request_limit IS NULL OR l.requests + 1 <= p_user_request_limit)
  RETURNING l.spent_usd, l.reserved_usd, l.tokens, l.reserved_tokens, l.requests
       INTO u_spent, u_reserved, u_tokens, u_reserved_tokens, u_requests;
  IF NOT FOUND THEN
    -- Undo the key's reservation with the whole statement.
    RAISE EXCEPTION 'oaiproxy: user quota' USING ERRCODE = 'P0001';
  END IF;
  RETURN NEXT;
END $$;
"""


def create(apps, schema_editor) -> None:  # noqa: ANN001 (migration signature)
    if schema_editor.connection.vendor != "postgresql":
        return
    users = apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table
    # A new overload beside migration 0003's: processes of the previous release, still
    # serving while `migrate` runs, go on calling the old one. A later release may drop it.
    schema_editor.execute(FUNCTION.replace("{users}", users))


def drop(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION IF EXISTS oaiproxy_quota_reserve({NEW_SIGNATURE})")


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0004_exact_money_and_relay_processes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]
    operations = [migrations.RunPython(create, drop)]
