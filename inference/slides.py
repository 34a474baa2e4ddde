"""Slide reading, tissue detection and patch grids on OpenSlide.

API (stable; the model side, the web app's jobs and the benches use it):

- `open_slide(path) -> openslide.OpenSlide`; raises `SlideError` for unreadable files.
- `slide_mpp(slide, fallback_mpp=None, mpp=None) -> float`: level-0 microns per pixel: `mpp` when given (a
  value someone set for this slide), else the file's when plausible (`PLAUSIBLE_MPP`, 0.1-20 um/px), else
  `fallback_mpp`; otherwise `MissingMPPError` (a guessed magnification would silently change every patch;
  TIFF writers' 72-dpi default reads as 352.8 um/px and would make every pixel its own patch).
- `tissue_mask(slide, max_side=1024) -> TissueMask` and `tissue_mask_from_rgb(rgb) -> bool ndarray`:
  Otsu on HSV saturation with an optical-density floor, then closing, hole filling and small-object removal.
- `patch_grid(slide, patch_size=224, target_mpp=1.0, max_patches=None, min_tissue=0.4, overlap=0, ...) ->
  PatchGrid`: a grid (`overlap` px shared by neighbours, at target_mpp) of patches covering tissue at a physical resolution chosen from the slide's MPP,
  capped with even spatial sampling (deterministic), with level-0 coordinates kept for heatmaps.
- `read_patch(slide, grid, x, y) -> uint8 (patch_size, patch_size, 3)` and `read_patches(slide, grid, idx)`.
- `choose_level(slide, downsample) -> int`: the best pyramid level whose downsample is <= the one needed.

Why these choices: patches are defined in microns, not pixels, so a 40x (0.25 mpp) and a 20x (0.5 mpp)
scan of the same tissue give the same physical patch (224 px at 1.0 mpp = 224 um, ~10x). Reading from
the pyramid level just finer than needed and resizing down keeps reads small and never upsamples; levels
are chosen by downsample, never by index, because vendors' pyramids differ (factor 2, 4 or irregular).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openslide
from PIL import Image
from scipy import ndimage


class SlideError(ValueError):
    """The file is not a slide OpenSlide can read, or lacks what the pipeline needs."""


class MissingMPPError(SlideError):
    """The slide has no (plausible) microns-per-pixel metadata and no fallback was given."""


# Microns per pixel a real scan can have: 0.1 (beyond 100x oil) to 20 (a 0.5x overview). Outside it the
# value is a default of the writer (72 dpi = 352.8 um/px) or a unit mix-up, not a resolution.
PLAUSIBLE_MPP = (0.1, 20.0)


def plausible_mpp(value: float | None) -> bool:
    return value is not None and PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]


def open_slide(path: str | Path) -> openslide.OpenSlide:
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, FileNotFoundError) as exc:
        raise SlideError(f"cannot open slide {path}: {exc}") from exc


def slide_mpp(slide: openslide.OpenSlide, fallback_mpp: float | None = None, mpp: float | None = None) -> float:
    """Level-0 microns per pixel (mean of x and y): `mpp` if given, else the file's if plausible, else
    `fallback_mpp`, else MissingMPPError."""
    if mpp is not None:
        if not mpp > 0:
            raise ValueError("mpp must be positive")
        return float(mpp)
    props = slide.properties
    found = None
    try:
        mx = float(props[openslide.PROPERTY_NAME_MPP_X])
        my = float(props.get(openslide.PROPERTY_NAME_MPP_Y, mx))
        if mx > 0 and my > 0:
            found = (mx + my) / 2
    except (KeyError, ValueError):
        pass
    if plausible_mpp(found):
        return float(found)
    if fallback_mpp is not None:
        if fallback_mpp <= 0:
            raise ValueError("fallback_mpp must be positive")
        return float(fallback_mpp)
    vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
    what = (f"an implausible resolution ({found:.4g} um/px, outside {PLAUSIBLE_MPP[0]}-{PLAUSIBLE_MPP[1]})"
            if found is not None else "no microns-per-pixel metadata")
    raise MissingMPPError(
        f"slide has {what} (vendor {vendor}); patch sizes cannot be set in microns. Pass mpp= (or fallback_mpp=) <microns per "
        "pixel> (e.g. 0.25 for 40x, 0.5 for 20x) if known.")


def choose_level(slide: openslide.OpenSlide, downsample: float) -> int:
    """Pyramid level with the largest downsample that is <= `downsample` (so we only ever shrink)."""
    best, best_ds = 0, 1.0
    for level, ds in enumerate(slide.level_downsamples):
        if ds <= downsample * (1 + 1e-3) and ds > best_ds:
            best, best_ds = level, ds
    return best


# ------------------------------------------------------------------------------------------------ tissue
def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def tissue_mask_from_rgb(rgb: np.ndarray, min_object_frac: float = 0.0005, closing: int = 2) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail.

    Stained tissue is saturated (pink/purple) and absorbs light; glass is white-grey and unsaturated.
    Threshold = Otsu on saturation clamped to [0.04, 0.08] (so an all-tissue or all-glass thumbnail still
    gives a sane answer), AND an optical-density floor; very dark unsaturated pixels (scanner black,
    pen/dust) are excluded. Morphology joins thin tissue (alveolar walls), fills lumens and fat, and drops
    specks.
    """
    x = rgb[..., :3].astype(np.float32)
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    od = -np.log((x + 1.0) / 256.0).sum(-1)
    thr = min(max(_otsu(sat), 0.04), 0.08)
    mask = (sat > thr) & (od > 0.3) & ~((mx < 40) & (sat < 0.2))
    if closing:  # pad with edge values so tissue touching the image border is not eroded away
        padded = np.pad(mask, closing + 1, mode="edge")
        mask = ndimage.binary_closing(padded, iterations=closing)[closing + 1:-closing - 1, closing + 1:-closing - 1]
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, iterations=1)
    lab, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= max(4, min_object_frac * mask.size)
        keep[0] = False
        mask = keep[lab]
    return mask


