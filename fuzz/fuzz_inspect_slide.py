"""Coverage-guided fuzzing of slide acceptance with atheris (libFuzzer for Python): every input goes
through `read_slide_file`, i.e. what `ingest_slide` does with a file's bytes (inspect_slide, then the
thumbnail within the pixel budget).

    mkdir -p /tmp/fuzz-new && .venv/bin/python fuzz/fuzz_inspect_slide.py /tmp/fuzz-new fuzz/corpus \
        -max_total_time=300 -max_len=65536 -rss_limit_mb=4096 -timeout=20

Starts from the committed corpus (the first directory receives new inputs: keep it out of fuzz/corpus).
A crash (any exception but SlideRejected), a hang past -timeout or an out-of-memory is a finding: libFuzzer writes the input to crash-*/timeout-*/oom-*. Add such a file to
fuzz/make_corpus.py (or copy it into fuzz/corpus/) once fixed, so the pytest replay keeps it fixed.
Only the Python side is instrumented; OpenSlide and libtiff are C, so coverage there is not guided, but
the mutations of the TIFF structures in the corpus still reach their parsers. While a finding awaits its
fix, PATHALIGN_FUZZ_KNOWN=KeyError (exception class names) lets a run look past it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import check_bytes, setup_django  # noqa: E402

setup_django()
# Django's set-up may have imported the slide code already; import it afresh under the coverage hooks
# (instrument_all() would instrument every loaded function, minutes of start-up).
sys.modules.pop("webapp.slides.ingest", None)
sys.modules.pop("webapp.slides.pixel_budget", None)
with atheris.instrument_imports(include=["webapp.slides.ingest", "webapp.slides.pixel_budget"]):
    import webapp.slides.ingest  # noqa: F401


def test_one_input(data: bytes) -> None:
    check_bytes(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
