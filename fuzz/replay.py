"""Replay corpus files through `read_slide_file` (inspect_slide, then the thumbnail), one JSON line per file, in a guarded process.

    .venv/bin/python fuzz/replay.py fuzz/corpus/*          # prints {"file":..., "outcome":...} lines

A file that hangs past --timeout seconds is killed by faulthandler's watchdog thread (which works even while
the main thread is stuck inside OpenSlide's C code); the caller sees the process die after a "start" line
and reports that file (tests/test_trust_fuzz.py does).
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import check_bytes, limit_memory, setup_django  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per file before it counts as a hang")
    parser.add_argument("--memory-gb", type=float, default=4.0)
    args = parser.parse_args(argv)
    limit_memory(args.memory_gb)
    setup_django()
    for path in args.files:
        print(json.dumps({"file": path.name, "start": True}), flush=True)
        faulthandler.dump_traceback_later(args.timeout, exit=True)
        try:
            outcome = check_bytes(path.read_bytes(), suffix=path.suffix or ".svs")
        except Exception as exc:  # noqa: BLE001 - a finding: report it and go on
            outcome = f"error: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"file": path.name, "outcome": outcome}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