@dataclass
class TissueMask:
    mask: np.ndarray  # bool (h, w) on a thumbnail
    downsample: float  # level-0 pixels per mask pixel

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


# The most pixels one decode may produce (the web app's pixel budget, webapp/slides/pixel_budget.py, is the
# same; a test checks they agree): get_thumbnail decodes a whole level, and a single-level file declaring
# 16k x 16k would otherwise be 268 Mpixel in memory at once.
MAX_DECODE_PIXELS = 4096 * 4096


class OverPixelBudget(ValueError):
    """A read would decode more than MAX_DECODE_PIXELS at once."""


def tissue_mask(slide: openslide.OpenSlide, max_side: int | None = None, mask_um: float = 8.0,
                mpp: float | None = None) -> TissueMask:
    """Tissue mask on a thumbnail of about `mask_um` microns per pixel (256..2048 px on the long side), or
    `max_side` pixels when given or when the slide has no MPP. The thumbnail's level must fit
    MAX_DECODE_PIXELS (OverPixelBudget otherwise)."""
    w, h = slide.dimensions
    if max_side is None:
        try:
            max_side = int(np.clip(max(w, h) * slide_mpp(slide, mpp=mpp) / mask_um, 256, 2048))
        except MissingMPPError:
            max_side = 1024
    level = slide.get_best_level_for_downsample(max(w, h) / max_side)
    lw, lh = slide.level_dimensions[level]
    if lw * lh > MAX_DECODE_PIXELS:
        raise OverPixelBudget(f"the tissue mask would decode level {level} whole ({lw} x {lh}, "
                              f"{lw * lh / 1e6:.0f} Mpixel); at most {MAX_DECODE_PIXELS / 1e6:.0f} Mpixel are "
                              "decoded at once, and the file has no smaller level")
    thumb = np.asarray(slide.get_thumbnail((max_side, max_side)).convert("RGB"))
    return TissueMask(tissue_mask_from_rgb(thumb), downsample=w / thumb.shape[1] if thumb.shape[1] else 1.0)


# ------------------------------------------------------------------------------------------------- grid
@dataclass
class PatchGrid:
    """Where to read patches. coords are level-0 (x, y) of each patch's top-left corner."""

    coords: np.ndarray  # int64 [N, 2]
    patch_size: int  # output patch side in pixels (at target_mpp)
    patch_size_level0: int  # patch side in level-0 pixels
    target_mpp: float
    slide_mpp: float
    level: int  # pyramid level read from
    level_downsample: float
    read_size: int  # patch side in pixels at `level` (resized to patch_size)
    dimensions: tuple[int, int]  # level-0 (width, height)
    tissue: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # tissue fraction per patch
    n_candidates: int = 0  # tissue patches before the cap

    def __len__(self) -> int:
        return len(self.coords)


