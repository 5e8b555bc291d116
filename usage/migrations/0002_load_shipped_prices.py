"""Fill the price table from the price file shipped with the project."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

from django.db import migrations

PRICE_FILE = Path(__file__).resolve().parent.parent / "data" / "openai_prices.csv"


def load(apps, schema_editor) -> None:  # noqa: ANN001 (migration signature)
    # The historical model, not usage.services: a migration must not depend on today's code.
    ModelPrice = apps.get_model("usage", "ModelPrice")
    fields = {f.name for f in ModelPrice._meta.get_fields()}
    rows = []
    with open(PRICE_FILE, newline="", encoding="utf-8") as fh:
        for line in csv.DictReader(fh):
            values = {}
            for column, text in line.items():
                if column not in fields or column == "model":
                    continue
                text = (text or "").strip()
                if column.endswith("_per_1m"):
                    values[column] = Decimal(text) if text else None
                elif column == "max_input_tokens":
                    values[column] = int(text) if text else None
                elif column == "deprecation_date":
                    values[column] = text or None
                else:
                    values[column] = text
            rows.append(ModelPrice(model=line["model"].strip(), **values))
    ModelPrice.objects.bulk_create(rows, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
