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
from webapp.db_roles import role_problems
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
                  "database": connection.settings_dict["NAME"], "role_problems": role_problems()}))
"""


@pytest.fixture
def fresh_server(tmp_path):
    """A second embedded PostgreSQL (+pgvector) on its own data directory, provisioned as `make run`'s is
    (the owner and application roles, their own passwords, SCRAM on the socket); stopped afterwards.
    Yields (owner's URL, application role's URL) of an empty database owned by the owner."""
    from webapp import embedded_db

    data = tmp_path / "pgdata-restored"
    embedded_db.start(data)
    try:
        embedded_db.ensure_database(embedded_db.server_url(data), "pathalign_restored", owner=embedded_db.OWNER_ROLE)
        yield (embedded_db.server_url(data, "pathalign_restored", embedded_db.OWNER_ROLE),
               embedded_db.server_url(data, "pathalign_restored", embedded_db.APP_ROLE))
    finally:
        embedded_db.stop(data)


def _child(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # pg_dump sees committed data only
def test_backup_and_restore_into_a_new_server(cast, case_factory, good_slide, tmp_path, fresh_server):
    from tests.test_trust_db_roles import assert_all_refused, attempt_bypasses, signed_world
    from webapp.slides.ingest import ingest_slide

    case = case_factory(accession_number="S26-09001", patient_pseudonym="PSN-RESTORE", assigned_to=cast.path1)
    slide = ingest_slide(good_slide, part=case.parts.get(), original_filename="scan.svs", move=False)
    record(None, "view_case", user=cast.path1, case=case)
    signed_world(cast, case_factory)  # a signed report and its case's audit event, for the bypasses below
    backup_dir = tmp_path / "backup"
    call_command("backup", str(backup_dir))
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["counts"]["cases"] == 2 and manifest["counts"]["slides"] == 1
    assert {"db.dump", "slides.tar"} <= set(manifest["files"])
    # The whole PHI database: only the service's user may read it, from the first byte.
    assert backup_dir.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in backup_dir.iterdir()} == {
        "db.dump": 0o600, "slides.tar": 0o600, "manifest.json": 0o600}
    with pytest.raises(CommandError, match="not empty"):
        call_command("backup", str(backup_dir))

    owner_url, app_url = fresh_server
    restored_store = tmp_path / "restored-slides"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATHALIGN_TEST", "DJANGO_", "PATHALIGN_DB_"))}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", PATHALIGN_SLIDE_STORE=str(restored_store),
               PATHALIGN_VAR_DIR=str(tmp_path / "var"))
    setup = "import django; django.setup()\nfrom django.core.management import call_command\n"
    restore = setup + f"call_command('restore', {str(backup_dir)!r})\n"
    # The application role may not restore (it could not create the tables); the owner does.
    refused = _child(restore, {**env, "DATABASE_URL": app_url})
    assert refused.returncode != 0 and "owner role" in refused.stderr, refused.stderr[-3000:]
    restored = _child(restore, {**env, "DATABASE_URL": owner_url, "PATHALIGN_DB_ROLE": "owner"})
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert "Restored" in restored.stdout
    # Read back as the application role, as the restored app would run.
    read = _child(setup + READ_BACK, {**env, "DATABASE_URL": app_url})
    assert read.returncode == 0, read.stderr[-3000:]
    # Restoring into a database that has tables (this test run's own) is refused rather than mixing states.
    with pytest.raises(CommandError, match="already has tables"):
        call_command("restore", str(backup_dir))
    found = json.loads(read.stdout.strip().splitlines()[-1])
    assert found == {"pseudonym": "PSN-RESTORE", "part": "Colon, sigmoid", "slide_size": [slide.width, slide.height],
                     "read": [64, 64], "thumb": True, "events": 1, "unapplied": 0, "append_only": True,
                     "database": "pathalign_restored", "role_problems": []}
    assert (restored_store / slide.file_path).read_bytes() == slide.path.read_bytes()
    # The grants came back with the data: every bypass is refused on the restored server too.
    assert_all_refused(attempt_bypasses(app_url))


def test_damaged_backup_is_refused(tmp_path, db):
    (tmp_path / "db.dump").write_bytes(b"not a dump")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"files": {"db.dump": {"bytes": 10, "sha256": "0" * 64}}, "counts": {}, "created": ""}))
    with pytest.raises(CommandError, match="checksum"):
        call_command("restore", str(tmp_path))
