"""Column values for the relay's prepared writes (the reservation's INSERT, the completion's
UPDATE), without `Field.get_db_prep_save` where it changes nothing.

Preparing a value costs a few microseconds a field; a usage record has about forty fields and
most are strings, integers and booleans that reach the driver as they are. Only money (integer
picodollars on SQLite), times, JSON and UUIDs need preparing, and anything of an unexpected type
goes through Django's own preparation too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import models

# Fields whose Python value (a str, int or bool, or None) is what the database driver takes.
_AS_IS = (
    models.CharField,
    models.TextField,
    models.IntegerField,
    models.BooleanField,
    models.ForeignKey,
)
_PLAIN = (str, int)


class Columns:
    """The fields a prepared statement writes, in its order; make it once per statement."""

    __slots__ = ("_kinds", "fields")

    def __init__(self, fields: Sequence[models.Field]) -> None:
        self.fields = list(fields)
        self._kinds = [(f, f.attname, isinstance(f, _AS_IS)) for f in fields]


def db_values(instance: models.Model, columns: Columns, connection: Any) -> list:
    """`[field.get_db_prep_save(value) for field in columns.fields]`, for `instance`."""
    values = []
    for field, attname, as_is in columns._kinds:
        value = getattr(instance, attname)
        if not (as_is and (value is None or type(value) in _PLAIN or type(value) is bool)):
            value = field.get_db_prep_save(value, connection)
        values.append(value)
    return values
