"""Slide-wide geometry for the synthetic WSI corpus v2: tissue, benign tissue-type regions and lesions.

Everything is planned on a low-resolution grid (`f` level-0 pixels per cell, e.g. 32 at 0.5 um/px = 16 um)
as signed float fields; the slide writer upsamples them bilinearly and thresholds at 0, so the saved masks
(the same fields > 0) align with the painted pixels to within one cell.

- `tissue_field(rng, lh, lw, coverage)`: a few large fragments covering about `coverage` of the slide.
- `region_labels(rng, tissue, k)`: a partition of the tissue into k benign tissue types (smooth patches).
- `plan_foci(rng, tissue, share, n_foci, f)`: 1-5 irregular foci covering `share` of the tissue, their
  polygons and boxes in level-0 pixels.
- `diffuse_lesion(rng, tissue, share)`: a lesion spread over a large part of the tissue.
- `stratum_of(share)`: "normal", "<1%", "1-5%" or "diffuse".
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

STRATA: tuple[str, ...] = ("<1%", "1-5%", "diffuse", "normal")


def stratum_of(share: float) -> str:
    if share <= 0:
        return "normal"
    if share < 0.01:
        return "<1%"
    if share <= 0.05:
        return "1-5%"
    return "diffuse"


def _smooth_noise(rng: np.random.Generator, lh: int, lw: int, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((lh, lw)).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-6)


def tissue_field(rng: np.random.Generator, lh: int, lw: int, coverage: float = 0.62) -> np.ndarray:
    """Signed field (> 0 = tissue): 1-3 large fragments with irregular borders, thresholded so that about
    `coverage` of the slide is tissue."""
    yy, xx = np.mgrid[:lh, :lw].astype(np.float32)
    field = np.full((lh, lw), -1e3, np.float32)
    n = int(rng.integers(1, 4))
    for i in range(n):
        cx, cy = rng.uniform(0.3, 0.7) * lw, rng.uniform(0.3, 0.7) * lh
        if n > 1:
            cx = (i + 0.5) / n * lw + rng.uniform(-0.05, 0.05) * lw
        rx, ry = rng.uniform(0.3, 0.45) * lw / max(1, n) ** 0.5, rng.uniform(0.35, 0.48) * lh
        ang = rng.uniform(-0.3, 0.3)
        dx, dy = xx - cx, yy - cy
        u, v = dx * math.cos(ang) + dy * math.sin(ang), -dx * math.sin(ang) + dy * math.cos(ang)
        field = np.maximum(field, 1 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2))
    field = field + 0.25 * _smooth_noise(rng, lh, lw, max(2.0, lh / 40))
    # Keep a margin of glass at the slide edge, then pick the threshold that gives `coverage`.
    edge = np.minimum.reduce([xx, yy, lw - 1 - xx, lh - 1 - yy]) / max(1.0, 0.03 * min(lh, lw))
    field = np.minimum(field, edge - 1)
    thr = float(np.quantile(field, 1 - coverage))
    return (field - thr).astype(np.float32)


def region_labels(rng: np.random.Generator, tissue: np.ndarray, k: int) -> np.ndarray:
    """int8 (lh, lw): 0 outside tissue, 1..k the benign tissue type of each cell (smooth regions)."""
    lh, lw = tissue.shape
    noise = np.stack([_smooth_noise(rng, lh, lw, max(3.0, lh / 14)) for _ in range(k)])
    noise[0] += 0.4  # the first type is the majority
    lab = (noise.argmax(0) + 1).astype(np.int8)
    lab[tissue <= 0] = 0
    return lab


def _polygon(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 28) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ks = np.arange(2, 6)
    amp = 0.18 * rng.normal(0, 1, len(ks)) / ks
    ph = rng.uniform(0, 2 * np.pi, len(ks))
    rho = 1 + (amp[:, None] * np.cos(ks[:, None] * t[None] + ph[:, None])).sum(0)
    asp = rng.uniform(1.0, 1.6)
    ang = rng.uniform(0, np.pi)
    lx, ly = r * rho * math.sqrt(asp) * np.cos(t), r * rho / math.sqrt(asp) * np.sin(t)
    x = cx + lx * math.cos(ang) - ly * math.sin(ang)
    y = cy + lx * math.sin(ang) + ly * math.cos(ang)
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _raster(polys: list[list[tuple[float, float]]], lh: int, lw: int, scale: float = 1.0) -> np.ndarray:
    img = Image.new("L", (lw, lh), 0)
    d = ImageDraw.Draw(img)
    for p in polys:
        d.polygon([(x * scale, y * scale) for x, y in p], fill=255)
    return np.asarray(img) > 0


def plan_foci(rng: np.random.Generator, tissue: np.ndarray, share: float, n_foci: int, f: int
              ) -> tuple[np.ndarray, list[dict]]:
    """Foci covering about `share` of the tissue. Returns (signed low-res lesion field, foci), each focus
    {"polygon": [[x, y], ...] level-0 px, "box": [x0, y0, x1, y1] level-0 px, "area_px": level-0 px}.

    Foci are placed with their centre well inside tissue and clipped to it; radii are corrected once so the
    clipped area matches the target."""
    lh, lw = tissue.shape
    inside = tissue > 0
    area_t = float(inside.sum())
    dist = ndimage.distance_transform_edt(inside)
    want = share * area_t / n_foci  # cells per focus
    r0 = math.sqrt(want / math.pi)
    cand = np.argwhere(dist > max(2.0, 1.2 * r0))
    if len(cand) == 0:
        cand = np.argwhere(inside)
    centres = []
    for _ in range(n_foci):
        for _try in range(20):  # keep foci apart
            cy, cx = cand[int(rng.integers(0, len(cand)))]
            if all((cx - x) ** 2 + (cy - y) ** 2 > (3 * r0) ** 2 for x, y in centres):
                break
        centres.append((float(cx) + rng.uniform(0, 1), float(cy) + rng.uniform(0, 1)))
    seeds = [int(rng.integers(0, 2**31)) for _ in centres]
    scale = 1.0
    for _ in range(3):
        polys = [_polygon(np.random.default_rng(s), x, y, r0 * scale) for (x, y), s in zip(centres, seeds, strict=True)]
        # Rasterise at 4x the low-res grid for a finer share estimate.
        fine = _raster(polys, lh * 4, lw * 4, 4.0)
        tis4 = np.repeat(np.repeat(inside, 4, 0), 4, 1)
        got = float((fine & tis4).sum()) / 16 / max(area_t, 1)
        if got <= 0:
            scale *= 1.5
            continue
        if abs(got / share - 1) < 0.08:
            break
        scale *= math.sqrt(share / got)
    # Signed field: positive inside a focus polygon and inside tissue (distance-based for a smooth edge).
    fine = _raster(polys, lh * 4, lw * 4, 4.0)
    lesion4 = ndimage.distance_transform_edt(fine) - ndimage.distance_transform_edt(~fine)
    lesion = lesion4.reshape(lh, 4, lw, 4).mean((1, 3)).astype(np.float32) / 4.0
    lesion = np.minimum(lesion, tissue * 4)  # never outside tissue
    foci = []
    for p in polys:
        pts = [[round(x * f), round(y * f)] for x, y in p]
        xs, ys = [q[0] for q in pts], [q[1] for q in pts]
        single = _raster([p], lh * 4, lw * 4, 4.0) & tis4
        foci.append({"polygon": pts, "box": [min(xs), min(ys), max(xs), max(ys)],
                     "area_px": int(round(float(single.sum()) / 16 * f * f))})
    return lesion, foci


def diffuse_lesion(rng: np.random.Generator, tissue: np.ndarray, share: float) -> np.ndarray:
    """Signed low-res field covering about `share` (e.g. 0.3-0.9) of the tissue in broad smooth regions."""
    lh, lw = tissue.shape
    n = _smooth_noise(rng, lh, lw, max(3.0, lh / 12))
    inside = tissue > 0
    thr = float(np.quantile(n[inside], 1 - share)) if inside.any() else 0.0
    return np.minimum((n - thr) * 4, tissue * 4).astype(np.float32)


def lesion_share(lesion: np.ndarray, tissue: np.ndarray) -> float:
    t = tissue > 0
    return float(((lesion > 0) & t).sum()) / max(1, int(t.sum()))


def upsample(window: np.ndarray, factor: int, rows: int, cols: int, oy: int, ox: int) -> np.ndarray:
    """Bilinear upsampling of a low-res window (cell centres at (i + 0.5) * factor) cropped to a band."""
    img = Image.fromarray(window.astype(np.float32))
    big = np.asarray(img.resize((window.shape[1] * factor, window.shape[0] * factor), Image.Resampling.BILINEAR))
    return big[oy:oy + rows, ox:ox + cols]