def _hilbert_index(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """Position along a Hilbert curve of side 2**order (vectorised xy2d)."""
    x, y = x.astype(np.int64).copy(), y.astype(np.int64).copy()
    d = np.zeros_like(x)
    s = 1 << (order - 1) if order > 0 else 0
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx) ^ ry)
        # Rotate the quadrant.
        flip = ~ry
        swap_x = np.where(flip & rx, s - 1 - x, x)
        swap_y = np.where(flip & rx, s - 1 - y, y)
        x, y = np.where(flip, swap_y, swap_x), np.where(flip, swap_x, swap_y)
        s >>= 1
    return d


def even_sample(cells: np.ndarray, k: int) -> np.ndarray:
    """Indices of k of the grid cells (int [N, 2] column/row), spread evenly over space, deterministic:
    order cells along a Hilbert curve and take every (N/k)-th, so each stretch of tissue gets its share."""
    n = len(cells)
    if k >= n:
        return np.arange(n)
    side = int(max(cells.max(), 1)) + 1
    order = max(1, int(np.ceil(np.log2(side))))
    h = _hilbert_index(cells[:, 0], cells[:, 1], order)
    sorted_idx = np.argsort(h, kind="stable")
    picks = np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64)
    return np.sort(sorted_idx[picks])


def patch_grid(slide: openslide.OpenSlide, patch_size: int = 224, target_mpp: float = 1.0,
               max_patches: int | None = None, min_tissue: float = 0.4, mask: TissueMask | None = None,
               fallback_mpp: float | None = None, overlap: int = 0, mpp: float | None = None) -> PatchGrid:
    """Patches of `patch_size` px at `target_mpp` covering tissue, neighbours sharing `overlap` px.

    A patch is kept when at least `min_tissue` of it is tissue (or, if no cell reaches that, the cells
    with at least half the best cell's tissue, so a slide with tissue never yields an empty grid); if more than `max_patches` remain, an even
    spatial subset is kept (see `even_sample`). The grid is centred on the slide.
    """
    if not 0 <= overlap < patch_size:
        raise ValueError(f"overlap must be in [0, patch_size); got {overlap}")
    mpp = slide_mpp(slide, fallback_mpp, mpp)
    factor = target_mpp / mpp
    ps0 = max(1, int(round(patch_size * factor)))
    step = max(1, int(round((patch_size - overlap) * factor)))  # level-0 stride between neighbours
    level = choose_level(slide, factor)
    ds = float(slide.level_downsamples[level])
    read_size = max(1, int(round(ps0 / ds)))
    if read_size * read_size > MAX_DECODE_PIXELS:
        raise OverPixelBudget(f"each patch would decode {read_size} x {read_size} pixels from level {level}; at "
                              f"most {MAX_DECODE_PIXELS / 1e6:.0f} Mpixel are decoded at once")
    w, h = slide.dimensions
    nx, ny = (w - ps0) // step + 1 if w >= ps0 else 0, (h - ps0) // step + 1 if h >= ps0 else 0
    if nx == 0 or ny == 0:
        return PatchGrid(np.zeros((0, 2), np.int64), patch_size, ps0, target_mpp, mpp, level, ds, read_size, (w, h))
    ox, oy = (w - (nx - 1) * step - ps0) // 2, (h - (ny - 1) * step - ps0) // 2
    if mask is None:
        mask = tissue_mask(slide, mpp=mpp)
    # Tissue fraction of each cell from an integral image of the mask.
    m = mask.mask.astype(np.float64)
    sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    col, row = np.meshgrid(np.arange(nx), np.arange(ny))
    col, row = col.ravel(), row.ravel()
    x0, y0 = ox + col * step, oy + row * step
    d = mask.downsample

    def mpos(v: np.ndarray, limit: int) -> np.ndarray:
        return np.clip(np.round(v / d).astype(np.int64), 0, limit)

    mx0, mx1 = mpos(x0, m.shape[1]), mpos(x0 + ps0, m.shape[1])
    my0, my1 = mpos(y0, m.shape[0]), mpos(y0 + ps0, m.shape[0])
    area = np.maximum((mx1 - mx0) * (my1 - my0), 1)
    frac = (sat[my1, mx1] - sat[my0, mx1] - sat[my1, mx0] + sat[my0, mx0]) / area
    # Small fragments may fill no cell to min_tissue: then take the fullest cells rather than none.
    thr = min_tissue if frac.max(initial=0) >= min_tissue else max(0.05, 0.5 * frac.max(initial=0))
    keep = np.nonzero(frac >= thr)[0]
    n_candidates = len(keep)
    if max_patches is not None and len(keep) > max_patches:
        keep = keep[even_sample(np.stack([col[keep], row[keep]], 1), max_patches)]
    coords = np.stack([x0[keep], y0[keep]], 1).astype(np.int64)
    return PatchGrid(coords, patch_size, ps0, target_mpp, mpp, level, ds, read_size, (w, h),
                     frac[keep].astype(np.float32), n_candidates)


