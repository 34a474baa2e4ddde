"""Bench: patches per second from a real slide file through tiling + patch encoder + Q-Former, for random-init
encoders of ViT-S/16, ViT-B/16, ViT-L/16 and ViT-H/14 size, on the CPU and (when present) CUDA.

The slide: a pyramidal JPEG TIFF (Aperio layout, 0.5 um/px) written with inference.synthetic.wsi from four
rendered synthetic cases (a mosaic of them, flipped), a few thousand tissue patches at the presets' tiling
(224 px at 0.5 um/px); made once and kept under var/bench/. The encoders (random init, nothing downloaded):

    ViT-S/16  timm vit_small_patch16_224 (no preset is ViT-S; the "any timm model" door)
    ViT-B/16  timm vit_base_patch16_224 (the architecture of Phikon's and CONCH v1's trunks, whose presets
              load through transformers / open_clip layouts that need a weights directory)
    ViT-L/16  the "uni" preset (UNI: timm vit_large_patch16_224, LayerScale)
    ViT-H/14  the "virchow2" preset (timm vit_huge_patch14_224, SwiGLU, 4 registers, CLS + mean pooling)

The pipeline per model: `iter_slide_features` (tissue mask + grid, patch reading in a pool, batched encoding
with bf16 weights on CUDA) and a random-init 6-layer Q-Former (32 queries) embedding the slide. Reference in
the same run: the plain timm forward on pre-made tensors already on the device (no reading, no decoding,
no normalisation); the ratio says how much of the network's own speed the whole pipeline keeps. Also
printed: reading alone (the pool over the same patches), and the share of the pipeline's wall time spent
encoding vs waiting for reads.

    .venv/bin/python bench/embed.py                        # CPU (and CUDA when present), default sizes
    .venv/bin/python bench/embed.py --devices cuda --compile
    .venv/bin/python bench/embed.py --models ViT-S/16 --cpu-patches 512

On the CPU the big models get fewer patches (a spatially even subset of the slide's grid): --cpu-patches.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.encoders import IMAGENET_MEAN, IMAGENET_STD, build_encoder  # noqa: E402
from inference.features import iter_slide_features  # noqa: E402
from inference.slides import open_slide, patch_grid  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_NORM = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input_size": 224}
MODELS = {
    "ViT-S/16": {"kind": "timm", "model_name": "vit_small_patch16_224", "pooling": "head",
                 "model_kwargs": {"num_classes": 0, "dynamic_img_size": True}, **_NORM},
    "ViT-B/16": {"kind": "timm", "model_name": "vit_base_patch16_224", "pooling": "head",
                 "model_kwargs": {"num_classes": 0, "dynamic_img_size": True}, **_NORM},
    "ViT-L/16": {"preset": "uni"},
    "ViT-H/14": {"preset": "virchow2"},
}
CPU_PATCHES = {"ViT-S/16": 48, "ViT-B/16": 16, "ViT-L/16": 8, "ViT-H/14": 4}
TILING = {"mpp": 0.5, "patch_size": 224}  # the presets' (AT_20X)


def make_slide(size: int, out_dir: Path) -> Path:
    """A size x size px slide at 0.5 um/px: a mosaic of four rendered cases (3072 px each), flipped."""
    from inference.synthetic.corpus import plan_cases, render_case
    from inference.synthetic.wsi import write_pyramidal_tiff

    path = out_dir / f"embed-bench-{size}.svs"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    side = 3072
    cases = [render_case(c, (side, side), 0.5) for c in plan_cases(4, seed=11)]
    n = -(-size // side)
    rgb = np.empty((size, size, 3), np.uint8)
    for i in range(n):
        for j in range(n):
            tile = cases[(i * n + j) % 4]
            tile = tile[::-1] if (i + j) % 2 else tile
            tile = tile[:, ::-1] if i % 2 else tile
            h, w = min(side, size - i * side), min(side, size - j * side)
            rgb[i * side:i * side + h, j * side:j * side + w] = tile[:h, :w]
    tmp = path.with_suffix(".tmp.svs")
    write_pyramidal_tiff(tmp, rgb, mpp=0.5)
    tmp.replace(path)
    print(f"# wrote {path} ({size} x {size} px at 0.5 um/px) in {time.perf_counter() - t:.0f} s")
    return path


def tissue_grid(path: Path, max_patches: int | None):
    s = open_slide(path)
    try:
        return patch_grid(s, patch_size=TILING["patch_size"], target_mpp=TILING["mpp"], max_patches=max_patches)
    finally:
        s.close()


def read_alone(path: Path, grid, workers: int, readers: str) -> float:
    """Seconds to read the grid's patches through the pool (what the pipeline's reading costs alone)."""
    from inference.slides import read_chunk_at

    chunks = [grid.coords[i:i + 32] for i in range(0, len(grid), 32)]
    if readers == "processes":
        import multiprocessing

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        list(pool.map(read_chunk_at, [str(path)] * workers, [grid.level] * workers, [grid.read_size] * workers,
                      [grid.patch_size] * workers, [grid.coords[:1]] * workers))  # start the processes first
    else:
        pool = ThreadPoolExecutor(workers)
    caches: dict = {}

    def one(c):  # noqa: ANN001, ANN202
        if readers == "processes":
            return pool.submit(read_chunk_at, str(path), grid.level, grid.read_size, grid.patch_size, c)
        import threading

        cache = caches.setdefault(threading.get_ident(), {})
        return read_chunk_at(str(path), grid.level, grid.read_size, grid.patch_size, c, cache)

    t = time.perf_counter()
    if readers == "processes":
        for f in [one(c) for c in chunks]:
            f.result()
    else:
        list(pool.map(one, chunks))
    dt = time.perf_counter() - t
    pool.shutdown()
    for cache in caches.values():
        for h in cache.values():
            h.close()
    return dt


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def reference(enc, n: int, bs: int, device: str) -> float:
    """Seconds for the plain network forward (timm model + pooling) on n pre-made patches on the device."""
    x = torch.randn(min(bs, n), 3, enc.input_size, enc.input_size, device=device).to(enc.compute_dtype)
    enc(x[: min(len(x), 8)])
    sync(device)
    t = time.perf_counter()
    done = 0
    while done < n:
        m = min(len(x), n - done)
        enc(x[:m])
        done += m
    sync(device)
    return time.perf_counter() - t


def qformer_for(dim: int, device: str):
    from inference.qformer import QFormer

    torch.manual_seed(0)
    model, _ = QFormer.from_text_model(num_hidden_layers=6, vision_width=dim, num_query_tokens=32)
    return model.to(device).eval()


@torch.no_grad()
def embed_slide(qformer, feats: torch.Tensor, device: str) -> torch.Tensor:
    x = feats[None].to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        out, _ = qformer.encode_patches(x)
        return qformer.query_embeddings(out).float()


def bench_model(name: str, device: str, slide: Path, n_patches: int | None, args) -> dict:
    t = time.perf_counter()
    enc = build_encoder(MODELS[name], device=device, compile=args.compile)
    built = time.perf_counter() - t
    bs = args.batch or enc.default_batch_size()
    workers = args.workers or (os.cpu_count() or 2)
    readers = args.readers or ("processes" if device.startswith("cuda") else "threads")
    grid = tissue_grid(slide, n_patches)
    n = len(grid)
    # Warm-up (kernels, allocator, torch.compile): a couple of batches.
    warm = bs if device.startswith("cuda") else min(bs, 4)
    enc.encode_on_device(np.zeros((warm, 224, 224, 3), np.uint8), batch_size=bs)
    ref = reference(enc, n, bs, device)
    read = read_alone(slide, grid, workers, readers)
    qformer = qformer_for(enc.dim, device)
    embed_slide(qformer, torch.zeros(16, enc.dim), device)  # warm-up
    sync(device)
    t = time.perf_counter()
    (sf,) = iter_slide_features([slide], enc, patch_size=TILING["patch_size"], target_mpp=TILING["mpp"],
                                max_patches=n_patches, batch_size=bs, workers=workers, readers=readers)
    tq = time.perf_counter()
    embed_slide(qformer, sf.features, device)
    sync(device)
    end = time.perf_counter()
    wall = end - t
    del enc, qformer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"name": name, "device": device, "n": n, "candidates": grid.n_candidates, "wall": wall,
            "qformer": end - tq, "ref": ref, "read": read, "encode": sf.encode_seconds, "wait": sf.read_wait_seconds,
            "read_sum": sf.read_seconds, "built": built, "bs": bs, "workers": workers, "readers": readers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--devices", default=default_devices, help=f"comma-separated (default {default_devices})")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--slide", help="an existing slide file (default: the synthetic one, made once)")
    ap.add_argument("--slide-size", type=int, default=16384, help="level-0 side of the synthetic slide (px)")
    ap.add_argument("--cpu-patches", help="patches per model on the CPU, comma-separated in --models order "
                    f"(default {','.join(str(v) for v in CPU_PATCHES.values())})")
    ap.add_argument("--cuda-patches", type=int, default=0, help="patches per model on CUDA (0: every tissue patch)")
    ap.add_argument("--batch", type=int, default=0, help="encode batch (0: the encoder's default, 256 on CUDA)")
    ap.add_argument("--workers", type=int, default=0, help="readers (0: one per CPU core)")
    ap.add_argument("--readers", choices=("threads", "processes"), help="default: threads on CPU, processes on CUDA")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    cpu_patches = dict(CPU_PATCHES)
    if args.cpu_patches:
        cpu_patches.update(zip(models, (int(v) for v in args.cpu_patches.split(",")), strict=False))
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("# CUDA requested but not available: CPU only")
        devices = [d for d in devices if not d.startswith("cuda")] or ["cpu"]
    slide = Path(args.slide) if args.slide else make_slide(args.slide_size, ROOT / "var" / "bench")
    full = tissue_grid(slide, None)
    print(f"# bench/embed.py  {date.today()}  torch {torch.__version__}  {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()})  torch threads {torch.get_num_threads()}")
    print(f"# slide {slide.name}: {full.dimensions[0]} x {full.dimensions[1]} px at {full.slide_mpp} um/px, "
          f"{len(full)} tissue patches of {TILING['patch_size']} px at {TILING['mpp']} um/px")
    rows = []
    for device in devices:
        label = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
        print(f"\n## {device} ({label})" + ("" if device.startswith("cuda") else
              "  -- fewer patches for the big models (an even subset of the grid): --cpu-patches"))
        print(f"{'model':9s} {'patches':>7s} {'pipeline':>9s} {'reference':>10s} {'ratio':>6s} {'reads alone':>11s}"
              f" {'encoding':>8s} {'read wait':>9s} {'Q-Former':>8s}  (patches/s; shares of pipeline wall)")
        for name in models:
            cap = (args.cuda_patches or None) if device.startswith("cuda") else cpu_patches[name]
            r = bench_model(name, device, slide, cap, args)
            rows.append(r)
            pps, refps = r["n"] / r["wall"], r["n"] / r["ref"]
            print(f"{name:9s} {r['n']:7d} {pps:9.3g} {refps:10.3g} {pps / refps:6.2f} {r['n'] / r['read']:11.4g}"
                  f" {100 * r['encode'] / r['wall']:7.0f}% {100 * r['wait'] / r['wall']:8.0f}%"
                  f" {1000 * r['qformer']:6.0f}ms  (batch {r['bs']}, {r['workers']} {r['readers']}, "
                  f"built in {r['built']:.0f} s)", flush=True)
    print("\npipeline = tissue mask + grid + reading + encoding + Q-Former slide embedding, wall clock;"
          "\nreference = the plain network forward on pre-made tensors on the device (same batch, same dtype);"
          "\nratio = pipeline / reference; reads alone = the reader pool over the same patches, no encoder;"
          "\nencoding / read wait = shares of the pipeline's wall time spent in the encoder / waiting for reads.")
    cuda = {r["name"]: r["n"] / r["wall"] for r in rows if r["device"].startswith("cuda")}
    if cuda:
        for name, target in (("ViT-L/16", 3000), ("ViT-S/16", 10000)):
            if name in cuda:
                verdict = "meets" if cuda[name] >= target else "BELOW"
                print(f"target {name} >= {target} patches/s end to end on CUDA: {cuda[name]:.0f} ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
