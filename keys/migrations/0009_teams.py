"""Teams (organisation → team → user → key): a team has the limits users and keys have, and a
ledger row per period like theirs, reserved in the same statement.

On PostgreSQL, `oaiproxy_quota_reserve_teams` is the one-call reservation of migration 0005
with the team's conditional UPDATE after the user's (NULL team arguments: no team). The older
functions stay, so processes of the previous release still serving while `migrate` runs go on
reserving as they did. The ledger's owner check becomes "exactly one of key, user, team";
every existing row (a key's or a user's) passes it."""

from decimal import Decimal

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

FUNCTION = """
CREATE OR REPLACE FUNCTION oaiproxy_quota_reserve_teams(
    p_key_ledger bigint, p_user_ledger bigint, p_key_id bigint, p_user_id bigint,
    p_key_start timestamptz, p_user_start timestamptz, p_cost numeric, p_tokens bigint,
    p_key_budget numeric, p_key_token_limit bigint, p_key_request_limit bigint,
    p_user_budget numeric, p_user_token_limit bigint, p_user_request_limit bigint,
    p_team_ledger bigint, p_team_id bigint, p_team_start timestamptz, p_team_budget numeric,
    p_team_token_limit bigint, p_team_request_limit bigint)
RETURNS TABLE(
    k_spent numeric, k_reserved numeric, k_tokens bigint, k_reserved_tokens bigint,
    k_requests bigint, u_spent numeric, u_reserved numeric, u_tokens bigint,
    u_reserved_tokens bigint, u_requests bigint, t_spent numeric, t_reserved numeric,
    t_tokens bigint, t_reserved_tokens bigint, t_requests bigint)
LANGUAGE plpgsql AS $$
BEGIN
  -- The same conditional UPDATEs as keys.services._reserve_one, key row, user row, team row
  -- (the order quota_settle locks them in): the WHERE is evaluated on the locked row, so
  -- concurrent reservations can never together pass a budget.
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
  IF p_team_ledger IS NOT NULL THEN
    UPDATE keys_quotaledger l
       SET reserved_usd = l.reserved_usd + p_cost, reserved_tokens = l.reserved_tokens + p_tokens,
           requests = l.requests + 1
     WHERE l.id = p_team_ledger AND l.team_id = p_team_id AND l.period_start = p_team_start
       AND (p_team_budget IS NULL OR l.spent_usd + l.reserved_usd + p_cost <= p_team_budget)
       AND (p_team_token_limit IS NULL
            OR l.tokens + l.reserved_tokens + p_tokens <= p_team_token_limit)
       AND (p_team_request_limit IS NULL OR l.requests + 1 <= p_team_request_limit)
       -- Still a member: a user moved out of the team stops spending its budget at once.
       AND EXISTS (SELECT 1 FROM keys_teammember m WHERE m.team_id = p_team_id
                    AND m.user_id = p_user_id)
    RETURNING l.spent_usd, l.reserved_usd, l.tokens, l.reserved_tokens, l.requests
         INTO t_spent, t_reserved, t_tokens, t_reserved_tokens, t_requests;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'oaiproxy: team quota' USING ERRCODE = 'P0001';
    END IF;
  END IF;
  RETURN NEXT;
END $$;
"""

SIGNATURE = (
    "bigint, bigint, bigint, bigint, timestamptz, timestamptz, numeric, bigint,"
    " numeric, bigint, bigint, numeric, bigint, bigint,"
    " bigint, bigint, timestamptz, numeric, bigint, bigint"
)


def create_function(apps, schema_editor) -> None:  # noqa: ANN001 (migration signature)
    if schema_editor.connection.vendor != "postgresql":
        return
    users = apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table
    schema_editor.execute(FUNCTION.replace("{users}", users))


def drop_function(apps, schema_editor) -> None:  # noqa: ANN001
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION IF EXISTS oaiproxy_quota_reserve_teams({SIGNATURE})")


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0008_self_service_keys"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="Team",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "budget_usd",
                    models.DecimalField(
                        blank=True,
                        decimal_places=12,
                        help_text="Spend allowed per period.",
                        max_digits=22,
                        null=True,
                        validators=[django.core.validators.MinValueValidator(Decimal("0"))],
                        verbose_name="budget (USD)",
                    ),
                ),
                (
                    "period",
                    models.CharField(
                        choices=[
                            ("day", "Day (UTC)"),
                            ("week", "Week (Monday, UTC)"),
                            ("month", "Month (UTC)"),
                            ("total", "Total (never resets)"),
                        ],
                        default="total",
                        max_length=8,
                    ),
                ),
                (
                    "budget_mode",
                    models.CharField(
                        blank=True,
                        choices=[
                            ("", "as the user / the proxy's default"),
                            ("strict", "strict: refuse it (400 saying what to send)"),
                            ("estimate", "estimate: reserve the documented defaults"),
                        ],
                        db_default="",
                        default="",
                        help_text="A key's choice wins over its user's; empty means PROXY_BUDGET_MODE.",
                        max_length=8,
                    ),
                ),
                (
                    "token_limit",
                    models.PositiveBigIntegerField(
                        blank=True,
                        help_text="Tokens (input + output) allowed per period.",
                        null=True,
                    ),
                ),
                (
                    "request_limit",
                    models.PositiveIntegerField(
                        blank=True, help_text="Requests allowed per period.", null=True
                    ),
                ),
                (
                    "rpm",
                    models.PositiveIntegerField(
                        blank=True, null=True, verbose_name="requests per minute"
                    ),
                ),
                (
                    "tpm",
                    models.PositiveIntegerField(
                        blank=True, null=True, verbose_name="tokens per minute"
                    ),
                ),
                (
                    "max_concurrent",
                    models.PositiveIntegerField(
                        blank=True, null=True, verbose_name="max concurrent requests"
                    ),
                ),
                (
                    "allowed_models",
                    models.TextField(
                        blank=True,
                        help_text="Comma-separated model names this may use (`gpt-4o*` patterns allowed); empty allows every model.",
                    ),
                ),
                ("name", models.CharField(max_length=100, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.CreateModel(
            name="TeamMember",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "is_admin",
                    models.BooleanField(
                        default=False,
                        help_text="Sees the whole team's usage and its members' dashboards.",
                        verbose_name="team admin",
                    ),
                ),
                ("joined_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "verbose_name": "team member",
            },
        ),
        migrations.RemoveConstraint(
            model_name="quotaledger",
            name="ledger_key_xor_user",
        ),
        migrations.AddField(
            model_name="quotaledger",
            name="team",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, to="keys.team"
            ),
        ),
        migrations.AddConstraint(
            model_name="quotaledger",
            constraint=models.UniqueConstraint(
                condition=models.Q(("team__isnull", False)),
                fields=("team", "period", "period_start"),
                name="ledger_one_row_per_team_period",
            ),
        ),
        migrations.AddConstraint(
            model_name="quotaledger",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("api_key__isnull", False), ("team__isnull", True), ("user__isnull", True)
                    ),
                    models.Q(
                        ("api_key__isnull", True), ("team__isnull", True), ("user__isnull", False)
                    ),
                    models.Q(
                        ("api_key__isnull", True), ("team__isnull", False), ("user__isnull", True)
                    ),
                    _connector="OR",
                ),
                name="ledger_one_owner",
            ),
        ),
        migrations.AddField(
            model_name="teammember",
            name="team",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="members", to="keys.team"
            ),
        ),
        migrations.AddField(
            model_name="teammember",
            name="user",
            field=models.OneToOneField(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="team_membership",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(create_function, drop_function),
    ]
