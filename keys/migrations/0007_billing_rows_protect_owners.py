"""A ledger row pins its key or user (on_delete PROTECT, was CASCADE): deleting a key or a user
no longer deletes what they spent. Django applies on_delete itself, so this changes no column
and no row: no table is rebuilt, and it runs instantly at any size."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0006_budget_mode"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="quotaledger",
            name="api_key",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                to="keys.apikey",
            ),
        ),
        migrations.AlterField(
            model_name="quotaledger",
            name="user",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                to=settings.AUTH_USER_MODEL,
            ),
        ),
    ]
