"""Reading usage over HTTP: `/api/usage/` (records, CSV), `/api/usage/<id>/`, `/api/usage/summary/`.

Staff logged in with a password see everyone; anyone else, and every proxy key, sees only
their own user's usage.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django.views.generic import View
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from keys.apis import MoneyField
from keys.authentication import ApiAuthMixin, staff_login
from keys.filters import key_id_or_none
from keys.models import ApiKey
from usage.exports import CsvRenderer, csv_streaming_response
from usage.filters import FIRST_DAY, LAST_DAY, UsageRecordFilter, calendar_day_or_none
from usage.models import UsageRecord
from usage.selectors import (
    ROLLUP_SUMS,
    SUMMARY_GROUPS,
    usage_record_count,
    usage_record_get,
    usage_records_for,
    usage_summary,
    usage_totals,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.db.models import QuerySet
    from django.http import HttpResponseBase
    from rest_framework.request import Request


def _viewer(request: Request) -> AbstractBaseUser | None:
    """Whose usage this request may read: None for everyone's."""
    return None if staff_login(request) else request.user


class KnownCountPaginator(Paginator):
    """A paginator told its count (when it is known more cheaply than by COUNT(*))."""

    def __init__(self, object_list: Any, per_page: int, *, known_count: int | None) -> None:
        super().__init__(object_list, per_page)
        self.known_count = known_count

    @cached_property
    def count(self) -> int:
        if self.known_count is not None:
            return self.known_count
        return super().count


class UsageRecordPagination(PageNumberPagination):
    page_size = api_settings.PAGE_SIZE or 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def paginate_queryset(
        self,
        queryset: QuerySet,
        request: Request,
        view: APIView | None = None,
        *,
        known_count: int | None = None,
    ) -> list | None:
        self.django_paginator_class = functools.partial(
            KnownCountPaginator, known_count=known_count
        )
        return super().paginate_queryset(queryset, request, view)


@extend_schema_serializer(component_name="UsageRecord")
class UsageRecordOutputSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    key_id = serializers.IntegerField(source="api_key_id", read_only=True, allow_null=True)
    cost_usd = MoneyField(
        read_only=True,
        allow_null=True,
        help_text="USD, a decimal string of two to six places; null when the model has no price.",
    )
    tool_calls = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text="Built-in tool calls billed per call, by fee key (`web_search`: 2).",
    )
    price_id = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="The price row the cost was computed with."
    )

    class Meta:
        model = UsageRecord
        fields = [
            "id",
            "created_at",
            "username",
            "key_id",
            "key_prefix",
            "endpoint",
            "model",
            "response_model",
            "status_code",
            "error_code",
            "stream",
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "audio_input_tokens",
            "audio_output_tokens",
            "audio_cached_tokens",
            "image_input_tokens",
            "image_output_tokens",
            "characters",
            "audio_seconds",
            "tool_calls",
            "cost_usd",
            "price_id",
            "latency_ms",
            "ttfb_ms",
            "estimated",
            "client_disconnected",
            "service_tier",
            "upstream_request_id",
        ]
        read_only_fields = fields


_RECORD_FILTERS = [
    OpenApiParameter("user", str, description="Username (staff only; others see their own)."),
    OpenApiParameter("key", str, description="Key prefix (`sk-proxy-abc123`) or key id."),
    OpenApiParameter("model", str, description="Model asked for or answered with."),
    OpenApiParameter("endpoint", str, description="For example `chat/completions`."),
    OpenApiParameter("status", int, description="HTTP status code."),
    OpenApiParameter("stream", bool),
    OpenApiParameter("estimated", bool, description="Tokens counted by the proxy."),
    OpenApiParameter(
        "from", OpenApiTypes.DATETIME, description="Created at or after (ISO date or datetime)."
    ),
    OpenApiParameter(
        "to",
        OpenApiTypes.DATETIME,
        description="Created at or before; a date includes the whole (UTC) day.",
    ),
]


