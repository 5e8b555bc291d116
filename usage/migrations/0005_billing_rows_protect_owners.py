"""Usage records and daily rollups pin their user and key (on_delete PROTECT; was CASCADE for
the user, SET_NULL for the key): deleting a user or a key no longer deletes or detaches what
they spent. Django applies on_delete itself, so this changes no column and no row: no table is
rebuilt, and it runs instantly on a million records."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0007_billing_rows_protect_owners"),
        ("usage", "0004_versioned_prices"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="usagedaily",
            name="api_key",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, to="keys.apikey"
            ),
        ),
        migrations.AlterField(
            model_name="usagedaily",
            name="user",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="api_key",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.PROTECT, to="keys.apikey"
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="user",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, to=settings.AUTH_USER_MODEL
            ),
        ),
    ]
