"""Keys and limits over HTTP: `/api/keys/`, `/api/keys/<id>/`, `/api/users/<username>/limits/`.

The URLs are fixed by the contract (GET and POST on one path), so each view holds one
resource and each method is one operation with its own nested serializers. A key's secret
appears in exactly one response, the one that issues it; the hash never appears.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ParseError, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from keys.authentication import ApiAuthMixin, IsStaffLogin, staff_login
from keys.filters import BIGINT_MAX, ApiKeyFilter
from keys.models import ApiKey, BudgetMode, Period, UserLimit
from keys.money import usd
from keys.services import LIMIT_FIELDS, key_issue, key_revoke, key_update_limits, user_limit_set

if TYPE_CHECKING:
    from django.db.models import QuerySet
    from rest_framework.request import Request

# Column bounds, so an oversized number is a 400 and never a database error.
INT_MAX = 2**31 - 1


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser, with nesting too deep for Python's parser (`[[[[…` ten thousand
    deep: RecursionError, which is not a ValueError) answered 400 like any malformed body."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None


PARSERS = [BoundedJSONParser, FormParser, MultiPartParser]


class MoneyField(serializers.DecimalField):
    """USD in: any amount the ledger keeps (twelve places). USD out: a decimal string of two to
    six places, as keys.money shows money everywhere: "5.00", "0.25", "0.000123"."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_digits=22, decimal_places=12, min_value=Decimal(0), **kwargs)

    def to_representation(self, value: Decimal) -> str:
        return usd(value)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "string", "description": "comma-separated"},
        ],
        "description": "Models allowed (`gpt-4o*` patterns allowed); empty allows every model.",
    }
)
class ModelsField(serializers.Field):
    """A model allow-list, as a JSON list or a comma-separated string."""

    default_error_messages = {"invalid": "Give a list of model names or a comma-separated string."}

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            items = data.replace("\n", ",").split(",")
        elif isinstance(data, list) and all(isinstance(item, str) for item in data):
            if any("," in item for item in data):
                raise ValidationError("A model name cannot contain a comma.")
            items = data
        else:
            self.fail("invalid")
        return [item.strip() for item in items if item.strip()]

    def to_representation(self, value: list[str]) -> list[str]:
        return list(value)


@extend_schema_serializer(component_name="LimitsRequest")
class LimitsInputSerializer(serializers.Serializer):
    """The limits a key or a user can have; null (or leaving one out on create) means none."""

    budget_usd = MoneyField(required=False, allow_null=True, help_text="USD per period.")
    period = serializers.ChoiceField(choices=Period.choices, required=False)
    budget_mode = serializers.ChoiceField(
        choices=BudgetMode.choices,
        required=False,
        allow_blank=True,
        help_text="strict: refuse a request whose cost cannot be bounded; estimate: reserve "
        "the documented defaults; empty: the user's choice, else the proxy's.",
    )
    models = ModelsField(required=False)
    rpm = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=INT_MAX)
    tpm = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=INT_MAX)
    max_concurrent = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=INT_MAX
    )
    token_limit = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=BIGINT_MAX,
        help_text="Tokens (input + output) per period.",
    )
    request_limit = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=INT_MAX,
        help_text="Requests per period.",
    )


def user_named(username: str) -> Any:
    """The user of a URL's `<username>`, or 404."""
    # A NUL is in no username, and PostgreSQL refuses it in a query (a 500).
    user = (
        None if "\x00" in username else get_user_model().objects.filter(username=username).first()
    )
    if user is None:
        raise NotFound("No such user.")
    return user


def _limit_changes(data: dict[str, Any]) -> dict[str, Any]:
    """Validated input as keyword arguments of the keys services."""
    changes = {f: data[f] for f in LIMIT_FIELDS if f in data}
    if "models" in data:
        changes["allowed_models"] = ",".join(data["models"])
    return changes


