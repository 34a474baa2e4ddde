"""Synthetic WSI corpus v2: slide-sized files with focal lesions, multi-slide parts and several scan sites.

Why: in corpus v1 every patch shows the diagnosis, so a patch classifier scores as well as a slide model.
Here a slide is 10 mm of tissue field or more (default 20,000 px at 0.5 um/px: about 1,200 tissue patches
of 224 px at 1 um/px), its background mixes 2-4 benign tissue types, and the finding is either absent
(normal), focal (1-5 foci covering 0.1-5% of the tissue) or diffuse. A part (specimen) has 1-5 slides and
one report; the finding may be on one of its slides only.

Deterministic by seed: the same (cases, seed, size, mpp, organs) gives the same pixels, masks, manifest
and reports whatever the number of worker processes.

Per slide, under `out/slides/`:
  <slide_id>.svs        Aperio-style pyramidal tiled TIFF, streamed one band at a time (bounded memory)
  <slide_id>.mask.png   uint8 label mask at `mask_downsample` level-0 px per pixel: 0 glass, 1 tissue,
                        2 lesion (the same fields, upsampled, decided the painted pixels)
  <slide_id>.json       sidecar: geometry (foci polygons and boxes in level-0 px, lesion share, stratum),
                        tissue types, scanner profile, artefacts, margin distance
and `out/manifest.jsonl`, one record per slide (keys in `record_keys()`), with the part's report.

Splits (by part, so all slides of a part share one): "train" / "val" / "test" from the training scanner
profiles, and "new-site": every part scanned with the held-out profile (`scanners.HELD_OUT_PROFILE`),
never in train. Test and new-site reports use held-out templates (`templates_v2.HELD_OUT_TEMPLATES`).
Strata by a slide's lesion share of tissue: "<1%", "1-5%", "diffuse", "normal" (`lesions.stratum_of`).

CLI: `python -m inference.synthetic.corpus_v2 --out DIR --cases N --seed S [--size 20000] [--mpp 0.5]
[--organs colon lung ...] [--workers 2]` (N = parts; slides = about 1.8 N by default).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .catalog import DIAGNOSIS_BY_KEY, LABEL_NAMES, ORGANS
from .lesions import (
    diffuse_lesion,
    lesion_share,
    plan_foci,
    region_labels,
    stratum_of,
    tissue_field,
    upsample,
)
from .scanners import (
    HELD_OUT_PROFILE,
    PROFILE_BY_NAME,
    TRAINING_PROFILES,
    apply_artefacts,
    apply_profile,
    artefact_fields,
)
from .templates_v2 import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, write_part_report
from .tissue import Canvas, Look, fibroblasts, lymphocytes, render_tissue, stroma, voronoi_walls
from .wsi import write_streamed_slide

MANIFEST = "manifest.jsonl"
VERSION = 2
MASK_DOWNSAMPLE = 32  # level-0 px per mask pixel (16 um at 0.5 um/px)
CHUNK = 1024  # level-0 band height and atlas field side

# Benign tissue types (2-4 of these per slide) and the lesions each organ may carry.
# A type is (name, Look or a generic kind); the slide's benign diagnosis is the organ's `background`.
ORGAN_PLAN: dict[str, dict] = {
    "colon": {"background": "colon_normal",
              "types": [("mucosa", Look("colon_normal", "colon", -1, 0.0, {}, "resection")),
                        ("mucosa-lymphoid", Look("colon_normal", "colon", -1, 0.0,
                                                 {"inflammation": "mild", "lymphoid_aggregates": True}, "resection")),
                        ("submucosa", "stroma"), ("fat", "fat")],
              "lesions": ["colon_adenocarcinoma", "colon_tubular_adenoma"]},
    "stomach": {"background": "stomach_normal",
                "types": [("oxyntic", Look("stomach_normal", "stomach", -1, 0.0, {}, "biopsy")),
                          ("oxyntic-b", Look("stomach_normal", "stomach", -1, 0.0, {}, "biopsy")),
                          ("submucosa", "stroma")],
                "lesions": ["stomach_signet_ring_carcinoma"]},
    "prostate": {"background": "prostate_benign",
                 "types": [("glands", Look("prostate_benign", "prostate", -1, 0.0, {}, "core biopsy")),
                           ("glands-ca", Look("prostate_benign", "prostate", -1, 0.0,
                                              {"corpora_amylacea": True, "inflammation": "mild"}, "core biopsy")),
                           ("fibromuscular", "stroma")],
                 "lesions": ["prostate_adenocarcinoma"]},
    "breast": {"background": "breast_fibroadenoma",
               "types": [("fibroadenoma", Look("breast_fibroadenoma", "breast", -1, 0.0, {}, "excision")),
                         ("fat", "fat"), ("fibrous", "stroma")],
               "lesions": ["breast_invasive_ductal_carcinoma"]},
    "lung": {"background": "lung_normal",
             "types": [("alveoli", Look("lung_normal", "lung", -1, 0.0, {}, "wedge resection")),
                       ("alveoli-inflamed", Look("lung_normal", "lung", -1, 0.0, {"inflammation": "mild"},
                                                 "wedge resection")),
                       ("pleura", "stroma")],
             "lesions": ["lung_adenocarcinoma", "lung_squamous_cell_carcinoma"]},
}
V2_ORGANS: tuple[str, ...] = tuple(ORGAN_PLAN)
MARGIN_PROCEDURES = ("resection", "excision", "lumpectomy", "lobectomy")
SPLIT_PATTERN = ["train"] * 13 + ["val"] * 2 + ["test"] * 5  # 65 / 10 / 25 of the training-site parts


def v2_diagnoses(organs: Sequence[str] = V2_ORGANS) -> list[str]:
    """Every slide-level diagnosis the corpus can hold, in catalogue order."""
    keys = {ORGAN_PLAN[o]["background"] for o in organs} | {k for o in organs for k in ORGAN_PLAN[o]["lesions"]}
    return [k for k in DIAGNOSIS_BY_KEY if k in keys]


def is_malignant(diagnosis: str) -> bool:
    return DIAGNOSIS_BY_KEY[diagnosis].category == "malignant"


# ---------------------------------------------------------------------------------------------- planning
def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, 20262, *stream])


def _procedure(organ: str, r: np.random.Generator) -> str:
    procs = ORGANS[organ].procedures
    return procs[int(r.integers(0, len(procs)))]


def _share_for(stratum: str, r: np.random.Generator) -> float:
    if stratum == "<1%":
        return float(math.exp(r.uniform(math.log(0.0015), math.log(0.009))))
    if stratum == "1-5%":
        return float(r.uniform(0.012, 0.048))
    return float(r.uniform(0.3, 0.85))


def plan_parts(n_cases: int, seed: int = 0, organs: Sequence[str] | None = None, multi_share: float = 0.5,
               new_site_share: float = 0.15, normal_share: float = 0.3,
               size: tuple[int, int] = (20000, 20000), mpp: float = 0.5) -> list[dict]:
    """Part specifications (no pixels): organ, site, procedure, profile, split, template, slides with
    their planned diagnosis, stratum and target lesion share."""
    organs = list(organs or V2_ORGANS)
    unknown = set(organs) - set(ORGAN_PLAN)
    if unknown:
        raise ValueError(f"unknown organs for corpus v2: {sorted(unknown)} (have {', '.join(V2_ORGANS)})")
    g = _rng(seed, 0)
    order: list[str] = []
    while len(order) < n_cases:
        order.extend(g.permutation(organs).tolist())
    order = order[:n_cases]
    pattern = g.permutation(SPLIT_PATTERN).tolist()
    n_new = int(round(new_site_share * n_cases)) if n_cases >= 4 else 0
    new_site = set(g.choice(n_cases, size=n_new, replace=False).tolist()) if n_new else set()
    parts = []
    k = 0
    for i, organ in enumerate(order):
        r = _rng(seed, 1, i)
        plan = ORGAN_PLAN[organ]
        if i in new_site:
            split, profile = "new-site", HELD_OUT_PROFILE.name
        else:
            split = pattern[k % len(pattern)]
            k += 1
            profile = TRAINING_PROFILES[int(r.integers(0, len(TRAINING_PROFILES)))].name
        templates = HELD_OUT_TEMPLATES if split in ("test", "new-site") else TRAIN_TEMPLATES
        n_slides = int(r.choice([2, 3, 4, 5], p=[0.4, 0.3, 0.2, 0.1])) if r.random() < multi_share else 1
        has_lesion = bool(r.random() >= normal_share)
        lesion_dx = plan["lesions"][int(r.integers(0, len(plan["lesions"])))]
        dx = DIAGNOSIS_BY_KEY[lesion_dx]
        grade_index = int(r.integers(0, len(dx.grades))) if dx.grades else -1
        carrier = int(r.integers(0, n_slides))
        slides = []
        for j in range(n_slides):
            lesion = has_lesion and (j == carrier or r.random() < 0.35)
            stratum = str(r.choice(["<1%", "1-5%", "diffuse"], p=[0.36, 0.36, 0.28])) if lesion else "normal"
            share = _share_for(stratum, r) if lesion else 0.0
            n_foci = 0
            if stratum in ("<1%", "1-5%"):
                n_foci = int(r.integers(1, 3 if share < 0.004 else 6))
            slides.append({"slide_index": j, "diagnosis": lesion_dx if lesion else plan["background"],
                           "planned_stratum": stratum, "target_share": share, "n_foci": n_foci,
                           "n_types": int(r.integers(2, min(4, len(plan["types"])) + 1)),
                           "width": int(size[0]), "height": int(size[1]), "mpp": float(mpp)})
        organ_sites = ORGANS[organ].sites
        parts.append({
            "index": i, "seed": seed, "case_id": f"V2S{seed}-{i + 1:05d}", "part": "A", "organ": organ,
            "site": organ_sites[int(r.integers(0, len(organ_sites)))], "procedure": _procedure(organ, r),
            "profile": profile, "split": split,
            "template": templates[int(r.integers(0, len(templates)))],
            "has_lesion": has_lesion, "lesion_diagnosis": lesion_dx, "grade_index": grade_index,
            "slides": slides,
        })
    return parts


# ---------------------------------------------------------------------------------------------- rendering
def render_generic(kind: str, height: int, width: int, mpp: float, rng: np.random.Generator) -> np.ndarray:
    """Benign connective tissue fields: "stroma" (collagen with fibroblasts and a few vessels) or "fat"."""
    c = Canvas(height, width, mpp, rng)
    c.tissue = np.ones((height, width), bool)
    t = c.tissue
    if kind == "fat":
        walls = voronoi_walls(c, t, 80, 2.5)
        c.clear(t & ~walls)
        c.paint(walls, 0.42, 0.05, texture=0.1)
        fibroblasts(c, walls, 60, 0.3)
    else:
        stroma(c, t, 0.45, 0.06, 16, 0.45, waviness=1.2)
        fibroblasts(c, t, 35, 0.5)
        lymphocytes(c, t, 0.05, 20)
    c.render_nuclei()
    return c.to_rgb(stain_h=float(rng.uniform(0.9, 1.1)), stain_e=float(rng.uniform(0.9, 1.1)))


def _render_field(spec, mpp: float, rng: np.random.Generator, side: int = CHUNK) -> np.ndarray:
    if isinstance(spec, str):
        return render_generic(spec, side, side, mpp, rng)
    return render_tissue(spec, side, side, mpp, rng, full=True)


def _lesion_look(organ: str, diagnosis: str, grade_index: int) -> Look:
    dx = DIAGNOSIS_BY_KEY[diagnosis]
    sev = grade_index / (len(dx.grades) - 1) if len(dx.grades) > 1 and grade_index >= 0 else 0.0
    findings = {"necrosis": grade_index >= 1, "keratin_pearls": grade_index < 2}
    return Look(diagnosis, organ, grade_index, sev, findings, "resection")


N_VARIANTS = 3  # rendered fields per tissue type (and per lesion look) in a slide's atlas
_ATLAS: dict[tuple, np.ndarray] = {}
_ATLAS_MAX = 48  # fields kept in memory per process (3 MB each)


def _atlas_field(seed: int, organ: str, what: tuple, profile: str, mpp: float, variant: int) -> np.ndarray:
    """One CHUNK x CHUNK atlas field, deterministic in its key; cached per process."""
    key = (seed, organ, what, profile, mpp, variant)
    got = _ATLAS.get(key)
    if got is not None:
        return got
    h = int.from_bytes(hashlib.sha256(repr(key[:4] + (variant,)).encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, 3, h])
    if what[0] == "type":
        spec = ORGAN_PLAN[organ]["types"][what[1]][1]
    else:
        spec = _lesion_look(organ, what[1], what[2])
    field = apply_profile(_render_field(spec, mpp, rng), PROFILE_BY_NAME[profile])
    if len(_ATLAS) >= _ATLAS_MAX:
        _ATLAS.pop(next(iter(_ATLAS)))
    _ATLAS[key] = field
    return field


def _slide_id(part: dict, j: int) -> str:
    return f"{part['case_id']}_{part['part']}{j + 1}"


def _label_image(part: dict, j: int) -> np.ndarray:
    img = Image.new("RGB", (400, 400), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.text((20, 20), "PATHALIGN SYNTHETIC v2", fill=(0, 0, 0))
    d.text((20, 50), f"{part['case_id']}  {part['part']}{j + 1}", fill=(0, 0, 0))
    d.text((20, 80), f"{ORGANS[part['organ']].display}, {part['site']}", fill=(0, 0, 0))
    d.text((20, 110), "H&E", fill=(0, 0, 0))
    bits = hashlib.sha256(f"{part['case_id']}{j}".encode()).digest()
    x = 20
    for byte in bits[:24]:
        for k in range(8):
            w = 2 + (byte >> k & 1) * 2
            if k % 2 == 0:
                d.rectangle([x, 200, x + w - 1, 360], fill=(0, 0, 0))
            x += w
            if x > 380:
                break
    return np.asarray(img)


def _window(field: np.ndarray, y0: int, x0: int, rows: int, cols: int, f: int) -> tuple[tuple[slice, slice], int, int]:
    """Low-res window (with a one-cell border) covering level-0 rows/cols, and the band's offset in it."""
    cy0, cx0 = max(0, y0 // f - 1), max(0, x0 // f - 1)
    cy1, cx1 = min(field.shape[0], (y0 + rows) // f + 2), min(field.shape[1], (x0 + cols) // f + 2)
    return (slice(cy0, cy1), slice(cx0, cx1)), y0 - cy0 * f, x0 - cx0 * f


def render_slide(part: dict, j: int, out_dir: Path) -> dict:
    """Write slide j of `part` (svs, mask, sidecar) and return its sidecar dict."""
    s = part["slides"][j]
    width, height, mpp = s["width"], s["height"], s["mpp"]
    f = MASK_DOWNSAMPLE
    rng = _rng(part["seed"], 2, part["index"], j)
    lh, lw = -(-height // f), -(-width // f)
    plan = ORGAN_PLAN[part["organ"]]
    profile = PROFILE_BY_NAME[part["profile"]]
    tissue = tissue_field(rng, lh, lw, float(rng.uniform(0.58, 0.7)))
    inside = tissue > 0
    type_idx = sorted(rng.choice(len(plan["types"]), size=s["n_types"], replace=False).tolist())
    if 0 not in type_idx:  # the organ's own parenchyma is always there
        type_idx[0] = 0
    labels = region_labels(rng, tissue, len(type_idx))
    foci: list[dict] = []
    if s["planned_stratum"] in ("<1%", "1-5%"):
        lesion, foci = plan_foci(rng, tissue, s["target_share"], s["n_foci"], f)
    elif s["planned_stratum"] == "diffuse":
        lesion = diffuse_lesion(rng, tissue, s["target_share"])
    else:
        lesion = np.full((lh, lw), -1.0, np.float32)
    share = lesion_share(lesion, tissue)
    dist_in = ndimage.distance_transform_edt(inside)
    inked = any(p in part["procedure"] for p in MARGIN_PROCEDURES)
    ink = ((dist_in > 0) & (dist_in <= 1.5)).astype(np.float32) if inked else np.zeros((lh, lw), np.float32)
    margin_mm = float(dist_in[lesion > 0].min() - 0.5) * f * mpp / 1000 if share > 0 else None
    art = artefact_fields(rng, lh, lw, inside.astype(np.float32), f)

    # Atlas: rendered fields per tissue type and for the lesion, re-stained/scanned by the profile. Fields
    # are shared between slides of one seed (keyed by organ, type, profile and variant, never by slide), so
    # a slide costs its composition and its JPEG, not its rendering.
    atlas = [[_atlas_field(part["seed"], part["organ"], ("type", t), profile.name, mpp, v) for v in range(N_VARIANTS)]
             for t in type_idx]
    lesion_atlas = [_atlas_field(part["seed"], part["organ"], ("lesion", part["lesion_diagnosis"], part["grade_index"]),
                                 profile.name, mpp, v) for v in range(N_VARIANTS)] if share > 0 else []
    glass = np.asarray(profile.glass, np.uint8)
    onehots = [(labels == k + 1).astype(np.float32) for k in range(len(type_idx))]
    ink_colour = np.asarray((40, 50, 60) if rng.random() < 0.5 else (30, 70, 160), np.float32)

    def band(y0: int) -> np.ndarray:
        rows = min(CHUNK, height - y0)
        out = np.empty((rows, width, 3), np.uint8)
        for x0 in range(0, width, CHUNK):
            cols = min(CHUNK, width - x0)
            sub, oy, ox = _window(tissue, y0, x0, rows, cols, f)

            def up(win: np.ndarray, rows: int = rows, cols: int = cols, oy: int = oy, ox: int = ox) -> np.ndarray:
                return upsample(win, f, rows, cols, oy, ox)

            blk = out[:, x0:x0 + cols]
            tw = tissue[sub]
            if tw.max() <= 0:
                blk[:] = glass
                continue
            full = bool(tw.min() > 0)  # bilinear of positive values stays positive: all tissue
            tis = None if full else up(tw) > 0
            r = np.random.default_rng([part["seed"], 5, part["index"], j, y0, x0])
            present = [k for k in range(len(type_idx)) if onehots[k][sub].any()]
            if len(present) == 1:
                which = None
            else:
                stack = np.stack([up(onehots[k][sub]) for k in present])
                which = np.asarray(present, np.int8)[stack.argmax(0)]
            if full and which is None:
                blk[:] = np.rot90(atlas[present[0]][int(r.integers(0, N_VARIANTS))], int(r.integers(0, 4)))[:rows, :cols]
            else:
                blk[:] = glass
                for k in present:
                    src = np.rot90(atlas[k][int(r.integers(0, N_VARIANTS))], int(r.integers(0, 4)))[:rows, :cols]
                    m = (which == k) if which is not None else tis
                    if tis is not None and which is not None:
                        m &= tis
                    np.copyto(blk, src, where=m[..., None])
            if lesion_atlas and lesion[sub].max() > 0:
                lm = up(lesion[sub]) > 0
                if tis is not None:
                    lm &= tis
                if lm.any():
                    src = np.rot90(lesion_atlas[int(r.integers(0, N_VARIANTS))], int(r.integers(0, 4)))[:rows, :cols]
                    np.copyto(blk, src, where=lm[..., None])
            if inked and ink[sub].any():
                a = np.clip(up(ink[sub]), 0, 1)[..., None] * 0.8
                if tis is not None:
                    a = a * tis[..., None]
                blk[:] = (blk * (1 - a) + ink_colour * a).astype(np.uint8)
            apply_artefacts(blk, art, sub, up)
        return out

    slide_id = _slide_id(part, j)
    slides_dir = out_dir / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    path = slides_dir / f"{slide_id}.svs"
    write_streamed_slide(path, width, height, band, mpp=mpp, chunk=CHUNK, quality=profile.jpeg_quality,
                         scanner_id=profile.scanner_id, label=_label_image(part, j))
    mask = np.zeros((lh, lw), np.uint8)
    mask[inside] = 1
    mask[(lesion > 0) & inside] = 2
    Image.fromarray(mask).save(slides_dir / f"{slide_id}.mask.png", optimize=False, compress_level=6)
    side = {
        "slide_id": slide_id, "width": width, "height": height, "mpp": mpp,
        "mask": f"{slide_id}.mask.png", "mask_downsample": f,
        "mask_values": {"0": "glass", "1": "tissue", "2": "lesion"},
        "tissue_area_px": int(inside.sum()) * f * f,
        "lesion_area_px": int(((lesion > 0) & inside).sum()) * f * f,
        "lesion_share": share, "stratum": stratum_of(share),
        "diagnosis": part["lesion_diagnosis"] if share > 0 else plan["background"], "foci": foci,
        "tissue_types": [plan["types"][t][0] for t in type_idx],
        "profile": profile.to_dict(), "artefacts": art["describe"] | {"pen_colour": art["pen_colour"]
                                                                      if art["describe"]["pen"] else None},
        "inked_margin": inked, "margin_distance_mm": None if margin_mm is None else round(max(margin_mm, 0.0), 3),
    }
    (slides_dir / f"{slide_id}.json").write_text(json.dumps(side, indent=1, sort_keys=True))
    return side


# ------------------------------------------------------------------------------------------------ a part
def _part_job(job: tuple[dict, str]) -> list[dict]:
    part, out = job
    out_dir = Path(out)
    sides = [render_slide(part, j, out_dir) for j in range(len(part["slides"]))]
    return part_records(part, sides)


def part_records(part: dict, sides: list[dict]) -> list[dict]:
    """Manifest records of a rendered part (one per slide), with the part-level report."""
    order = ("normal", "benign", "inflammatory", "precancerous", "malignant")
    worst = max(sides, key=lambda sd: (order.index(DIAGNOSIS_BY_KEY[sd["diagnosis"]].category), sd["lesion_share"]))
    part_dx = worst["diagnosis"]
    info = dict(part)
    info["diagnosis"] = part_dx
    info["slides"] = [{"diagnosis": sd["diagnosis"], "lesion_share": sd["lesion_share"]} for sd in sides]
    info["has_lesion"] = any(sd["lesion_share"] > 0 for sd in sides)
    dx = DIAGNOSIS_BY_KEY[part_dx]
    if info["has_lesion"]:
        best = max(sd["lesion_share"] for sd in sides)
        info["extent"] = ("diffusely involving the tissue" if best > 0.05 else
                          f"focal, {len(worst['foci'])} focus{'es' if len(worst['foci']) > 1 else ''}, "
                          f"up to {max(_focus_mm(fc, worst['mpp']) for fc in worst['foci']):.1f} mm")
    margins = [sd["margin_distance_mm"] for sd in sides if sd["inked_margin"] and sd["margin_distance_mm"] is not None
               and sd["diagnosis"] == part_dx]
    if margins and dx.category == "malignant":
        info["margin"] = {"involved": min(margins) < 0.05, "distance_mm": min(margins)}
    report, final = write_part_report(info, part["template"], _rng(part["seed"], 6, part["index"]))
    grade = dx.grades[part["grade_index"]] if dx.grades and part["grade_index"] >= 0 and info["has_lesion"] else None
    recs = []
    for j, sd in enumerate(sides):
        sdx = DIAGNOSIS_BY_KEY[sd["diagnosis"]]
        labels = {"organ": part["organ"], "site": part["site"], "procedure": part["procedure"],
                  "diagnosis": sdx.key, "diagnosis_display": sdx.display, "category": sdx.category,
                  "grade": grade if sd["lesion_share"] > 0 else None, "findings": {}}
        assert set(labels) == set(LABEL_NAMES)
        recs.append({
            "corpus_version": VERSION, "slide": f"slides/{sd['slide_id']}.svs", "slide_id": sd["slide_id"],
            "mask": f"slides/{sd['mask']}", "sidecar": f"slides/{sd['slide_id']}.json",
            "mask_downsample": sd["mask_downsample"], "case_id": part["case_id"], "part": part["part"],
            "part_id": f"{part['case_id']}_{part['part']}", "slide_index": j, "n_slides_in_part": len(sides),
            "organ": part["organ"], "site": part["site"], "procedure": part["procedure"],
            "diagnosis": sdx.key, "category": sdx.category, "malignant": sdx.category == "malignant",
            "grade": labels["grade"], "lesion_share": sd["lesion_share"], "stratum": sd["stratum"],
            "n_foci": len(sd["foci"]), "tissue_types": sd["tissue_types"], "profile": part["profile"],
            "split": part["split"], "template": part["template"], "report": report, "final_diagnosis": final,
            "part_diagnosis": part_dx, "part_malignant": dx.category == "malignant",
            "margin": info.get("margin"), "labels": labels, "mpp": sd["mpp"], "width": sd["width"],
            "height": sd["height"], "index": part["index"], "seed": part["seed"],
        })
    return recs


def _focus_mm(focus: dict, mpp: float) -> float:
    x0, y0, x1, y1 = focus["box"]
    return max(x1 - x0, y1 - y0) * mpp / 1000


def generate_corpus_v2(out_dir: str | Path, n_cases: int, seed: int = 0, size: int | tuple[int, int] = 20000,
                       mpp: float = 0.5, organs: Sequence[str] | None = None, workers: int | None = None,
                       multi_share: float = 0.5, progress: Callable[[int, int], None] | None = None) -> Path:
    """Render `n_cases` parts (slides, masks, sidecars) and write `manifest.jsonl`; returns its path."""
    out = Path(out_dir)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    wh = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    parts = plan_parts(n_cases, seed, organs, multi_share=multi_share, size=wh, mpp=mpp)
    jobs = [(p, str(out)) for p in parts]
    workers = workers if workers is not None else max(1, min(2, os.cpu_count() or 1, n_cases // 4))
    records: list[dict] = []
    if workers <= 1:
        for i, job in enumerate(jobs):
            records.extend(_part_job(job))
            if progress:
                progress(i + 1, len(jobs))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for i, recs in enumerate(pool.imap(_part_job, jobs, chunksize=1)):
                records.extend(recs)
                if progress:
                    progress(i + 1, len(jobs))
    manifest = out / MANIFEST
    tmp = manifest.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    tmp.replace(manifest)
    params = {"corpus_version": VERSION, "cases": n_cases, "seed": seed, "size": list(wh), "mpp": mpp,
              "organs": list(organs or V2_ORGANS), "multi_share": multi_share, "mask_downsample": MASK_DOWNSAMPLE,
              "slides": len(records)}
    (out / "corpus.json").write_text(json.dumps(params, indent=1))
    return manifest


def load_manifest(path: str | Path) -> list[dict]:
    """Records of a v2 manifest (file or directory), each with absolute `slide_path`, `mask_path` and
    `sidecar_path`."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    recs = []
    for line in p.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            for key in ("slide", "mask", "sidecar"):
                if key in rec:
                    rec[f"{key}_path"] = str((p.parent / rec[key]).resolve())
            recs.append(rec)
    return recs


def load_mask(rec: dict) -> tuple[np.ndarray, int]:
    """(uint8 label mask: 0 glass / 1 tissue / 2 lesion, level-0 px per mask pixel) of a manifest record."""
    return np.asarray(Image.open(rec["mask_path"])), int(rec["mask_downsample"])


def patch_lesion_fraction(mask: np.ndarray, downsample: int, coords: np.ndarray, patch_level0: int) -> np.ndarray:
    """Share of each patch (level-0 top-left `coords` [N, 2], side `patch_level0`) inside the lesion mask."""
    m = (mask == 2).astype(np.float64)
    sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    c = np.asarray(coords, np.float64).reshape(-1, 2)

    def pos(v: np.ndarray, lim: int) -> np.ndarray:
        return np.clip(np.round(v / downsample).astype(np.int64), 0, lim)

    x0, x1 = pos(c[:, 0], m.shape[1]), pos(c[:, 0] + patch_level0, m.shape[1])
    y0, y1 = pos(c[:, 1], m.shape[0]), pos(c[:, 1] + patch_level0, m.shape[0])
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return ((sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) / area).astype(np.float32)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", type=int, default=24, help="parts (each 1-5 slides)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs="+", default=[20000], help="level-0 side, or width height")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--organs", nargs="*", default=None, help=f"subset of: {' '.join(V2_ORGANS)}")
    ap.add_argument("--multi-share", type=float, default=0.5, help="share of parts with 2-5 slides")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        print(f"\r{done}/{total} parts ({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr, flush=True)

    path = generate_corpus_v2(args.out, args.cases, args.seed, size, args.mpp, args.organs, args.workers,
                              args.multi_share, report)
    n = sum(1 for _ in open(path))
    print(f"\nwrote {path} ({args.cases} parts, {n} slides) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
