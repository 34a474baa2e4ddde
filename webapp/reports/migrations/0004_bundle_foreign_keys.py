"""Drafts, classifications and text embeddings name their model bundle by foreign key, not by a
"name@version" string.

Existing rows are matched to their bundle by name and version. AI drafts and classifications are guarded
by triggers (append-only, frozen once signed): the guards are switched off for this one UPDATE, inside the
migration's transaction, since pointing a row at the bundle its text already names changes nothing that
was signed. A text embedding whose bundle no longer exists is dropped (retrieval re-embeds on demand).
"""

import django.db.models.deletion
from django.db import migrations, models

FILL = """
ALTER TABLE reports_aidraft DISABLE TRIGGER reports_aidraft_guard;
ALTER TABLE reports_classification DISABLE TRIGGER reports_classification_guard;
UPDATE reports_aidraft d SET bundle_ref_id = b.id FROM analysis_modelbundle b
  WHERE d.bundle = b.name || '@' || b.version;
UPDATE reports_classification c SET bundle_ref_id = b.id FROM analysis_modelbundle b
  WHERE c.bundle = b.name || '@' || b.version;
UPDATE reports_reporttextembedding e SET bundle_ref_id = b.id FROM analysis_modelbundle b
  WHERE e.bundle = b.name || '@' || b.version;
DELETE FROM reports_reporttextembedding WHERE bundle_ref_id IS NULL;
ALTER TABLE reports_aidraft ENABLE TRIGGER reports_aidraft_guard;
ALTER TABLE reports_classification ENABLE TRIGGER reports_classification_guard;
"""


def _bundle(null: bool, on_delete, help_text: str = ""):
    return models.ForeignKey(null=null, on_delete=on_delete, related_name="+", to="analysis.modelbundle",
                             help_text=help_text)


class Migration(migrations.Migration):

    dependencies = [
        ('analysis', '0005_jobs_moved_to_jobs_app'),
        ('reports', '0003_draft_job_to_jobs'),
    ]

    operations = [
        migrations.AddField('aidraft', 'bundle_ref', _bundle(True, django.db.models.deletion.PROTECT)),
        migrations.AddField('classification', 'bundle_ref', _bundle(True, django.db.models.deletion.PROTECT)),
        migrations.AddField('reporttextembedding', 'bundle_ref', _bundle(True, django.db.models.deletion.CASCADE)),
        migrations.RunSQL(FILL),
        migrations.RemoveConstraint('reporttextembedding', 'one_text_embedding_per_bundle'),
        migrations.RemoveField('aidraft', 'bundle'),
        migrations.RemoveField('classification', 'bundle'),
        migrations.RemoveField('reporttextembedding', 'bundle'),
        migrations.RenameField('aidraft', 'bundle_ref', 'bundle'),
        migrations.RenameField('classification', 'bundle_ref', 'bundle'),
        migrations.RenameField('reporttextembedding', 'bundle_ref', 'bundle'),
        migrations.AlterField('aidraft', 'bundle', _bundle(True, django.db.models.deletion.PROTECT,
                                                           'The model bundle that wrote it.')),
        migrations.AlterField('reporttextembedding', 'bundle', _bundle(False, django.db.models.deletion.CASCADE)),
        migrations.AddConstraint(
            'reporttextembedding',
            models.UniqueConstraint(fields=('section', 'bundle'), name='one_text_embedding_per_bundle'),
        ),
    ]