@extend_schema_serializer(component_name="Limits")
class LimitsOutputSerializer(serializers.Serializer):
    budget_usd = MoneyField(allow_null=True)
    period = serializers.ChoiceField(choices=Period.choices)
    budget_mode = serializers.CharField()
    models = serializers.ListField(child=serializers.CharField())
    rpm = serializers.IntegerField(allow_null=True)
    tpm = serializers.IntegerField(allow_null=True)
    max_concurrent = serializers.IntegerField(allow_null=True)
    token_limit = serializers.IntegerField(allow_null=True)
    request_limit = serializers.IntegerField(allow_null=True)


@extend_schema_serializer(component_name="ApiKey")
class ApiKeyOutputSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    status = serializers.ChoiceField(choices=["active", "revoked", "expired"], read_only=True)
    budget_usd = MoneyField(allow_null=True, read_only=True)
    models = serializers.ListField(
        child=serializers.CharField(), source="model_patterns", read_only=True
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "prefix",
            "name",
            "username",
            "status",
            "created_at",
            "expires_at",
            "revoked_at",
            "budget_usd",
            "period",
            "budget_mode",
            "models",
            "rpm",
            "tpm",
            "max_concurrent",
            "token_limit",
            "request_limit",
            "log_bodies",
        ]
        read_only_fields = fields


def _visible_keys(request: Request) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.select_related("user").order_by("-created_at", "-id")
    if not staff_login(request):
        keys = keys.filter(user_id=request.user.pk)
    return keys


def _visible_key(request: Request, key_id: int) -> ApiKey:
    # Someone else's key answers 404, like a missing one: ids are not a way to probe. An id
    # past the column's range is missing too (the database would raise on it).
    api_key = _visible_keys(request).filter(pk=key_id).first() if key_id <= BIGINT_MAX else None
    if api_key is None:
        raise NotFound("No such key.")
    return api_key


def _validation_error(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)