def read_patch(slide: openslide.OpenSlide, grid: PatchGrid, x: int, y: int) -> np.ndarray:
    """RGB uint8 (patch_size, patch_size, 3) of the patch whose level-0 top-left corner is (x, y)."""
    region = slide.read_region((int(x), int(y)), grid.level, (grid.read_size, grid.read_size))
    # Transparent pixels (outside the scanned area) read as white, like glass.
    rgba = np.asarray(region)
    rgb = rgba[..., :3].copy()
    if rgba[..., 3].min() < 255:
        alpha = rgba[..., 3:4].astype(np.float32) / 255
        rgb = (rgb * alpha + 255 * (1 - alpha)).astype(np.uint8)
    if grid.read_size != grid.patch_size:
        rgb = np.asarray(Image.fromarray(rgb).resize((grid.patch_size, grid.patch_size), Image.Resampling.BILINEAR))
    return rgb


def read_patches(slide: openslide.OpenSlide, grid: PatchGrid, indices: Sequence[int] | None = None) -> np.ndarray:
    """uint8 [N, patch_size, patch_size, 3] for the given patch indices (all when None)."""
    idx = range(len(grid)) if indices is None else indices
    out = [read_patch(slide, grid, *grid.coords[i]) for i in idx]
    if not out:
        return np.zeros((0, grid.patch_size, grid.patch_size, 3), np.uint8)
    return np.stack(out)


# ---------------------------------------------------------------------------- reading in worker processes
# Used by inference.features.encode_grid(readers="processes"): each worker process opens the slide once and
# decodes whole chunks of patches, so JPEG decoding and resizing never run in the encoder's process. This
# module imports no torch, so a spawned reader starts in well under a second.
_READER: tuple[openslide.OpenSlide, PatchGrid] | None = None


def reader_init(path: str, level: int, read_size: int, patch_size: int) -> None:
    global _READER
    grid = PatchGrid(np.zeros((0, 2), np.int64), patch_size, 0, 0.0, 0.0, level, 0.0, read_size, (0, 0))
    _READER = (open_slide(path), grid)


def read_chunk(coords: np.ndarray) -> tuple[np.ndarray, float]:
    """uint8 [n, patch_size, patch_size, 3] for level-0 corners `coords` [n, 2], and the seconds it took."""
    import time

    assert _READER is not None, "reader_init was not called in this process"
    slide, grid = _READER
    t0 = time.perf_counter()
    out = np.stack([read_patch(slide, grid, int(x), int(y)) for x, y in coords])
    return out, time.perf_counter() - t0


# Several slides in flight (inference.features.iter_slide_features): a reader keeps a few slides open at once,
# keyed by path, so that chunks of the next slide are read while the encoder finishes this one. In a reader
# process the cache is the process's (`_OPEN`); reading threads pass their own dict.
_OPEN: dict[str, openslide.OpenSlide] = {}
OPEN_MAX = 4


def read_chunk_at(path: str, level: int, read_size: int, patch_size: int, coords: np.ndarray,
                  cache: dict[str, openslide.OpenSlide] | None = None) -> tuple[np.ndarray, float]:
    """Like `read_chunk`, for any slide: uint8 [n, patch_size, patch_size, 3] and the seconds it took."""
    import time

    t0 = time.perf_counter()
    cache = _OPEN if cache is None else cache
    slide = cache.get(path)
    if slide is None:
        if len(cache) >= OPEN_MAX:  # the oldest slide is done with by now
            cache.pop(next(iter(cache))).close()
        slide = cache[path] = open_slide(path)
    grid = PatchGrid(np.zeros((0, 2), np.int64), patch_size, 0, 0.0, 0.0, level, 0.0, read_size, (0, 0))
    out = np.stack([read_patch(slide, grid, int(x), int(y)) for x, y in coords])
    return out, time.perf_counter() - t0
