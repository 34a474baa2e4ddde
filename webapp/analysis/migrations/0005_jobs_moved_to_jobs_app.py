# Job and WorkerHeartbeat now belong to the jobs app (same tables): drop them from this app's state and
# point the embedding's job column at jobs.Job. Nothing changes in the database.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('analysis', '0004_hnsw_m24_ef128'),
        ('jobs', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.AlterField(
                    model_name='slideembedding',
                    name='job',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='jobs.job'),
                ),
                migrations.DeleteModel(name='Job'),
                migrations.DeleteModel(name='WorkerHeartbeat'),
            ],
        ),
    ]