class ApiKeysApi(ApiAuthMixin, APIView):
    """`GET` lists keys (staff: everyone's, others: their own); `POST` issues one (staff)."""

    parser_classes = PARSERS

    pagination_class = PageNumberPagination

    @extend_schema_serializer(component_name="ApiKeyCreateRequest")
    class CreateInputSerializer(LimitsInputSerializer):
        username = serializers.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
        name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        log_bodies = serializers.BooleanField(
            required=False,
            allow_null=True,
            default=None,
            help_text="Store request and response bodies; null follows USAGE_LOG_BODIES.",
        )

        def validate_expires_at(self, value: Any) -> Any:
            if value is not None and value <= timezone.now():
                raise ValidationError("Must be in the future.")
            return value

    @extend_schema_serializer(component_name="ApiKeyCreated")
    class CreateOutputSerializer(ApiKeyOutputSerializer):
        key = serializers.CharField(
            read_only=True, help_text="The key itself: shown in this response only."
        )

        class Meta(ApiKeyOutputSerializer.Meta):
            fields = ["id", "key", *ApiKeyOutputSerializer.Meta.fields[1:]]
            read_only_fields = fields

    def get_permissions(self) -> list:
        if self.request.method == "POST":
            return [IsStaffLogin()]
        return super().get_permissions()

    @extend_schema(
        operation_id="keys_list",
        description="Staff logged in with a password see every key; anyone else, and any "
        "proxy key, sees their own user's keys. The key itself is never listed.",
        summary="Keys: every key for staff, your own otherwise",
        parameters=[
            OpenApiParameter("username", str, description="Only this user's keys."),
            OpenApiParameter("active", bool, description="Neither revoked nor expired."),
        ],
        responses=ApiKeyOutputSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        filterset = ApiKeyFilter(request.query_params, queryset=_visible_keys(request))
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(filterset.qs, request, view=self)
        return paginator.get_paginated_response(ApiKeyOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="keys_create",
        description="Staff only. The response's `key` is the key itself, shown this once: "
        "only its hash is stored. `models` is a list or a comma-separated string.",
        summary="Issue a key (staff); the user is created if new",
        request=CreateInputSerializer,
        responses={201: CreateOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = self.CreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        api_key, secret = key_issue(
            username=data["username"],
            name=data["name"],
            expires_at=data.get("expires_at"),
            log_bodies=data.get("log_bodies"),
            **_limit_changes(data),
        )
        api_key.key = secret  # for this one response; it is stored nowhere
        return Response(self.CreateOutputSerializer(api_key).data, status=status.HTTP_201_CREATED)


class ApiKeyApi(ApiAuthMixin, APIView):
    """`GET` one key, `PATCH` its limits (staff), `DELETE` revokes it (staff or its owner)."""

    parser_classes = PARSERS

    @extend_schema_serializer(component_name="ApiKeyUpdateRequest")
    class UpdateInputSerializer(LimitsInputSerializer):
        name = serializers.CharField(max_length=100, required=False, allow_blank=True)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        log_bodies = serializers.BooleanField(required=False, allow_null=True)

    def get_permissions(self) -> list:
        if self.request.method == "PATCH":
            return [IsStaffLogin()]
        return super().get_permissions()

    @extend_schema(
        operation_id="keys_retrieve",
        description="One key, if it is yours (staff: any key).",
        responses=ApiKeyOutputSerializer,
    )
    def get(self, request: Request, key_id: int) -> Response:
        return Response(ApiKeyOutputSerializer(_visible_key(request, key_id)).data)

    @extend_schema(
        operation_id="keys_partial_update",
        description="Staff only. Fields left out stay as they are; null removes a limit. "
        "Running processes pick up the change within PROXY_KEY_CACHE_SECONDS.",
        summary="Change a key's name, expiry or limits (staff); null removes a limit",
        request=UpdateInputSerializer,
        responses=ApiKeyOutputSerializer,
    )
    def patch(self, request: Request, key_id: int) -> Response:
        api_key = _visible_key(request, key_id)
        serializer = self.UpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        changes = _limit_changes(data)
        changes.update({f: data[f] for f in ("name", "expires_at", "log_bodies") if f in data})
        try:
            api_key = key_update_limits(api_key=api_key, **changes)
        except DjangoValidationError as exc:
            raise _validation_error(exc) from None
        return Response(ApiKeyOutputSerializer(api_key).data)

    @extend_schema(
        operation_id="keys_destroy",
        description="Staff, or the key's own user. Revoking is immediate and cannot be undone.",
        summary="Revoke a key (staff, or the key's own user); it stops working at once",
        responses={204: None},
    )
    def delete(self, request: Request, key_id: int) -> Response:
        key_revoke(api_key=_visible_key(request, key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserLimitsApi(ApiAuthMixin, APIView):
    """A user's own limits, applied on top of each of their keys' limits (staff only)."""

    parser_classes = PARSERS

    permission_classes = [IsStaffLogin]

    @extend_schema_serializer(component_name="UserLimits")
    class OutputSerializer(LimitsOutputSerializer):
        username = serializers.CharField()

    def _user(self, username: str) -> Any:
        return user_named(username)

    def _body(self, user: Any, limit: UserLimit | None) -> dict[str, Any]:
        limit = limit or UserLimit(user=user)  # no row yet: no limits
        return {"username": user.get_username(), **limit.limit_fields()}

    @extend_schema(
        operation_id="users_limits_retrieve",
        description="Staff only. A user with no limits set shows every limit empty.",
        responses=OutputSerializer,
    )
    def get(self, request: Request, username: str) -> Response:
        user = self._user(username)
        limit = UserLimit.objects.filter(user=user).first()
        return Response(self.OutputSerializer(self._body(user, limit)).data)

    @extend_schema(
        operation_id="users_limits_update",
        description="Staff only. Replaces the user's limits: a limit left out is removed.",
        summary="Set a user's limits (staff); a limit left out is removed",
        request=LimitsInputSerializer,
        responses=OutputSerializer,
    )
    def put(self, request: Request, username: str) -> Response:
        user = self._user(username)
        serializer = LimitsInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # PUT replaces: whatever is not given goes back to "no limit".
        data = {f: None for f in LIMIT_FIELDS} | {
            "period": Period.TOTAL,
            "budget_mode": BudgetMode.INHERIT,
            "models": [],
        }
        data |= serializer.validated_data
        limit = user_limit_set(user=user, **_limit_changes(data))
        return Response(self.OutputSerializer(self._body(user, limit)).data)
