"""Files only the service reads: the slide store, thumbnails, uploads, drop-folder imports and the demo
credentials are owner-only (0600 files, 0700 folders) from their creation (backups: test_trust_backup).

Finding (issue 16): thumbnails 0644, store folders 0755, drop-folder imports kept the scanner's mode, the
demo credentials file was created under the umask and chmodded afterwards.
"""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_uploaded_slide_its_folder_and_thumbnail_are_owner_only(cast, case_factory, client_for, good_slide):
    from webapp.slides.models import Slide

    case = case_factory(assigned_to=cast.path1)
    response = client_for(cast.admin).post(reverse("slide_upload", args=[case.pk, case.parts.get().pk]), {
        "file": SimpleUploadedFile("scan.svs", good_slide.read_bytes()), "stain": "H&E"})
    assert response.status_code == 201, response.content
    slide = Slide.objects.get()
    store = Path(settings.SLIDE_STORE_DIR)
    assert mode(slide.path) == 0o600 and mode(slide.path.parent) == 0o700
    assert mode(slide.thumbnail_path) == 0o600 and mode(slide.thumbnail_path.parent) == 0o700
    assert mode(store) == 0o700 and mode(Path(settings.FILE_UPLOAD_TEMP_DIR)) == 0o700


def test_a_drop_folder_import_is_owner_only_whatever_the_scanner_wrote(cast, case_factory, good_slide):
    from webapp.slides import dropbox

    case = case_factory(assigned_to=cast.path1, accession_number="S26-07700")
    dropped = Path(settings.SLIDE_DROP_DIR) / "S26-07700_A_1_HE.svs"
    shutil.copyfile(good_slide, dropped)
    dropped.chmod(0o644)  # as a scanner's share writes it
    slide = dropbox.import_entry(dropped.name, part=case.parts.get())
    assert mode(slide.path) == 0o600 and mode(slide.path.parent) == 0o700


def test_the_demo_credentials_file_is_never_readable_by_others(db, settings, tmp_path):
    from webapp import demo

    settings.VAR_DIR = tmp_path / "var"
    old = os.umask(0o022)  # a permissive shell: the file must not depend on the umask
    try:
        demo.seed_users(demo.DemoContext(log=lambda text: None))
    finally:
        os.umask(old)
    path = demo.credentials_file()
    assert path.exists() and mode(path) == 0o600
    assert "labadmin" in path.read_text()


def test_the_service_creates_files_owner_only():
    probe = Path(settings.FILE_UPLOAD_TEMP_DIR) / "umask-probe"
    probe.write_bytes(b"x")
    try:
        assert mode(probe) == 0o600  # the process umask (webapp/apps.py), for every file the app writes
    finally:
        probe.unlink()
