"""Prices, one record per authenticated request, and the per-day rollup the reports read."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.conf import settings
from django.db import models

from keys.fields import MoneyField
from keys.models import ApiKey

PRICE = {"max_digits": 16, "decimal_places": 6, "null": True, "blank": True}

# Columns of the shipped price file (USD per 1M tokens) that are prices, in file order.
PRICE_COLUMNS = (
    "input_per_1m",
    "cached_input_per_1m",
    "cache_write_per_1m",
    "output_per_1m",
    "batch_input_per_1m",
    "batch_cached_input_per_1m",
    "batch_output_per_1m",
    "flex_input_per_1m",
    "flex_cached_input_per_1m",
    "flex_output_per_1m",
    "priority_input_per_1m",
    "priority_cached_input_per_1m",
    "priority_output_per_1m",
    "gt272k_input_per_1m",
    "gt272k_cached_input_per_1m",
    "gt272k_output_per_1m",
    "audio_input_per_1m",
    "audio_output_per_1m",
    "audio_cached_input_per_1m",
    "image_input_per_1m",
    "image_cached_input_per_1m",
    "image_output_per_1m",
    "characters_per_1m",
    "audio_per_minute",
)

# A price row valid since the beginning: what the shipped file is loaded with.
ALWAYS = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ModelPrice(models.Model):
    """OpenAI's price of one model, in USD per 1M tokens, from `effective_from` on.

    A change of price adds a row instead of editing one, so records keep the price they were
    made at and a report can say which price applied when.
    """

    model = models.CharField(max_length=120)
    effective_from = models.DateTimeField(default=ALWAYS)
    mode = models.CharField(max_length=32, blank=True)
    input_per_1m = models.DecimalField("input", **PRICE)
    cached_input_per_1m = models.DecimalField("cached input", **PRICE)
    cache_write_per_1m = models.DecimalField("cache write", **PRICE)
    output_per_1m = models.DecimalField("output", **PRICE)
    batch_input_per_1m = models.DecimalField("batch input", **PRICE)
    batch_cached_input_per_1m = models.DecimalField("batch cached input", **PRICE)
    batch_output_per_1m = models.DecimalField("batch output", **PRICE)
    flex_input_per_1m = models.DecimalField("flex input", **PRICE)
    flex_cached_input_per_1m = models.DecimalField("flex cached input", **PRICE)
    flex_output_per_1m = models.DecimalField("flex output", **PRICE)
    priority_input_per_1m = models.DecimalField("priority input", **PRICE)
    priority_cached_input_per_1m = models.DecimalField("priority cached input", **PRICE)
    priority_output_per_1m = models.DecimalField("priority output", **PRICE)
    gt272k_input_per_1m = models.DecimalField("input over 272k", **PRICE)
    gt272k_cached_input_per_1m = models.DecimalField("cached input over 272k", **PRICE)
    gt272k_output_per_1m = models.DecimalField("output over 272k", **PRICE)
    audio_input_per_1m = models.DecimalField("audio input", **PRICE)
    audio_output_per_1m = models.DecimalField("audio output", **PRICE)
    audio_cached_input_per_1m = models.DecimalField("audio cached input", **PRICE)
    # Image models bill image tokens at their own rates (text tokens at the rates above).
    image_input_per_1m = models.DecimalField("image input", **PRICE)
    image_cached_input_per_1m = models.DecimalField("image cached input", **PRICE)
    image_output_per_1m = models.DecimalField("image output", **PRICE)
    # Models not billed by the token: speech per character (tts-1), audio per minute
    # (whisper-1). DALL·E is billed per image by the fee table (ToolPrice, tool "image").
    characters_per_1m = models.DecimalField(
        "per 1M characters", **PRICE, help_text="USD per 1M characters of input (tts-1)."
    )
    audio_per_minute = models.DecimalField(
        "per minute of audio", **PRICE, help_text="USD per minute of audio (whisper-1)."
    )
    deprecation_date = models.DateField(null=True, blank=True)
    max_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    # A database default too: a process of the previous release still loading prices while
    # `migrate` runs inserts rows without it.
    source = models.CharField(
        max_length=300,
        blank=True,
        db_default="",
        help_text="Where this price was read (a URL or a document).",
    )
    source_date = models.DateField(null=True, blank=True, help_text="When it was read there.")

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="one_price_per_date")
        ]

    def __str__(self) -> str:
        return f"{self.model} (from {self.effective_from:%Y-%m-%d})"


class ModelAlias(models.Model):
    """A model name OpenAI accepts that is priced as another row (`gpt-4o-audio-preview` is
    served by `gpt-4o-audio-preview-2025-06-03`). Looked up only after the exact name, the
    fine-tune base and the dated snapshot: never a guess by prefix."""

    alias = models.CharField(max_length=120, unique=True)
    model = models.CharField("priced as", max_length=120)
    source = models.CharField(max_length=300, blank=True)
    source_date = models.DateField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["alias"]
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.alias} → {self.model}"


class ToolPrice(models.Model):
    """A built-in tool's fee per call (web search, file search, a code interpreter container,
    an image generated through the Responses API), for the models whose names match
    `model_patterns` (comma-separated `fnmatch` patterns; the most specific match wins), from
    `effective_from`.
    `variant` narrows a fee: a container's memory (`1g`), an image's `quality:size`."""

    tool = models.CharField(max_length=32)
    model_patterns = models.CharField("models", max_length=200, default="*")
    variant = models.CharField(max_length=64, blank=True)
    usd_per_call = models.DecimalField("USD per call", max_digits=16, decimal_places=6)
    effective_from = models.DateTimeField(default=ALWAYS)
    source = models.CharField(max_length=300, blank=True)
    source_date = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["tool", "model_patterns", "variant", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["tool", "model_patterns", "variant", "effective_from"],
                name="one_tool_fee_per_date",
            )
        ]

    def __str__(self) -> str:
        variant = f" {self.variant}" if self.variant else ""
        return f"{self.tool}{variant} for {self.model_patterns}: ${self.usd_per_call}"


class RecordState(models.TextChoices):
    PENDING = "pending", "in flight"
    DONE = "done", "done"
    REAPED = "reaped", "healed (its process died)"


class UsageRecordQuerySet(models.QuerySet):
    def completed(self) -> UsageRecordQuerySet:
        """Records of requests that ended (not the pending rows of requests in flight)."""
        return self.exclude(state=RecordState.PENDING)


class UsageRecord(models.Model):
    """One request that passed authentication, whatever became of it."""

    objects = UsageRecordQuerySet.as_manager()

    created_at = models.DateTimeField(db_index=True)
    # PROTECT: a record is billing history; its user and key cannot be deleted while it exists
    # (deactivate the user, revoke the key), so every record keeps saying who spent what. The
    # key may still be empty on records whose key was deleted before this rule (`key_prefix`
    # names it).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.PROTECT)
    key_prefix = models.CharField(max_length=24)
    endpoint = models.CharField(max_length=64)
    model = models.CharField("requested model", max_length=120, blank=True)
    response_model = models.CharField(max_length=120, blank=True)
    service_tier = models.CharField(max_length=16, blank=True)
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    audio_input_tokens = models.PositiveIntegerField(default=0)
    audio_output_tokens = models.PositiveIntegerField(default=0)
    # Inside cached_tokens (not audio_input_tokens), billed at the cached audio rate: a
    # Realtime response reads its earlier audio from the cache.
    audio_cached_tokens = models.PositiveIntegerField(default=0, db_default=0)
    # Inside prompt / completion tokens, billed at the image rates (gpt-image models).
    image_input_tokens = models.PositiveIntegerField(default=0, db_default=0)
    image_output_tokens = models.PositiveIntegerField(default=0, db_default=0)
    # What models not billed by the token are billed by: characters spoken (tts-1), seconds
    # of audio heard (whisper-1); DALL·E's images are in `tool_calls` (`image:<quality>:<size>`).
    characters = models.PositiveIntegerField(default=0, db_default=0)
    audio_seconds = models.PositiveIntegerField(default=0, db_default=0)
    cost_usd = MoneyField(null=True, blank=True, help_text="Empty when the model has no price.")
    # The price row the cost was computed with (kept for `manage.py reprice` and for reports
    # that must say which price applied), and the built-in tool calls billed per call.
    # No database constraint: the relay prices from a cached table, and a row deleted
    # meanwhile must never fail the reservation that writes this (the admin still refuses to
    # delete a row records point at). No index either: adding one to the largest table would
    # hold its lock through a rolling deploy, and nothing looks records up by price.
    price = models.ForeignKey(
        ModelPrice,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    tool_calls = models.JSONField(
        null=True, blank=True, help_text="Built-in tool calls billed per call, by tool."
    )
    estimated = models.BooleanField(
        default=False, help_text="Tokens counted by the proxy because upstream sent no usage."
    )
    client_disconnected = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttfb_ms = models.PositiveIntegerField("time to first byte (ms)", null=True, blank=True)
    upstream_request_id = models.CharField(max_length=128, blank=True)
    response_id = models.CharField(
        max_length=128,
        blank=True,
        db_index=True,
        help_text="Responses API id, so only its owner may read or continue it.",
    )
    request_body = models.TextField(blank=True)
    response_body = models.TextField(blank=True)
    # A granted request's record is written as `pending` in the transaction that reserves its
    # budget, so a reservation can never exist without a row that ends it: the relay completes
    # the row at settlement, or the reaper does if the process that held it died.
    # Made by the relay for each request: a write whose commit's outcome is unknown (the
    # connection broke after COMMIT) is found again by it, never inserted twice.
    uid = models.UUIDField(null=True, blank=True, unique=True, editable=False)
    # Database defaults too, so a process of the previous release still running while
    # `migrate` runs (a rolling deploy on PostgreSQL) can go on inserting its records.
    state = models.CharField(
        max_length=8,
        choices=RecordState.choices,
        default=RecordState.DONE,
        db_default=RecordState.DONE,
    )
    reserved_usd = MoneyField(
        default=Decimal(0), db_default=Decimal(0), help_text="Budget held while in flight."
    )
    reserved_tokens = models.BigIntegerField(default=0, db_default=0)
    key_ledger_id = models.BigIntegerField(null=True, blank=True)
    user_ledger_id = models.BigIntegerField(null=True, blank=True)
    # The ledger row of the user's team, when the user was in one as the request was granted.
    team_ledger_id = models.BigIntegerField(null=True, blank=True)
    process = models.CharField(
        max_length=40,
        blank=True,
        default="",
        db_default="",
        help_text="The relay process that held the reservation.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["api_key", "-created_at"]),
            # The request log's and the admin's filters and search at ten million records:
            # errors are a few in a hundred, so their own index finds a page of them without
            # reading the successes, and counts them by status and model from the index alone
            # (an admin count of one model's 5xx: 0.5 s reading the table, 44 ms this way); a
            # model's records; an upstream request id.
            models.Index(
                fields=["-created_at", "status_code", "model", "response_model"],
                condition=models.Q(status_code__gte=400),
                name="usage_record_errors",
            ),
            models.Index(fields=["model", "-created_at"], name="usage_record_by_model"),
            models.Index(fields=["response_model", "-created_at"], name="usage_record_by_answer"),
            models.Index(
                fields=["upstream_request_id"],
                condition=~models.Q(upstream_request_id=""),
                name="usage_record_upstream_id",
            ),
            models.Index(
                fields=["process"],
                condition=models.Q(state="pending"),
                name="usage_record_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.model} {self.status_code}"

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None


# The summed columns of UsageDaily: what every report and export adds up.
ROLLUP_SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_requests",
)


class UsageDaily(models.Model):
    """Per user × key × model × UTC day totals, updated in the transaction that adds a record."""

    day = models.DateField()
    # PROTECT, as on UsageRecord: the reports read these rows, not the records.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.PROTECT)
    model = models.CharField(max_length=120, blank=True)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_usd = MoneyField(default=Decimal(0))
    unpriced_requests = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "usage by day"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "user", "api_key", "model"], name="one_rollup_per_day_key_model"
            )
        ]
        indexes = [models.Index(fields=["user", "day"]), models.Index(fields=["day"])]


class StoredObject(models.Model):
    """An object the proxy created on the one upstream account (a file, a batch), and who
    owns it.

    Every user shares that account, so OpenAI would show anyone's file to anyone: the proxy
    answers only the owner (others get OpenAI's 404) and lists a user only their own, from
    this table. `data` is the object as OpenAI last answered it. A batch also names the usage
    record that holds its reservation until it is settled (`record_id`), and when a relay
    process last asked OpenAI how it is going (`checked_at`).
    """

    kind = models.CharField(max_length=32)
    object_id = models.CharField(max_length=128, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)
    purpose = models.CharField(max_length=32, blank=True)
    data = models.JSONField(default=dict)
    record_id = models.BigIntegerField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "kind", "created_at"], name="stored_by_owner"),
            models.Index(fields=["record_id"], name="stored_by_record"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.object_id}"


class ReconciliationStatus(models.TextChoices):
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "failed"


class ReconciliationRun(models.Model):
    """One `manage.py reconcile_usage`: the proxy's records held against OpenAI's own bill
    (its organization Usage and Costs API) for the UTC days `start_day` to `end_day`."""

    start_day = models.DateField("from")
    end_day = models.DateField("to")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=8, choices=ReconciliationStatus.choices, default=ReconciliationStatus.RUNNING
    )
    error = models.TextField(blank=True, help_text="Why the run could not compare, when it failed.")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.start_day} – {self.end_day} ({self.status})"


class ReconciliationRow(models.Model):
    """One UTC day × model of a run: what the proxy recorded, what OpenAI reports, and the
    differences (OpenAI's minus the proxy's). OpenAI's tokens are empty for a model it
    reports no tokens for (images, speech, transcriptions: images, characters, seconds)."""

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="rows")
    day = models.DateField()
    model = models.CharField(max_length=120)
    proxy_requests = models.BigIntegerField(default=0)
    proxy_input_tokens = models.BigIntegerField(default=0)
    proxy_output_tokens = models.BigIntegerField(default=0)
    proxy_usd = MoneyField(default=Decimal(0))
    openai_requests = models.BigIntegerField(default=0)
    openai_input_tokens = models.BigIntegerField(null=True, blank=True)
    openai_output_tokens = models.BigIntegerField(null=True, blank=True)
    openai_usd = MoneyField(default=Decimal(0))
    requests_difference = models.BigIntegerField(default=0)
    input_tokens_difference = models.BigIntegerField(null=True, blank=True)
    output_tokens_difference = models.BigIntegerField(null=True, blank=True)
    usd_difference = MoneyField(default=Decimal(0))
    drift = models.BooleanField(default=False, help_text="Any difference at all.")

    class Meta:
        ordering = ["day", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "day", "model"], name="one_row_per_run_day_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.model}"


# Upper edges (ms, inclusive) of the latency histogram's buckets: about 1.5× apart (1, 1.5, 2,
# 3, 4, 5, 7.5 per decade), and a last one for anything slower. A percentile read from them
# is its bucket's upper edge: at most one step (≤ 50 %) above the true value, never below.
LATENCY_BUCKETS_MS = (
    25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500,
    10000, 15000, 20000, 30000, 60000, 120000, 300000, 2**31 - 1,
)  # fmt: skip


def latency_bucket(latency_ms: int | None) -> int:
    """The index of the bucket `latency_ms` falls in; -1 for a record with no latency."""
    if latency_ms is None:
        return -1
    for index, edge in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= edge:
            return index
    return len(LATENCY_BUCKETS_MS) - 1


class UsageHourly(models.Model):
    """Per user × model × UTC hour totals, updated in the transaction that adds a record to
    UsageDaily: the hourly charts and the open days of the activity charts read these, not
    the records."""

    hour = models.DateTimeField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    model = models.CharField(max_length=120, blank=True)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    cost_usd = MoneyField(default=Decimal(0))
    unpriced_requests = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "usage by hour"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "user", "model"], name="one_rollup_per_hour_user_model"
            )
        ]
        indexes = [models.Index(fields=["user", "hour"], name="usage_hourly_by_user")]


class UsageLatency(models.Model):
    """How many requests of a user ended in each latency bucket (LATENCY_BUCKETS_MS) in a UTC
    hour: the latency charts' p50 and p95, without reading the records."""

    hour = models.DateTimeField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    bucket = models.SmallIntegerField()
    requests = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "latency by hour"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "user", "bucket"], name="one_latency_bucket_per_hour_user"
            )
        ]
        indexes = [models.Index(fields=["user", "hour"], name="usage_latency_by_user")]