class UsageRecordListApi(ApiAuthMixin, APIView):
    """Usage records, newest first, one per request that passed authentication. Staff see
    everyone's; anyone else, and any proxy key, sees their own user's. `?format=csv` downloads
    every matching record (not one page) with the same columns and values."""

    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, CsvRenderer]
    pagination_class = UsageRecordPagination
    OutputSerializer = UsageRecordOutputSerializer

    @extend_schema(
        operation_id="usage_list",
        summary="Usage records, newest first",
        parameters=[
            *_RECORD_FILTERS,
            OpenApiParameter(
                "format",
                str,
                enum=["json", "csv"],
                description="`csv` downloads every matching record (all pages) as CSV.",
            ),
        ],
        responses={
            (200, "application/json"): UsageRecordOutputSerializer(many=True),
            (200, "text/csv"): OpenApiTypes.STR,
        },
    )
    def get(self, request: Request) -> HttpResponseBase:
        viewer = _viewer(request)
        filterset = UsageRecordFilter(request.query_params, queryset=usage_records_for(viewer))
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        records = filterset.qs
        if request.accepted_renderer.format == "csv":
            return csv_streaming_response(request._request, records, self.OutputSerializer)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            records, request, view=self, known_count=self._rollup_count(viewer, filterset)
        )
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)

    @staticmethod
    def _rollup_count(viewer: AbstractBaseUser | None, filterset: UsageRecordFilter) -> int | None:
        """The count from the rollup when the filters are ones it can answer (none, or only
        the user), so the unfiltered list of a million records is not counted row by row."""
        used = {
            name for name, value in filterset.form.cleaned_data.items() if value not in (None, "")
        }
        if used - {"user"}:
            return None
        user_ids = set()
        if viewer is not None:
            user_ids.add(viewer.pk)
        if "user" in used:
            user = (
                get_user_model()
                .objects.filter(username=filterset.form.cleaned_data["user"])
                .first()
            )
            if user is None:
                return 0
            user_ids.add(user.pk)
        if len(user_ids) > 1:
            return 0
        return usage_record_count(user_id=next(iter(user_ids), None))


class UsageRecordDetailApi(ApiAuthMixin, APIView):
    """One usage record, with the request and response bodies if they were kept."""

    @extend_schema_serializer(component_name="UsageRecordDetail")
    class OutputSerializer(UsageRecordOutputSerializer):
        class Meta(UsageRecordOutputSerializer.Meta):
            fields = [*UsageRecordOutputSerializer.Meta.fields, "request_body", "response_body"]
            read_only_fields = fields

    @extend_schema(operation_id="usage_retrieve", responses=OutputSerializer)
    def get(self, request: Request, record_id: int) -> Response:
        record = usage_record_get(record_id=record_id, user=_viewer(request))
        if record is None:
            raise NotFound("No such usage record.")
        return Response(self.OutputSerializer(record).data)


class DayField(serializers.DateField):
    """An ISO date; a datetime is taken as its UTC day."""

    def to_internal_value(self, value: Any) -> dt.date:
        day: dt.date | None = None
        if isinstance(value, str) and len(value) > 10:
            try:
                parsed = parse_datetime(value.strip().replace(" ", "+"))
            except ValueError:  # well formed but no such time: "2025-02-30T00:00"
                parsed = None
            if parsed is not None:
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=dt.UTC)
                day = calendar_day_or_none(parsed)
                if day is None:
                    self._out_of_range()
                return day
        day = calendar_day_or_none(super().to_internal_value(value))
        if day is None:
            self._out_of_range()
        return day

    def _out_of_range(self) -> None:
        raise ValidationError(f"Give a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}.")


_SUMS = {
    "requests": serializers.IntegerField(),
    "prompt_tokens": serializers.IntegerField(),
    "cached_tokens": serializers.IntegerField(),
    "completion_tokens": serializers.IntegerField(),
    "reasoning_tokens": serializers.IntegerField(),
    # Summed on the exact amounts, rounded once here.
    "cost_usd": MoneyField(help_text="USD, a decimal string of two to six places."),
    "errors": serializers.IntegerField(help_text="Requests answered with a status >= 400."),
    "unpriced_requests": serializers.IntegerField(
        help_text="Successful requests of a model with no price (not in cost_usd)."
    ),
}


