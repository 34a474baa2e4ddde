"""Hostile slide files: every file of the committed corpus (fuzz/corpus, written by fuzz/make_corpus.py) is
either accepted or refused with SlideRejected by `read_slide_file` (what ingest_slide does with the bytes:
inspect_slide and the thumbnail within the pixel budget): no other exception, no crash, no hang.

The replay runs in a child process (fuzz/replay.py) with a memory cap and a per-file watchdog, so a crash
in OpenSlide's C code or a hang is reported with the file's name instead of taking pytest down.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
PER_FILE_SECONDS = 20

# Files whose damage is in the structure (not just in pixels a bit flip might leave decodable): these
# must be refused, not merely survived.
MUST_REJECT = [
    "empty.svs", "one-byte.svs", "text.svs", "png-renamed.svs", "zip-renamed.svs", "html-renamed.svs",
    "random-bytes.svs", "dicom-magic-junk.dcm", "header-only-le.tif", "header-only-be.tif",
    "bigtiff-header-only.tif", "ifd-loop-self.tif", "ifd-loop-two.tif", "ifd-offset-past-eof.tif",
    "ifd-offset-zero.tif", "ifd-huge-entry-count.tif", "huge-dimensions-4G-square.tif",
    "huge-dimensions-2G-wide.tif", "zero-dimensions.tif", "tile-offset-past-eof.tif", "tile-count-huge.tif",
    "tile-array-short.tif", "tile-size-zero.tif", "aperio-width-huge.svs", "aperio-length-huge.svs",
    "found-tile-width-huge.svs",  # a tile 788M pixels wide: OpenSlide's allocation aborted the process
    "truncated-aperio-50pct.svs", "truncated-aperio-minus1.svs", "truncated-generic-minus1.tif",
    "truncated-bigtiff-minus1.tif",
]
SEEDS = ["seed-aperio.svs", "seed-generic.tif", "seed-bigtiff.tif"]

# Findings the fuzzer made that still wait for their fix, file -> (exception class, where to fix it).
# The replay expects exactly that exception until the fix lands; then it fails and asks to remove the entry.
KNOWN_FINDINGS: dict[str, tuple[str, str]] = {}


def replay(files: list[Path]) -> dict[str, str]:
    """file name -> outcome; a child that dies mid-file is restarted after that file."""
    outcomes: dict[str, str] = {}
    pending = list(files)
    while pending:
        process = subprocess.run(
            [sys.executable, str(ROOT / "fuzz" / "replay.py"), "--timeout", str(PER_FILE_SECONDS),
             *map(str, pending)],
            cwd=ROOT, capture_output=True, text=True, timeout=PER_FILE_SECONDS * len(pending) + 60,
        )
        started = None
        for line in process.stdout.splitlines():
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event.get("start"):
                started = event["file"]
            else:
                outcomes[event["file"]], started = event["outcome"], None
        if started is not None:  # the process died inside this file: a crash or a hang
            outcomes[started] = f"died (exit {process.returncode}): {process.stderr[-800:]}"
        pending = [path for path in pending if path.name not in outcomes]
        if process.returncode != 0 and started is None and pending:
            raise AssertionError(f"replay failed before starting: {process.stderr[-2000:]}")
    return outcomes


def test_corpus_is_committed_and_small():
    files = list(CORPUS.iterdir())
    assert len(files) >= 60, "run .venv/bin/python fuzz/make_corpus.py and commit fuzz/corpus"
    assert sum(f.stat().st_size for f in files) < 2 * 1024**2
    assert set(MUST_REJECT + SEEDS) <= {f.name for f in files}


def test_every_corpus_file_is_accepted_or_rejected_cleanly():
    outcomes = replay(sorted(CORPUS.iterdir()))
    for name, (exception, where) in KNOWN_FINDINGS.items():
        outcome = outcomes.pop(name)
        assert outcome.startswith(f"error: {exception}"), (
            f"{name} now gives {outcome!r}: the finding looks fixed; remove it from KNOWN_FINDINGS ({where})")
    bad = {name: outcome for name, outcome in outcomes.items()
           if not (outcome == "accepted" or outcome.startswith("rejected: "))}
    assert not bad, "read_slide_file must only ever raise SlideRejected:\n" + "\n".join(
        f"  {name}: {outcome}" for name, outcome in bad.items())
    assert all(outcomes[name] == "accepted" for name in SEEDS), {name: outcomes[name] for name in SEEDS}
    wrongly_accepted = [name for name in MUST_REJECT if not outcomes[name].startswith("rejected: ")]
    assert not wrongly_accepted, f"structurally broken files were accepted: {wrongly_accepted}"
    # Refusals are sentences for a person, not tracebacks.
    assert all(len(o) < 600 and "Traceback" not in o for o in outcomes.values())


def test_fuzz_target_runs(tmp_path):
    """A few seconds of the atheris target from the corpus: it starts, mutates and finds nothing new.

    New inputs go to a scratch directory (libFuzzer writes into its first corpus directory), known findings
    are tolerated (PATHALIGN_FUZZ_KNOWN) so the run looks past them."""
    import os

    (tmp_path / "new").mkdir()
    env = dict(os.environ, PATHALIGN_FUZZ_KNOWN=",".join(e for e, _ in KNOWN_FINDINGS.values()))
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_inspect_slide.py"), str(tmp_path / "new"), str(CORPUS),
         "-max_total_time=6", "-max_len=65536", "-rss_limit_mb=4096", f"-timeout={PER_FILE_SECONDS}",
         "-print_final_stats=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr and "stat::number_of_executed_units" in result.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
