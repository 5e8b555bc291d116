"""A record names the team ledger row its reservation was made on (teams, keys/0009), so
settling, healing and repricing it move the team's budget as they move the key's and the
user's. Nullable with no default: a process of the previous release still inserting records
while `migrate` runs leaves it empty, as it is for a user in no team."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("usage", "0010_reconciliation")]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="team_ledger_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
