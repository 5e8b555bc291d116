"""On PostgreSQL, the usage table becomes partitioned by month (RANGE on created_at, one
partition per UTC month and a DEFAULT one), so retention drops whole months instead of
deleting rows. SQLite keeps its one table: nothing happens there.

In place, in one transaction: every row keeps its id and values, the id sequence goes on, and
every index and constraint keeps the name Django knows it by, so later migrations that alter
them still work. The database's primary key becomes (id, created_at) and uid's unique
constraint (uid, created_at), as PostgreSQL requires of a partitioned table; Django's state
does not change (see usage/partitions.py). The table is locked while its rows are copied:
about 9 s a million records here (README, "Partitions"). Reversible: backwards it copies the
rows into one plain table again."""

from django.db import migrations


def partition(apps, schema_editor) -> None:  # noqa: ANN001 (migration signature)
    if schema_editor.connection.vendor != "postgresql":
        return
    from usage.partitions import is_partitioned, table_swap

    if not is_partitioned(schema_editor.connection):
        table_swap(schema_editor.connection, partitioned=True)


def unpartition(apps, schema_editor) -> None:  # noqa: ANN001 (migration signature)
    if schema_editor.connection.vendor != "postgresql":
        return
    from usage.partitions import is_partitioned, table_swap

    if is_partitioned(schema_editor.connection):
        table_swap(schema_editor.connection, partitioned=False)


class Migration(migrations.Migration):
    dependencies = [("usage", "0011_record_team_ledger")]

    operations = [migrations.RunPython(partition, unpartition, elidable=False)]
