"""What the fuzz target and the corpus replay share: run what ingest does with a file's bytes on them
(`read_slide_file`: inspect_slide, then the thumbnail within the pixel budget), classify the outcome.

The slide-acceptance contract: for any bytes, `read_slide_file` returns metadata and a thumbnail or raises
`SlideRejected`; it never raises anything else, never crashes the process and never hangs. (The rest of
`ingest_slide` moves the file and writes the row; no byte of the file is read there.)
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> None:
    """Django settings without a database: inspect_slide touches no table, so nothing connects."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ.setdefault("DATABASE_URL", "postgresql://fuzz@127.0.0.1:9/fuzz")  # never connected to
    os.environ.setdefault("PATHALIGN_VAR_DIR", str(Path(tempfile.gettempdir()) / "pathalign-fuzz"))
    import django

    django.setup()


def limit_memory(gigabytes: float = 4.0) -> None:
    """Cap the address space, so a file that declares a huge image fails to allocate instead of eating the host."""
    import resource

    limit = int(gigabytes * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# Exception class names to tolerate while a known finding awaits its fix, so a fuzzing run can look past it
# for new ones: PATHALIGN_FUZZ_KNOWN=KeyError,IndexError. Empty (the default): every finding stops the run.
KNOWN = {name for name in os.environ.get("PATHALIGN_FUZZ_KNOWN", "").split(",") if name}


def check_bytes(data: bytes, suffix: str = ".svs") -> str:
    """'accepted' or 'rejected: <reason>'; any other exception propagates (that is a finding)."""
    from webapp.slides.ingest import SlideRejected, read_slide_file

    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    try:
        with handle:
            handle.write(data)
        try:
            read_slide_file(Path(handle.name))
        except SlideRejected as exc:
            return f"rejected: {exc}"
        except Exception as exc:
            if type(exc).__name__ in KNOWN:
                return f"known finding: {type(exc).__name__}"
            raise
        return "accepted"
    finally:
        os.unlink(handle.name)
