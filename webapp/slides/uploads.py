"""Uploads: a streaming handler that refuses files over SLIDE_UPLOAD_MAX_BYTES as they arrive, and the
sweep of files that an interrupted upload or ingest left behind.

Django's TemporaryFileUploadHandler already writes chunks to FILE_UPLOAD_TEMP_DIR without holding
the file in memory; this one also stops reading once the limit is passed and removes the partial file.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

log = logging.getLogger(__name__)


class SizeLimitedUploadHandler(TemporaryFileUploadHandler):
    def __init__(self, request=None):
        super().__init__(request)
        self.limit = settings.SLIDE_UPLOAD_MAX_BYTES
        self.received = 0
        self.request_length = 0  # not "content_length": new_file() overwrites that per file

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.request_length = content_length or 0
        return None  # let the parser run; raising here would escape Django's handling

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True
            if getattr(self, "file", None) is not None:
                self.file.close()  # a NamedTemporaryFile: closing deletes the partial data
            # Draining a body many times the limit would waste the worker: drop the connection instead.
            raise StopUpload(connection_reset=self.request_length > 2 * self.limit)
        return super().receive_data_chunk(raw_data, start)


# --- orphans: store files without a row ---------------------------------------------------------------------
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ORPHAN_AGE_SECONDS = 3600  # ingest writes a slide's folder a moment before its row commits: an hour is ample


def _age(path: Path, now: float) -> float:
    try:
        return now - path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def find_orphans(older_than: float = ORPHAN_AGE_SECONDS) -> list[Path]:
    """Store folders and thumbnails named after a slide id that has no row, and upload-area files, all
    untouched for `older_than` seconds (a process killed mid-upload or mid-inspection leaves these)."""
    from .models import Slide

    store, upload_area, now = Path(settings.SLIDE_STORE_DIR), Path(settings.FILE_UPLOAD_TEMP_DIR), time.time()
    named: dict[str, list[Path]] = {}
    candidates = [*store.iterdir()] if store.is_dir() else []
    thumbnails = store / "thumbnails"
    if thumbnails.is_dir():
        candidates += [p for p in thumbnails.iterdir() if p.suffix == ".jpg"]
    for path in candidates:
        key = path.stem if path.parent == thumbnails else path.name
        if _UUID.fullmatch(key) and _age(path, now) > older_than:
            named.setdefault(key, []).append(path)
    known = {str(pk) for pk in Slide.objects.filter(pk__in=list(named)).values_list("pk", flat=True)}
    orphans = [path for key, paths in named.items() if key not in known for path in paths]
    if upload_area.is_dir() and upload_area.resolve() != store.resolve():
        orphans += [p for p in upload_area.iterdir() if p.is_file() and _age(p, now) > older_than]
    return sorted(orphans)


def sweep_orphans(older_than: float = ORPHAN_AGE_SECONDS) -> list[str]:
    """Remove what find_orphans() finds; log it and write one audit event (`orphans_swept`) naming the
    paths relative to the store or upload area and their sizes. Returns those names."""
    from webapp.audit.log import record

    removed, total = [], 0
    for path in find_orphans(older_than):
        try:
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:  # another worker swept it first
            continue
        for base in (Path(settings.SLIDE_STORE_DIR), Path(settings.FILE_UPLOAD_TEMP_DIR)):
            if path.is_relative_to(base):
                removed.append(str(path.relative_to(base)))
                break
        total += size
    if removed:
        log.warning("removed %d orphaned file(s) or folder(s) from the slide store and upload area (%d bytes)",
                    len(removed), total)
        record(None, "orphans_swept", removed=removed[:200], count=len(removed), bytes=total)
    return removed
