"""Synthetic corpus: pyramidal .svs slides with H&E-like tissue, paired report texts and structured labels.

Deterministic by seed: the same (n_cases, seed, size, mpp) always gives the same cases, pixels, reports and
splits, whatever the number of worker processes.

API (stable, used by the model side, tests and demos):

- `generate_corpus(out_dir, n_cases, seed=0, size=(2048, 2048), mpp=0.5, workers=None, diagnoses=None,
   progress=None) -> Path` writes `out_dir/slides/*.svs` and `out_dir/manifest.jsonl`; returns the manifest path.
- `load_manifest(path) -> list[dict]` reads it back (path: the manifest file or the corpus directory).
- `plan_cases(n_cases, seed, diagnoses=None) -> list[dict]`: the case specifications alone (no pixels).
- `render_case(case, size, mpp) -> np.ndarray`: the RGB level-0 image of a case.
- Re-exported from `catalog`: `DIAGNOSES`, `DIAGNOSIS_BY_KEY`, `ORGANS`, `CATEGORIES`, `LABEL_NAMES`, `FINDINGS`.

Each manifest record: `slide` (path relative to the manifest), `report`, `labels` (keys `LABEL_NAMES`:
organ, site, procedure, diagnosis, diagnosis_display, category, grade, findings), `split`
("train"/"val"/"test", stratified by diagnosis, ~70/15/15), `case_id`, `part`, `organ`, `diagnosis`,
`clinical_history`, plus `final_diagnosis`, `mpp`, `width`, `height`, `index`, `seed`.

The diagnosis, grade and findings are visible in the pixels; the clinical history, gross description and
immunostain comments in the report are not.

CLI: `python -m inference.synthetic.corpus --out DIR --cases N --seed S [--size 2048] [--mpp 0.5]`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .catalog import (  # noqa: F401  (re-exported API)
    CATEGORIES,
    DIAGNOSES,
    DIAGNOSIS_BY_KEY,
    FINDINGS,
    LABEL_NAMES,
    ORGANS,
    diagnosis_keys,
    organ_keys,
)
from .reports import write_report
from .tissue import Look, render_tissue
from .wsi import write_pyramidal_tiff

MANIFEST = "manifest.jsonl"
SPLIT_PATTERN = ["train"] * 14 + ["val"] * 3 + ["test"] * 3  # 70 / 15 / 15, cycled per diagnosis


def _case_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    # One independent stream per (seed, case, purpose): plans, pixels and texts do not disturb each other.
    return np.random.default_rng([seed, index, stream])


def _findings(key: str, grade_index: int, severity: float, rng: np.random.Generator) -> dict:
    def level(x: float) -> str:
        return ("mild", "moderate", "severe")[min(2, int(x * 3))]

    def mit(x: float) -> str:
        return ("low", "moderate", "high")[min(2, int(x * 3))]

    f: dict = {}
    if key == "colon_normal":
        f = {"inflammation": "mild" if rng.random() < 0.3 else "none",
             "lymphoid_aggregates": bool(rng.random() < 0.35)}
    elif key == "colon_tubular_adenoma":
        f = {"mitoses": mit(0.2 + 0.5 * severity)}
    elif key == "colon_adenocarcinoma":
        f = {"necrosis": bool(rng.random() < 0.5 + 0.3 * severity), "cribriform": bool(rng.random() < 0.4),
             "mucin": bool(rng.random() < 0.25), "mitoses": mit(0.3 + 0.6 * severity),
             "pleomorphism": level(0.35 + 0.6 * severity)}
    elif key == "stomach_chronic_gastritis":
        f = {"inflammation": ("moderate", "severe", "severe")[grade_index],
             "lymphoid_aggregates": bool(rng.random() < 0.6)}
    elif key == "stomach_signet_ring_carcinoma":
        f = {"mucin": bool(rng.random() < 0.5), "pleomorphism": "moderate"}
    elif key == "prostate_benign":
        f = {"corpora_amylacea": bool(rng.random() < 0.6),
             "inflammation": "mild" if rng.random() < 0.3 else "none"}
    elif key == "prostate_adenocarcinoma":
        f = {"cribriform": grade_index >= 1 and bool(rng.random() < 0.7), "pleomorphism": level(0.2 + 0.6 * severity),
             "mitoses": mit(0.1 + 0.6 * severity)}
    elif key == "breast_invasive_ductal_carcinoma":
        f = {"necrosis": grade_index >= 1 and bool(rng.random() < 0.3 + 0.4 * severity),
             "mitoses": mit(severity * 0.99), "pleomorphism": level(severity * 0.99)}
    elif key == "lung_adenocarcinoma":
        f = {"mucin": bool(rng.random() < 0.35), "mitoses": mit(0.1 + 0.7 * severity),
             "pleomorphism": level(0.2 + 0.7 * severity)}
    elif key == "lung_squamous_cell_carcinoma":
        f = {"keratin_pearls": grade_index < 2 or bool(rng.random() < 0.5),
             "necrosis": bool(rng.random() < 0.5), "mitoses": mit(0.3 + 0.6 * severity),
             "pleomorphism": level(0.3 + 0.6 * severity)}
    elif key == "lung_normal":
        f = {"inflammation": "mild" if rng.random() < 0.3 else "none"}
    elif key == "skin_basal_cell_carcinoma":
        f = {"mitoses": mit(rng.uniform(0, 0.7))}
    elif key == "skin_melanoma":
        f = {"pigment": ("mild", "moderate", "severe")[int(rng.integers(0, 3))], "mitoses": mit(0.4 + 0.5 * severity),
             "pleomorphism": "marked"}
    elif key == "skin_nevus":
        f = {"pigment": "mild" if rng.random() < 0.6 else "none"}
    return f


def plan_cases(n_cases: int, seed: int = 0, diagnoses: Sequence[str] | None = None) -> list[dict]:
    """Case specifications (diagnosis, grade, findings, site, patient, split...) without pixels or text."""
    keys = list(diagnoses) if diagnoses else [d.key for d in DIAGNOSES]
    unknown = set(keys) - set(DIAGNOSIS_BY_KEY)
    if unknown:
        raise ValueError(f"unknown diagnoses: {sorted(unknown)}")
    rng = np.random.default_rng([seed, 7919])
    # Balanced: every block of len(keys) cases holds each diagnosis once, in a seeded order.
    order: list[str] = []
    while len(order) < n_cases:
        order.extend(rng.permutation(keys).tolist())
    order = order[:n_cases]
    split_offset = {k: int(rng.integers(0, len(SPLIT_PATTERN))) for k in keys}
    pattern = rng.permutation(SPLIT_PATTERN).tolist()
    seen: dict[str, int] = {}
    cases = []
    for i, key in enumerate(order):
        r = _case_rng(seed, i, 0)
        dx = DIAGNOSIS_BY_KEY[key]
        organ = ORGANS[dx.organ]
        grade_index = int(r.integers(0, len(dx.grades))) if dx.grades else -1
        severity = grade_index / (len(dx.grades) - 1) if len(dx.grades) > 1 else 0.0
        sex = {"prostate": "M", "breast": "F"}.get(dx.organ) or ("M" if r.random() < 0.5 else "F")
        k = seen.get(key, 0)
        seen[key] = k + 1
        procedure = _pick_procedure(dx.organ, r)
        cases.append({
            "index": i,
            "seed": seed,
            "case_id": f"SYN{seed}-{i + 1:05d}",
            "part": "ABC"[int(r.choice(3, p=[0.7, 0.2, 0.1]))],
            "diagnosis": key,
            "organ": dx.organ,
            "site": organ.sites[int(r.integers(0, len(organ.sites)))],
            "procedure": procedure,
            "grade_index": grade_index,
            "severity": severity,
            "findings": _findings(key, grade_index, severity, r),
            "age": int(r.integers(28, 90)),
            "sex": sex,
            "n_fragments": int(r.integers(1, 4)) if "biopsy" in procedure and "core" not in procedure else 1,
            "split": pattern[(k + split_offset[key]) % len(pattern)],
        })
    return cases


def _pick_procedure(organ: str, r: np.random.Generator) -> str:
    procs = ORGANS[organ].procedures
    return procs[int(r.integers(0, len(procs)))]


def labels_of(case: dict) -> dict:
    dx = DIAGNOSIS_BY_KEY[case["diagnosis"]]
    return {
        "organ": dx.organ,
        "site": case["site"],
        "procedure": case["procedure"],
        "diagnosis": dx.key,
        "diagnosis_display": dx.display,
        "category": dx.category,
        "grade": dx.grades[case["grade_index"]] if case["grade_index"] >= 0 else None,
        "findings": case["findings"],
    }


def render_case(case: dict, size: tuple[int, int] = (2048, 2048), mpp: float = 0.5) -> np.ndarray:
    """RGB (height, width, 3) uint8 level-0 image of a planned case (deterministic)."""
    width, height = size
    look = Look(diagnosis=case["diagnosis"], organ=case["organ"], grade_index=case["grade_index"],
                severity=case["severity"], findings=case["findings"], procedure=case["procedure"])
    return render_tissue(look, height, width, mpp, _case_rng(case["seed"], case["index"], 1))


def _label_image(case: dict) -> np.ndarray:
    img = Image.new("RGB", (400, 400), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.text((20, 20), "PATHALIGN SYNTHETIC", fill=(0, 0, 0))
    d.text((20, 50), f"{case['case_id']}  {case['part']}1", fill=(0, 0, 0))
    d.text((20, 80), "H&E", fill=(0, 0, 0))
    bits = hashlib.sha256(case["case_id"].encode()).digest()
    x = 20
    for byte in bits[:24]:  # a fake 1-D barcode
        for k in range(8):
            w = 2 + (byte >> k & 1) * 2
            if k % 2 == 0:
                d.rectangle([x, 200, x + w - 1, 360], fill=(0, 0, 0))
            x += w
            if x > 380:
                break
    return np.asarray(img)


def _macro_image(rgb: np.ndarray, label: np.ndarray) -> np.ndarray:
    macro = Image.new("RGB", (1280, 431), (225, 228, 230))
    macro.paste(Image.fromarray(label).resize((380, 380)), (25, 25))
    thumb = Image.fromarray(rgb)
    thumb.thumbnail((800, 400))
    macro.paste(thumb, (440 + (800 - thumb.width) // 2, (431 - thumb.height) // 2))
    return np.asarray(macro)


def _tune_malloc() -> None:
    """Keep freed image buffers in the heap instead of unmapping them: on small VMs, page-faulting fresh
    16 MB arrays costs more than the arithmetic done on them (rendering is ~2x faster)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 1024 * 1024)  # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 * 1024 * 1024)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


