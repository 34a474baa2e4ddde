"""Slide reading and tiling: MPP handling, tissue mask, MPP-driven grid, level choice, capped even sampling."""
from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from inference.slides import (
    MissingMPPError,
    SlideError,
    choose_level,
    even_sample,
    open_slide,
    patch_grid,
    read_patch,
    read_patches,
    slide_mpp,
    tissue_mask,
    tissue_mask_from_rgb,
)
from inference.synthetic.wsi import write_pyramidal_tiff


def _blob_image(size: int, scale: int = 1) -> np.ndarray:
    """Glass with one pink/purple rectangle of tissue in the upper-left quarter-ish (physical layout fixed)."""
    img = np.full((size, size, 3), 242, np.uint8)
    a, b = size // 8, size // 2
    rng = np.random.default_rng(0)
    tissue = np.stack([rng.integers(150, 220, (b - a, b - a)), rng.integers(60, 140, (b - a, b - a)),
                       rng.integers(150, 210, (b - a, b - a))], -1).astype(np.uint8)
    img[a:b, a:b] = tissue
    return img


@pytest.fixture(scope="module")
def two_scans(tmp_path_factory):
    """The same physical tissue scanned at 0.25 mpp (40x) and 0.5 mpp (20x)."""
    d = tmp_path_factory.mktemp("scans")
    hi = _blob_image(2048)
    lo = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(hi).resize((1024, 1024)))
    p40 = write_pyramidal_tiff(d / "s40.svs", hi, mpp=0.25, objective_power=40)
    p20 = write_pyramidal_tiff(d / "s20.svs", lo, mpp=0.5, objective_power=20)
    return p40, p20


def test_mpp_read_and_missing(tmp_path, two_scans):
    s = open_slide(two_scans[0])
    assert slide_mpp(s) == pytest.approx(0.25)
    # A plain tiled TIFF without resolution: OpenSlide opens it (generic-tiff) but has no MPP.
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, _blob_image(512), tile=(256, 256), photometric="rgb")
    s2 = open_slide(plain)
    with pytest.raises(MissingMPPError, match="fallback_mpp"):
        slide_mpp(s2)
    with pytest.raises(MissingMPPError):
        patch_grid(s2)
    assert slide_mpp(s2, fallback_mpp=0.5) == 0.5
    grid = patch_grid(s2, fallback_mpp=0.5, min_tissue=0.1)
    assert grid.patch_size_level0 == 448 and len(grid) >= 0
    with pytest.raises(SlideError):
        open_slide(tmp_path / "missing.svs")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide")
    with pytest.raises(SlideError):
        open_slide(junk)


def test_tissue_mask_excludes_background(two_scans, small_corpus):
    m = tissue_mask(open_slide(two_scans[0]))
    mask = m.mask
    h, w = mask.shape
    # Tissue square covers [1/8, 1/2) of each side.
    assert mask[int(h * 0.3), int(w * 0.3)]
    assert not mask[int(h * 0.8), int(w * 0.8)]
    assert 0.1 < m.fraction < 0.2
    # Synthetic slides: masked pixels are stained, unmasked ones are glass.
    _, records = small_corpus
    for rec in records[:6]:
        s = open_slide(rec["slide_path"])
        tm = tissue_mask(s)
        thumb = np.asarray(s.get_thumbnail(tm.mask.shape[::-1]).convert("RGB")).astype(int)
        thumb = thumb[:tm.mask.shape[0], :tm.mask.shape[1]]
        mm = tm.mask[:thumb.shape[0], :thumb.shape[1]]
        assert 0.1 < tm.fraction < 0.9
        assert thumb[~mm].mean() > 225
        assert thumb[mm].mean() < thumb[~mm].mean() - 15


def test_mask_of_blank_and_full_images():
    assert not tissue_mask_from_rgb(np.full((64, 64, 3), 240, np.uint8)).any()
    pink = np.zeros((64, 64, 3), np.uint8) + np.array([220, 140, 190], np.uint8)
    assert tissue_mask_from_rgb(pink).mean() > 0.95


def test_grid_uses_mpp_same_physical_patch(two_scans):
    s40, s20 = open_slide(two_scans[0]), open_slide(two_scans[1])
    g40, g20 = patch_grid(s40, 224, 1.0), patch_grid(s20, 224, 1.0)
    # 224 px at 1 um/px = 224 um: 896 px at 40x, 448 px at 20x.
    assert g40.patch_size_level0 == 896 and g20.patch_size_level0 == 448
    assert g40.patch_size_level0 * g40.slide_mpp == pytest.approx(g20.patch_size_level0 * g20.slide_mpp)
    assert len(g40) == len(g20) > 0
    assert np.allclose(g40.coords * 0.25, g20.coords * 0.5)
    p40 = read_patch(s40, g40, *g40.coords[0])
    p20 = read_patch(s20, g20, *g20.coords[0])
    assert p40.shape == p20.shape == (224, 224, 3)
    assert abs(p40.astype(float).mean() - p20.astype(float).mean()) < 6


def test_level_choice_by_downsample_not_index(two_scans):
    s = open_slide(two_scans[0])  # levels: 1, 4 (factor-4 pyramid)
    assert list(s.level_downsamples) == pytest.approx([1.0, 4.0])
    assert choose_level(s, 3.9) == 0
    assert choose_level(s, 4.0) == 1
    assert choose_level(s, 16.0) == 1
    g = patch_grid(s, 224, 1.0)  # needs 4x: read level 1 at 224 px, no resize
    assert g.level == 1 and g.read_size == 224
    g2 = patch_grid(s, 224, 0.5)  # needs 2x: read level 0 at 448 px, resize down
    assert g2.level == 0 and g2.read_size == 448
    assert read_patch(s, g2, *g2.coords[0]).shape == (224, 224, 3)


def test_cap_with_even_sampling():
    cols, rows = np.meshgrid(np.arange(40), np.arange(30))
    cells = np.stack([cols.ravel(), rows.ravel()], 1)
    pick = even_sample(cells, 48)
    assert len(pick) == 48 and len(set(pick.tolist())) == 48
    assert np.array_equal(pick, even_sample(cells, 48))  # deterministic
    chosen = cells[pick]
    # Every quadrant of the grid gets about a quarter.
    q = Counter_quadrants(chosen, 40, 30)
    assert min(q) >= 8, q
    assert len(even_sample(cells, 5000)) == len(cells)


def Counter_quadrants(chosen, w, h):  # noqa: N802 - small local helper
    qx, qy = chosen[:, 0] >= w / 2, chosen[:, 1] >= h / 2
    return [int(((qx == a) & (qy == b)).sum()) for a in (False, True) for b in (False, True)]


def test_grid_cap_on_slide(small_corpus):
    _, records = small_corpus
    s = open_slide(records[0]["slide_path"])
    full = patch_grid(s, 224, 0.5)  # finer grid: more candidates
    capped = patch_grid(s, 224, 0.5, max_patches=5)
    assert full.n_candidates == len(full) > 5
    assert len(capped) == 5 and capped.n_candidates == len(full)
    assert {tuple(c) for c in capped.coords} <= {tuple(c) for c in full.coords}
    assert (capped.tissue >= 0.4).all()
    patches = read_patches(s, capped)
    assert patches.shape == (5, 224, 224, 3) and patches.dtype == np.uint8
    assert isinstance(s, openslide.OpenSlide)
