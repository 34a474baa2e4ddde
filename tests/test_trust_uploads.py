"""Uploads are authorised before the body is read, and what an interrupted upload leaves is swept.

Findings (issue 16): `slide_upload` parsed the body before `get_part_for_user`, so an evaluator or an
unrelated pathologist could stream up to the 20 GiB limit to disk before getting 404/403; a process killed
mid-inspection left `<uuid>/<uuid>.svs` in the store with no row, and nothing swept such orphans.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from tests.conftest import start_worker, stop_worker, wait_for
from tests.test_trust_hostile import _multipart, _open_upload
from webapp.audit.models import AuditEvent
from webapp.slides.models import Slide


def _upload_area_files() -> set[Path]:
    return {p for p in Path(settings.FILE_UPLOAD_TEMP_DIR).rglob("*") if p.is_file()}


@pytest.mark.parametrize("who, status", [("evaluator", 404), ("outsider", 404), ("path2", 404), ("path1", 403)])
def test_an_upload_is_refused_before_its_body_is_read(live_server, cast, case_factory, client_for, who, status):
    case = case_factory(assigned_to=cast.path1)  # path1 may read the case but not add slides (lab admins do)
    part = case.parts.get()
    before = _upload_area_files()
    declared = 40 * 1024**2  # the test limit is 64 MiB: within it, so only the permission can refuse it
    body, boundary = _multipart("big.svs", b"")
    head = body[: -len(f"\r\n--{boundary}--\r\n")]
    sock = _open_upload(live_server, client_for(getattr(cast, who)),
                        reverse("slide_upload", args=[case.pk, part.pk]), declared, boundary)
    sock.settimeout(10)  # the old view sat waiting for the 40 MiB that never come
    sock.sendall(head + b"\0" * 65536)  # the form and the file's first 64 KiB, then nothing
    data = b""
    try:
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
    except TimeoutError:
        pass
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 "), "no answer while the body was still owed: the view read it first"
    assert int(data.split(b" ", 2)[1]) == status
    assert _upload_area_files() == before  # not one byte of it was written
    assert not Slide.objects.exists()


def _orphan(store: Path, age_seconds: float) -> Path:
    name = str(uuid.uuid4())
    folder = store / name
    folder.mkdir(parents=True)
    (folder / f"{name}.svs").write_bytes(b"half a slide")
    thumb = store / "thumbnails" / f"{name}.jpg"
    thumb.parent.mkdir(parents=True, exist_ok=True)
    thumb.write_bytes(b"jpeg")
    past = time.time() - age_seconds
    for path in (folder / f"{name}.svs", folder, thumb):
        os.utime(path, (past, past))
    return folder


@pytest.fixture
def store_with_orphans(cast, case_factory, good_slide):
    from webapp.slides.ingest import ingest_slide

    store = Path(settings.SLIDE_STORE_DIR)
    case = case_factory(assigned_to=cast.path1)
    kept = ingest_slide(good_slide, part=case.parts.get(), original_filename="ok.svs", move=False)
    past = time.time() - 7200
    os.utime(kept.path.parent, (past, past))  # old, but it has its row
    old, fresh = _orphan(store, 7200), _orphan(store, 60)  # fresh: an ingest may still be committing it
    leftover = Path(settings.FILE_UPLOAD_TEMP_DIR) / "tmpabc.upload"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x" * 100)
    os.utime(leftover, (past, past))
    yield kept, old, fresh, leftover
    # Whatever the test did: no files of this fixture stay for the next tests (the rows go with the test's
    # transaction; the upload-area leftover would show in the hostile tests' "nothing left behind" checks).
    for path in (kept.path.parent, fresh, old):
        shutil.rmtree(path, ignore_errors=True)
    for name in (kept.pk, fresh.name, old.name):
        (store / "thumbnails" / f"{name}.jpg").unlink(missing_ok=True)
    leftover.unlink(missing_ok=True)


def test_orphans_older_than_an_hour_are_swept_and_reported(store_with_orphans):
    from webapp.slides.uploads import sweep_orphans

    kept, old, fresh, leftover = store_with_orphans
    removed = sweep_orphans()
    assert not old.exists() and not (Path(settings.SLIDE_STORE_DIR) / "thumbnails" / f"{old.name}.jpg").exists()
    assert not leftover.exists()
    assert fresh.exists() and kept.path.exists() and kept.thumbnail_path.exists()
    # (an earlier test's files whose rows went with its transaction may be swept too: orphans as well)
    assert {old.name, f"thumbnails/{old.name}.jpg", leftover.name} <= set(removed)
    event = AuditEvent.objects.get(action="orphans_swept")
    # the audit names the first 200 (a store left with many orphans by earlier runs sweeps more)
    assert event.details["count"] == len(removed) and event.details["removed"] == removed[:200]
    assert sweep_orphans() == []  # nothing more


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_sweeps_orphans_by_itself(store_with_orphans):
    kept, old, fresh, leftover = store_with_orphans
    worker = start_worker(name="orphans", extra_env={"PATHALIGN_ORPHAN_SWEEP_SECONDS": "1"})
    try:
        wait_for(lambda: not old.exists(), timeout=90, message="the worker's periodic orphan sweep")
    finally:
        stop_worker(worker)
    assert fresh.exists() and kept.path.exists()
    assert AuditEvent.objects.filter(action="orphans_swept").exists()