def _make_slide(job: tuple[dict, str, tuple[int, int], float]) -> dict:
    case, out_dir, size, mpp = job
    rgb = render_case(case, size, mpp)
    rel = f"slides/{case['case_id']}_{case['part']}.svs"
    label = _label_image(case)
    write_pyramidal_tiff(Path(out_dir) / rel, rgb, mpp=mpp, objective_power=round(10 / mpp),
                         label=label, macro=_macro_image(rgb, label))
    text = write_report(case, _case_rng(case["seed"], case["index"], 2))
    labels = labels_of(case)
    return {
        "slide": rel,
        "report": text.report,
        "labels": labels,
        "split": case["split"],
        "case_id": case["case_id"],
        "part": case["part"],
        "organ": labels["organ"],
        "diagnosis": labels["diagnosis"],
        "clinical_history": text.clinical_history,
        "final_diagnosis": text.final_diagnosis,
        "mpp": mpp,
        "width": size[0],
        "height": size[1],
        "index": case["index"],
        "seed": case["seed"],
    }


def generate_corpus(out_dir: str | Path, n_cases: int, seed: int = 0, size: int | tuple[int, int] = 2048,
                    mpp: float = 0.5, workers: int | None = None, diagnoses: Sequence[str] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Write n_cases slides and `manifest.jsonl` under out_dir; return the manifest path.

    size: level-0 side in pixels, or (width, height). mpp: level-0 microns per pixel (0.5 = 20x, 0.25 = 40x).
    workers: processes (default: up to 2, fewer for small corpora); the output does not depend on it.
    """
    out = Path(out_dir)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    wh = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cases = plan_cases(n_cases, seed, diagnoses)
    jobs = [(c, str(out), wh, float(mpp)) for c in cases]
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1, n_cases // 12))
    records: list[dict] = []
    if workers <= 1:
        _tune_malloc()
        for job in jobs:
            records.append(_make_slide(job))
            if progress:
                progress(len(records), n_cases)
    else:
        # spawn: safe even when the caller has torch threads running (fork is not).
        with mp.get_context("spawn").Pool(workers, initializer=_tune_malloc) as pool:
            for rec in pool.imap(_make_slide, jobs, chunksize=1):
                records.append(rec)
                if progress:
                    progress(len(records), n_cases)
    manifest = out / MANIFEST
    tmp = manifest.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    tmp.replace(manifest)
    return manifest


def load_manifest(path: str | Path) -> list[dict]:
    """Records of a corpus manifest; `path` is the manifest file or its directory. Each record gains
    `slide_path`, the absolute path of its slide."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    records = []
    with open(p) as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                rec["slide_path"] = str((p.parent / rec["slide"]).resolve())
                records.append(rec)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=2048, help="level-0 side in pixels")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--diagnoses", nargs="*", default=None, help=f"subset of: {' '.join(diagnosis_keys())}")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"\r{done}/{total} slides", end="", file=sys.stderr, flush=True)

    path = generate_corpus(args.out, args.cases, args.seed, args.size, args.mpp, args.workers, args.diagnoses,
                           report)
    print(f"\nwrote {path} ({args.cases} cases) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