class UsageSummaryApi(ApiAuthMixin, APIView):
    """Requests, tokens, cost and errors summed by day, model, user or key, read from the
    per-day rollup. `from` and `to` are UTC days, both included; left out, all time."""

    class FilterSerializer(serializers.Serializer):
        group_by = serializers.ChoiceField(choices=SUMMARY_GROUPS, default="day")
        # Declared under another name: "from" is a Python keyword.
        from_ = DayField(required=False, help_text="First day (UTC), inclusive.")
        to = DayField(required=False, help_text="Last day (UTC), inclusive.")
        user = serializers.CharField(required=False, help_text="Username (staff only).")
        key = serializers.CharField(required=False, help_text="Key prefix or key id.")
        model = serializers.CharField(
            required=False, help_text="Model answered with (else asked for)."
        )

        def get_fields(self) -> dict[str, serializers.Field]:
            fields = super().get_fields()
            fields["from"] = fields.pop("from_")
            return fields

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if attrs.get("from") and attrs.get("to") and attrs["from"] > attrs["to"]:
                raise ValidationError({"to": "Must not be before `from`."})
            return attrs

    @extend_schema_serializer(component_name="UsageSummaryRow")
    class RowSerializer(serializers.Serializer):
        day = serializers.DateField(required=False, help_text="group_by=day")
        model = serializers.CharField(required=False, help_text="group_by=model")
        user = serializers.CharField(required=False, help_text="group_by=user: the username")
        user_id = serializers.IntegerField(required=False, help_text="group_by=user")
        key = serializers.CharField(
            required=False, allow_null=True, help_text="group_by=key: the prefix (null: deleted)"
        )
        key_id = serializers.IntegerField(required=False, allow_null=True, help_text="group_by=key")
        key_name = serializers.CharField(required=False, allow_null=True, help_text="group_by=key")
        username = serializers.CharField(required=False, help_text="group_by=key: the owner")

        def get_fields(self) -> dict[str, serializers.Field]:
            return {**super().get_fields(), **copy.deepcopy(_SUMS)}

    @extend_schema_serializer(component_name="UsageTotals")
    class TotalsSerializer(serializers.Serializer):
        def get_fields(self) -> dict[str, serializers.Field]:
            return copy.deepcopy(_SUMS)

    @extend_schema_serializer(component_name="UsageSummary")
    class OutputSerializer(serializers.Serializer):
        group_by = serializers.ChoiceField(choices=SUMMARY_GROUPS)
        from_ = serializers.DateField(allow_null=True)
        to = serializers.DateField(allow_null=True)

        def get_fields(self) -> dict[str, serializers.Field]:
            fields = super().get_fields()
            fields["from"] = fields.pop("from_")
            fields["results"] = UsageSummaryApi.RowSerializer(many=True)
            fields["totals"] = UsageSummaryApi.TotalsSerializer()
            return fields

    @extend_schema(
        operation_id="usage_summary",
        summary="Usage summed by day, model, user or key (from the daily rollup)",
        parameters=[FilterSerializer],
        responses=OutputSerializer,
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        scope = self._scope(_viewer(request), data)
        body: dict[str, Any] = {
            "group_by": data["group_by"],
            "from": data.get("from"),
            "to": data.get("to"),
        }
        if scope is None:  # filters naming someone this viewer may not see, or no one
            body["results"] = []
            body["totals"] = {**dict.fromkeys(ROLLUP_SUMS, 0), "cost_usd": Decimal(0)}
        else:
            span = {"model": data.get("model"), "start": data.get("from"), "end": data.get("to")}
            body["results"] = usage_summary(group_by=data["group_by"], **scope, **span)
            body["totals"] = usage_totals(**scope, **span)
        return Response(self.OutputSerializer(body).data)

    @staticmethod
    def _scope(viewer: AbstractBaseUser | None, data: dict[str, Any]) -> dict[str, int] | None:
        """user_id / api_key_id to sum over, or None when the filters match nothing visible."""
        scope: dict[str, int] = {}
        if viewer is not None:
            scope["user_id"] = viewer.pk
        if data.get("user"):
            user = get_user_model().objects.filter(username=data["user"]).first()
            if user is None or scope.get("user_id", user.pk) != user.pk:
                return None
            scope["user_id"] = user.pk
        if data.get("key"):
            keys = ApiKey.objects.all()
            if "user_id" in scope:
                keys = keys.filter(user_id=scope["user_id"])
            if data["key"].isdigit():
                key_id = key_id_or_none(data["key"])
                if key_id is None:
                    return None
                keys = keys.filter(pk=key_id)
            else:
                keys = keys.filter(prefix=data["key"])
            key_ids = list(keys.values_list("pk", flat=True)[:2])
            if not key_ids:
                return None
            if len(key_ids) > 1:
                raise ValidationError({"key": "Several keys have this prefix; give the key id."})
            scope["api_key_id"] = key_ids[0]
        return scope


# drf-spectacular resolves its extensions' target classes lazily, on the first schema built,
# and not thread-safely: of four first requests at once, three were 500s (a class attribute
# set to None by one thread while another read it as a string). One build at a time.
_schema_lock = threading.Lock()


class SchemaApi(SpectacularAPIView):
    """The OpenAPI schema of /api/ (and of /v1/proxy/me), built one request at a time."""

    def _get_schema_response(self, request: Request) -> Response:
        with _schema_lock:
            return super()._get_schema_response(request)


class SwaggerDocsView(SpectacularSwaggerView):
    """Swagger UI from drf_spectacular_sidecar's static files, with no call to another host."""

    def options(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # DRF's OPTIONS answers the view's metadata through its renderer, here an HTML
        # template that has no name for it: a 500. Plain Django's answer (the Allow header).
        return View.options(self, request, *args, **kwargs)

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().get(request, *args, **kwargs)
        configured = spectacular_settings.SWAGGER_UI_SETTINGS
        if isinstance(configured, dict) and "validatorUrl" not in configured:
            # Swagger UI's default validator badge would send the schema URL to
            # validator.swagger.io.
            response.data["settings"] = json.dumps({**configured, "validatorUrl": None})
        return response
