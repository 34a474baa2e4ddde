"""The signed snapshot (webapp.reports.snapshot), and the database rules that keep the signed record whole.

- Existing signed reports get a snapshot built from their rows as they are now, marked "backfilled" (their
  signature time and signer are the stored ones); the guard trigger is switched off for that one UPDATE,
  inside this migration's transaction.
- A report can only become signed with a snapshot and its hash.
- A section's text can only change with a new version number (no silent edit, e.g. through an admin).
- A signed case's identifying fields (accession, pseudonym, received date, clinical history; a part's label,
  site and procedure) are locked unless an amendment is in progress (the app says the same:
  cases.models.identity_locked).
"""
import datetime as dt
import hashlib
import json

import django.db.models.deletion
from django.db import migrations, models

MEANINGS = {
    "report": "Final report. I have reviewed the material and approve this report as the diagnosis.",
    "amendment": "Amended report. I approve this report as replacing the earlier report, for the reason stated.",
    "addendum": "Addendum. I approve this addendum as additional information to the signed report.",
}

GUARDS = """
CREATE OR REPLACE FUNCTION reports_guard_signing() RETURNS trigger AS $$
BEGIN
  IF NEW.status = 'signed' AND OLD.status <> 'signed' AND (NEW.snapshot IS NULL OR NEW.snapshot_hash = '') THEN
    RAISE EXCEPTION 'report %: signing needs the frozen snapshot and its hash', NEW.id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER reports_report_signing BEFORE UPDATE ON reports_report
  FOR EACH ROW EXECUTE FUNCTION reports_guard_signing();

CREATE OR REPLACE FUNCTION reports_guard_section_version() RETURNS trigger AS $$
BEGIN
  IF NEW.text IS DISTINCT FROM OLD.text AND NEW.version <= OLD.version THEN
    RAISE EXCEPTION 'section %: a new text needs a new version (edit it in the report workspace)', OLD.id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER reports_section_version BEFORE UPDATE ON reports_reportsection
  FOR EACH ROW EXECUTE FUNCTION reports_guard_section_version();

CREATE OR REPLACE FUNCTION reports_identity_locked(cid bigint) RETURNS boolean AS $$
  SELECT coalesce((SELECT status IN ('signed_out', 'amended') FROM cases_case WHERE id = cid), false)
     AND NOT EXISTS (SELECT 1 FROM reports_report
                     WHERE case_id = cid AND kind = 'amendment' AND status = 'draft');
$$ LANGUAGE sql STABLE;

CREATE OR REPLACE FUNCTION reports_guard_case_identity() RETURNS trigger AS $$
BEGIN
  IF (NEW.accession_number, NEW.patient_pseudonym, NEW.received_date, NEW.clinical_history)
       IS DISTINCT FROM (OLD.accession_number, OLD.patient_pseudonym, OLD.received_date, OLD.clinical_history)
     AND reports_identity_locked(OLD.id) THEN
    RAISE EXCEPTION 'case % is signed out: its identifying fields change only through an amendment', OLD.id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER cases_case_identity BEFORE UPDATE ON cases_case
  FOR EACH ROW EXECUTE FUNCTION reports_guard_case_identity();

CREATE OR REPLACE FUNCTION reports_guard_part_identity() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF reports_identity_locked(NEW.case_id) THEN
      RAISE EXCEPTION 'case % is signed out: parts change only through an amendment', NEW.case_id
        USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
  END IF;
  IF TG_OP = 'DELETE' THEN
    IF reports_identity_locked(OLD.case_id) THEN
      RAISE EXCEPTION 'case % is signed out: parts change only through an amendment', OLD.case_id
        USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
  END IF;
  IF (NEW.case_id, NEW.label, NEW.site, NEW.procedure) IS DISTINCT FROM (OLD.case_id, OLD.label, OLD.site, OLD.procedure)
     AND reports_identity_locked(OLD.case_id) THEN
    RAISE EXCEPTION 'case % is signed out: parts change only through an amendment', OLD.case_id
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER cases_part_identity BEFORE INSERT OR UPDATE OR DELETE ON cases_part
  FOR EACH ROW EXECUTE FUNCTION reports_guard_part_identity();
"""

UNGUARDS = """
DROP TRIGGER IF EXISTS cases_part_identity ON cases_part;
DROP TRIGGER IF EXISTS cases_case_identity ON cases_case;
DROP TRIGGER IF EXISTS reports_section_version ON reports_reportsection;
DROP TRIGGER IF EXISTS reports_report_signing ON reports_report;
DROP FUNCTION IF EXISTS reports_guard_part_identity, reports_guard_case_identity, reports_identity_locked,
  reports_guard_section_version, reports_guard_signing;
"""


