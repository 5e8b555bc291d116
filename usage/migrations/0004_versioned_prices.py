"""Versioned prices: each price row says where it was read and when, records keep the row
they were billed with and their built-in tool calls, and two new tables ship with the prices:
the model-alias table and the built-in tool fees.

Existing price rows get the shipped file's source only where their rates are the file's (an
operator's own rows stay as they are); the two new tables are filled from the shipped files.
Records made before this keep an empty price (`manage.py reprice` fills it).
"""

import csv
import datetime
from decimal import Decimal
from pathlib import Path

import django.db.models.deletion
from django.db import migrations, models

DATA = Path(__file__).resolve().parent.parent / "data"


def _read(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="", encoding="utf-8") as fh:
        return [{k: (v or "").strip() for k, v in line.items()} for line in csv.DictReader(fh)]


def _day(text: str) -> datetime.date | None:
    return datetime.date.fromisoformat(text) if text else None


def load(apps, schema_editor) -> None:  # noqa: ANN001 (migration signature)
    # Historical models and the files as shipped with this migration, not today's code.
    ModelPrice = apps.get_model("usage", "ModelPrice")
    ModelAlias = apps.get_model("usage", "ModelAlias")
    ToolPrice = apps.get_model("usage", "ToolPrice")
    # The columns this migration's model has: later files add columns later migrations add.
    columns = {f.name for f in ModelPrice._meta.get_fields()}
    for line in _read("openai_prices.csv"):
        rates = {
            c: (Decimal(v) if v else None)
            for c, v in line.items()
            if c.endswith("_per_1m") and c in columns
        }
        ModelPrice.objects.filter(model=line["model"], source="", **rates).update(
            source=line["source"], source_date=_day(line["source_date"])
        )
    ModelAlias.objects.bulk_create(
        [
            ModelAlias(
                alias=line["alias"],
                model=line["model"],
                source=line["source"],
                source_date=_day(line["source_date"]),
                note=line["note"],
            )
            for line in _read("openai_model_aliases.csv")
        ],
        ignore_conflicts=True,
    )
    ToolPrice.objects.bulk_create(
        [
            ToolPrice(
                tool=line["tool"],
                model_patterns=line["model_patterns"] or "*",
                variant=line["variant"],
                usd_per_call=Decimal(line["usd_per_call"]),
                source=line["source"],
                source_date=_day(line["source_date"]),
            )
            for line in _read("openai_tool_prices.csv")
        ],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0003_exact_money_and_pending_records"),
    ]

    operations = [
        migrations.CreateModel(
            name="ModelAlias",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("alias", models.CharField(max_length=120, unique=True)),
                ("model", models.CharField(max_length=120, verbose_name="priced as")),
                ("source", models.CharField(blank=True, max_length=300)),
                ("source_date", models.DateField(blank=True, null=True)),
                ("note", models.CharField(blank=True, max_length=200)),
            ],
            options={
                "verbose_name_plural": "model aliases",
                "ordering": ["alias"],
            },
        ),
        migrations.AddField(
            model_name="modelprice",
            name="source",
            field=models.CharField(
                blank=True,
                db_default="",
                help_text="Where this price was read (a URL or a document).",
                max_length=300,
            ),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="source_date",
            field=models.DateField(blank=True, help_text="When it was read there.", null=True),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="price",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="usage.modelprice",
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="tool_calls",
            field=models.JSONField(
                blank=True, help_text="Built-in tool calls billed per call, by tool.", null=True
            ),
        ),
        migrations.CreateModel(
            name="ToolPrice",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("tool", models.CharField(max_length=32)),
                (
                    "model_patterns",
                    models.CharField(default="*", max_length=200, verbose_name="models"),
                ),
                ("variant", models.CharField(blank=True, max_length=64)),
                (
                    "usd_per_call",
                    models.DecimalField(
                        decimal_places=6, max_digits=16, verbose_name="USD per call"
                    ),
                ),
                (
                    "effective_from",
                    models.DateTimeField(
                        default=datetime.datetime(1970, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
                    ),
                ),
                ("source", models.CharField(blank=True, max_length=300)),
                ("source_date", models.DateField(blank=True, null=True)),
            ],
            options={
                "ordering": ["tool", "model_patterns", "variant", "-effective_from"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("tool", "model_patterns", "variant", "effective_from"),
                        name="one_tool_fee_per_date",
                    )
                ],
            },
        ),
        migrations.RunPython(load, migrations.RunPython.noop),
    ]
