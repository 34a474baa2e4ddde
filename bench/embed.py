"""Bench: patches per second through tiling + patch encoder (+ the Q-Former when a bundle is given).

Reference in the same run: raw OpenSlide `read_region` throughput on one handle over the same patches (what
reading alone costs). Then: threaded reading alone, the encoder alone on in-memory patches, and the whole
pipeline (`extract_slide_features`) with the share of time spent reading vs encoding.

    .venv/bin/python bench/embed.py                      # small synthetic slides, built-in encoder, CPU
    .venv/bin/python bench/embed.py --device cuda --encoder builtin --slides 4 --size 4096
    .venv/bin/python bench/embed.py --bundle var/models/demo   # adds Q-Former embedding time
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.encoders import build_encoder  # noqa: E402
from inference.features import extract_slide_features  # noqa: E402
from inference.slides import open_slide, patch_grid, read_patch  # noqa: E402
from inference.synthetic.corpus import generate_corpus, load_manifest  # noqa: E402


def raw_reads(path: str, grid) -> float:
    """Reference: plain read_region on one handle, no resize, no conversion."""
    s = open_slide(path)
    t = time.perf_counter()
    for x, y in grid.coords:
        s.read_region((int(x), int(y)), grid.level, (grid.read_size, grid.read_size))
    dt = time.perf_counter() - t
    s.close()
    return dt


def threaded_reads(path: str, grid, workers: int) -> tuple[float, list[np.ndarray]]:
    import threading

    local = threading.local()

    def one(i):
        if not hasattr(local, "s"):
            local.s = open_slide(path)
        return read_patch(local.s, grid, *grid.coords[i])

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        patches = list(pool.map(one, range(len(grid))))
    return time.perf_counter() - t, patches


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="existing corpus dir (default: generate a small one in a temp dir)")
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--max-patches", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--encoder", default="builtin", help="builtin | random")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--bundle", help="a PathAlign model bundle dir: adds Q-Former embedding time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = None
    if args.corpus:
        records = load_manifest(args.corpus)[: args.slides]
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-embed-")
        records = load_manifest(generate_corpus(tmp.name, args.slides, seed=7, size=args.size, mpp=args.mpp))
    enc = build_encoder({"kind": args.encoder}, device=args.device)
    enc.encode(np.zeros((2, 224, 224, 3), np.uint8))  # warm-up (kernels, allocator)

    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# bench/embed.py  {date.today()}  device={args.device} ({dev})  torch threads={torch.get_num_threads()}"
          f"  encoder={enc.spec.get('kind')}:{enc.spec.get('name', '')} dim={enc.dim}  workers={args.workers}")
    totals = {k: 0.0 for k in ("n", "raw", "thr", "enc", "pipe", "read", "wait", "encode", "q")}
    qformer = None
    if args.bundle:
        from inference.pathalign import PathAlign

        qformer = PathAlign.load(args.bundle, device=args.device)
    for rec in records:
        s = open_slide(rec["slide_path"])
        grid = patch_grid(s, max_patches=args.max_patches)
        s.close()
        n = len(grid)
        if n == 0:
            continue
        raw = raw_reads(rec["slide_path"], grid)
        thr, patches = threaded_reads(rec["slide_path"], grid, args.workers)
        t = time.perf_counter()
        enc.encode(np.stack(patches), batch_size=args.batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        enc_t = time.perf_counter() - t
        sf = extract_slide_features(rec["slide_path"], enc, max_patches=args.max_patches, batch_size=args.batch,
                                    workers=args.workers)
        q = 0.0
        if qformer is not None:
            t = time.perf_counter()
            qformer.embed(sf.features)
            q = time.perf_counter() - t
        for k, v in (("n", n), ("raw", raw), ("thr", thr), ("enc", enc_t), ("pipe", sf.wall_seconds),
                     ("read", sf.read_seconds), ("wait", sf.read_wait_seconds), ("encode", sf.encode_seconds),
                     ("q", q)):
            totals[k] += v
        print(f"{Path(rec['slide']).name:24s} {n:4d} patches  pipeline {n / sf.wall_seconds:7.1f} patch/s  "
              f"(reading {sf.read_seconds:.2f}s over threads, encoder waited {sf.read_wait_seconds:.2f}s, "
              f"encoding {sf.encode_seconds:.2f}s)")
    n = totals["n"]
    if not n:
        print("no patches")
        return 1
    print("\nthroughput over all slides (patches/s):")
    print(f"  reference: raw OpenSlide read_region, 1 handle     {n / totals['raw']:8.1f}")
    print(f"  threaded reads + resize ({args.workers} threads)              {n / totals['thr']:8.1f}"
          f"   ({totals['raw'] / totals['thr']:.2f}x the reference)")
    print(f"  encoder alone (in-memory patches)                  {n / totals['enc']:8.1f}")
    print(f"  pipeline: tissue mask + grid + reads + encoder     {n / totals['pipe']:8.1f}")
    share = totals["encode"] / max(totals["encode"] + totals["wait"], 1e-9)
    print(f"  pipeline time: encoding {totals['encode']:.2f}s, waiting for reads {totals['wait']:.2f}s "
          f"-> encoder busy {100 * share:.0f}% of the loop")
    if qformer is not None:
        print(f"  Q-Former slide embedding                            {len(records) / totals['q']:8.1f} slides/s")
    else:
        print("  Q-Former: skipped (HOOK: pass --bundle DIR with a PathAlign bundle to time PathAlign.embed)")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
