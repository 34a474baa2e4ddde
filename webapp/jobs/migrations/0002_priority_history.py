from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]

    operations = [
        migrations.AddField(model_name="job", name="priority", field=models.PositiveSmallIntegerField(default=0)),
        migrations.AddField(model_name="job", name="history", field=models.JSONField(blank=True, default=list)),
    ]
