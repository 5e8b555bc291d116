"""Teams over HTTP (staff only): `/api/teams/`, `/api/teams/<id>/` and
`/api/teams/<id>/members/<username>/`.

A team's limits are read and written with the same serializers as a user's
(`keys.apis.LimitsInputSerializer`), and every write goes through `keys.services`, so the
writing process forgets its cached keys of the members at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from keys.apis import (
    PARSERS,
    LimitsInputSerializer,
    LimitsOutputSerializer,
    MoneyField,
    _limit_changes,
    user_named,
)
from keys.authentication import ApiAuthMixin, IsStaffLogin
from keys.models import BudgetMode, Period, Team, TeamMember
from keys.selectors import ledger_for
from keys.services import (
    LIMIT_FIELDS,
    team_create,
    team_member_remove,
    team_member_set,
    team_update_limits,
)

if TYPE_CHECKING:
    from rest_framework.request import Request


class MemberSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_admin = serializers.BooleanField()


class TeamUsageSerializer(serializers.Serializer):
    period = serializers.CharField()
    period_start = serializers.DateTimeField()
    spent_usd = MoneyField()
    reserved_usd = MoneyField()
    remaining_usd = MoneyField(allow_null=True)
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()


@extend_schema_serializer(component_name="Team")
class TeamOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    limits = LimitsOutputSerializer()
    members = MemberSerializer(many=True)
    usage = TeamUsageSerializer(help_text="This period's spend, from the team's ledger.")


@extend_schema_serializer(component_name="TeamRequest")
class TeamInputSerializer(LimitsInputSerializer):
    name = serializers.CharField(max_length=100)


class MemberInputSerializer(serializers.Serializer):
    is_admin = serializers.BooleanField(
        default=False, help_text="A team admin sees the team's usage on the dashboard."
    )


def _team_body(team: Team) -> dict[str, Any]:
    from keys.models import period_start
    from keys.selectors import LimitSnapshot

    now = timezone.now()
    ledger = ledger_for(team_id=team.pk, period=team.period, now=now)
    limits = LimitSnapshot.of(team)
    left = limits.remaining(ledger)
    members = team.members.select_related("user").order_by("user__username")
    return {
        "id": team.pk,
        "name": team.name,
        "limits": team.limit_fields(),
        "members": [{"username": m.user.get_username(), "is_admin": m.is_admin} for m in members],
        "usage": {
            "period": team.period,
            "period_start": period_start(team.period, now),
            "spent_usd": ledger.spent_usd if ledger else 0,
            "reserved_usd": ledger.reserved_usd if ledger else 0,
            "remaining_usd": left.usd,
            "requests": ledger.requests if ledger else 0,
            "tokens": ledger.tokens if ledger else 0,
        },
    }


def _team(team_id: int) -> Team:
    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        raise NotFound("No such team.")
    return team


def _invalid(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(getattr(exc, "message_dict", None) or {"detail": exc.messages})


class TeamsApi(ApiAuthMixin, APIView):
    """Every team, and making one (staff only)."""

    parser_classes = PARSERS
    permission_classes = [IsStaffLogin]

    @extend_schema(operation_id="teams_list", responses=TeamOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        teams = Team.objects.order_by("name")[:1000]
        return Response(TeamOutputSerializer([_team_body(t) for t in teams], many=True).data)

    @extend_schema(
        operation_id="teams_create",
        summary="Make a team (staff); its limits apply on top of its members' and their keys'",
        request=TeamInputSerializer,
        responses={201: TeamOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = TeamInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if Team.objects.filter(name=data["name"]).exists():
            raise ValidationError({"name": ["A team with this name exists."]})
        try:
            with transaction.atomic():
                team = team_create(name=data["name"], **_limit_changes(data))
        except DjangoValidationError as exc:
            raise _invalid(exc) from None
        except IntegrityError:  # made by another request between the check and the insert
            raise ValidationError({"name": ["A team with this name exists."]}) from None
        body = TeamOutputSerializer(_team_body(team)).data
        return Response(body, status=status.HTTP_201_CREATED)


class TeamApi(ApiAuthMixin, APIView):
    """One team: its limits, members and spend this period (staff only)."""

    parser_classes = PARSERS
    permission_classes = [IsStaffLogin]

    @extend_schema(operation_id="teams_retrieve", responses=TeamOutputSerializer)
    def get(self, request: Request, team_id: int) -> Response:
        return Response(TeamOutputSerializer(_team_body(_team(team_id))).data)

    @extend_schema(
        operation_id="teams_update",
        summary="Set a team's name and limits (staff); a limit left out is removed",
        request=TeamInputSerializer,
        responses=TeamOutputSerializer,
    )
    def put(self, request: Request, team_id: int) -> Response:
        team = _team(team_id)
        serializer = TeamInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = {f: None for f in LIMIT_FIELDS} | {
            "period": Period.TOTAL,
            "budget_mode": BudgetMode.INHERIT,
            "models": [],
        }
        data |= serializer.validated_data
        if Team.objects.filter(name=data["name"]).exclude(pk=team.pk).exists():
            raise ValidationError({"name": ["A team with this name exists."]})
        try:
            team_update_limits(team=team, name=data["name"], **_limit_changes(data))
        except DjangoValidationError as exc:
            raise _invalid(exc) from None
        return Response(TeamOutputSerializer(_team_body(team)).data)


class TeamMemberApi(ApiAuthMixin, APIView):
    """A user's place in a team (staff only). PUT puts them in it (moving them out of any
    other: a user is in one team at most); DELETE takes them out."""

    parser_classes = PARSERS
    permission_classes = [IsStaffLogin]

    def _user(self, username: str) -> Any:
        return user_named(username)

    @extend_schema(
        operation_id="teams_members_update",
        request=MemberInputSerializer,
        responses=TeamOutputSerializer,
    )
    def put(self, request: Request, team_id: int, username: str) -> Response:
        team = _team(team_id)
        user = self._user(username)
        serializer = MemberInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                team_member_set(
                    team=team, user=user, is_admin=serializer.validated_data["is_admin"]
                )
        except IntegrityError:  # the user was put in a team by another request meanwhile
            raise ValidationError(
                {"detail": ["The user's team changed meanwhile; try again."]}
            ) from None
        return Response(TeamOutputSerializer(_team_body(team)).data)

    @extend_schema(operation_id="teams_members_destroy", responses={204: None})
    def delete(self, request: Request, team_id: int, username: str) -> Response:
        team = _team(team_id)
        user = self._user(username)
        if not TeamMember.objects.filter(team=team, user=user).exists():
            raise NotFound("The user is not in this team.")
        team_member_remove(user=user)
        return Response(status=status.HTTP_204_NO_CONTENT)