def _canonical(snapshot: dict) -> bytes:
    return json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def backfill(apps, schema_editor):
    Report = apps.get_model("reports", "Report")
    Slide = apps.get_model("slides", "Slide")
    signed = list(Report.objects.filter(status="signed", snapshot__isnull=True).select_related("case", "signed_by"))
    if not signed:
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("ALTER TABLE reports_report DISABLE TRIGGER reports_report_guard")
    for report in signed:
        case, user = report.case, report.signed_by
        sections = list(report.sections.select_related("part").order_by("order", "id"))
        snap = {
            "schema": 1, "backfilled": True,
            "report": {"id": report.pk, "kind": report.kind, "reason": report.reason, "follows": report.follows_id,
                       "no_slides_reason": ""},
            "case": {"accession": case.accession_number, "patient_pseudonym": case.patient_pseudonym,
                     "received_date": case.received_date.isoformat(), "clinical_history": case.clinical_history},
            "parts": [{"label": p.label, "site": p.site, "procedure": p.procedure,
                       "slides": Slide.objects.filter(part=p).count()} for p in case.parts.order_by("label")],
            "sections": [{"part": s.part.label if s.part else "", "heading": s.heading, "text": s.text}
                         for s in sections],
            "classifications": [],
            "signature": {"username": user.username if user else "",
                          "printed_name": ((f"{user.first_name} {user.last_name}".strip() or user.username)
                                           if user else ""),
                          "credentials": "", "signed_at": report.signed_at.astimezone(dt.UTC).isoformat(),
                          "meaning": MEANINGS[report.kind]},
        }
        text = "\n\n".join(p for p in ((f"{s['heading']}\n{s['text'].strip()}" if s["heading"] else s["text"].strip())
                                        for s in snap["sections"]) if p.strip())
        Report.objects.filter(pk=report.pk).update(
            snapshot=snap, snapshot_hash=hashlib.sha256(_canonical(snap)).hexdigest(),
            content_hash=hashlib.sha256(text.encode()).hexdigest())
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("ALTER TABLE reports_report ENABLE TRIGGER reports_report_guard")


class Migration(migrations.Migration):

    dependencies = [
        ('analysis', '0005_jobs_moved_to_jobs_app'),
        ('cases', '0002_specimen_families'),
        ('reports', '0004_bundle_foreign_keys'),
        ('slides', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='aidraft',
            name='warnings',
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name='label',
            name='code',
            field=models.CharField(blank=True, help_text='e.g. 71854001 (Colon structure)', max_length=40),
        ),
        migrations.AddField(
            model_name='label',
            name='code_system',
            field=models.CharField(blank=True, help_text='e.g. http://snomed.info/sct', max_length=100),
        ),
        migrations.AddField(
            model_name='labelset',
            name='confidence_threshold',
            field=models.FloatField(default=0.6, help_text="Below this probability the model's label is shown as uncertain."),
        ),
        migrations.AddField(
            model_name='report',
            name='no_slides_reason',
            field=models.TextField(blank=True, help_text='Why the case was signed out without slides.'),
        ),
        migrations.AddField(
            model_name='report',
            name='snapshot',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='report',
            name='snapshot_hash',
            field=models.CharField(blank=True, help_text='SHA-256 of the canonical snapshot.', max_length=64),
        ),
        migrations.AlterField(
            model_name='classification',
            name='decision',
            field=models.CharField(choices=[('pending', 'Not yet decided'), ('confirmed', 'Confirmed'), ('overridden', 'Overridden'), ('dismissed', 'Dismissed (not reported)')], default='pending', max_length=10),
        ),
        migrations.CreateModel(
            name='SlideTriage',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('label', models.CharField(max_length=120)),
                ('confidence', models.FloatField()),
                ('alert', models.BooleanField(default=False)),
                ('created_at', models.DateTimeField(auto_now=True)),
                ('bundle', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='analysis.modelbundle')),
                ('case', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='cases.case')),
                ('label_set', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='reports.labelset')),
                ('slide', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='slides.slide')),
            ],
            options={
                'indexes': [models.Index(fields=['case', 'alert'], name='slidetriage_case_alert_idx')],
                'constraints': [models.UniqueConstraint(fields=('slide', 'bundle', 'label_set'), name='one_triage_per_slide')],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.RunSQL(GUARDS, UNGUARDS),
    ]
