# The job a report's draft came from is a jobs.Job now (the same table as before; db_constraint=False, so
# there is no constraint to move). It must run before the analysis app drops Job from its state.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0001_initial'),
        ('reports', '0002_signed_reports_immutable'),
    ]
    run_before = [('analysis', '0005_jobs_moved_to_jobs_app')]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.AlterField(
                    model_name='report',
                    name='draft_job',
                    field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='jobs.job'),
                ),
            ],
        ),
    ]
