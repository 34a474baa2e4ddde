"""Write an RGB image as an Aperio-style pyramidal tiled TIFF (.svs) that OpenSlide opens with MPP.

Layout, as Aperio scanners write it: level 0 (tiled), a stripped thumbnail, the lower levels (tiled),
then stripped label and macro images named in their ImageDescription.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def _downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    height, width = rgb.shape[0] // factor, rgb.shape[1] // factor
    return np.asarray(Image.fromarray(rgb).resize((max(1, width), max(1, height)), Image.Resampling.BOX))


def write_pyramidal_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float = 0.5,
    objective_power: float = 20,
    tile: int = 256,
    min_level_size: int = 512,
    label: np.ndarray | None = None,
    macro: np.ndarray | None = None,
    quality: int = 85,
) -> Path:
    """Write `rgb` (H, W, 3 uint8) with downsampled levels (factor 4) until the side is under min_level_size."""
    path = Path(path)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("rgb must be an (H, W, 3) uint8 array")
    height, width = rgb.shape[:2]
    description = (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
        f"JPEG/RGB Q={quality}|AppMag = {objective_power:g}|MPP = {mpp:.6f}|ScanScope ID = SYNTH-1"
    )
    thumbnail = _downsample(rgb, max(1, max(height, width) // 768))
    levels = []
    factor = 4
    while max(height, width) // factor >= min_level_size:
        levels.append(_downsample(rgb, factor))
        factor *= 4
    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}}
    with tifffile.TiffWriter(path, bigtiff=rgb.nbytes > 2**31) as writer:
        writer.write(rgb, tile=(tile, tile), **jpeg, photometric="rgb", description=description,
                     metadata=None)
        writer.write(thumbnail, **jpeg, photometric="rgb", metadata=None,
                     description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> thumbnail")
        for level in levels:
            writer.write(level, tile=(tile, tile), **jpeg, photometric="rgb", metadata=None,
                         description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> level")
        if label is not None:
            writer.write(label, compression="lzw", photometric="rgb", metadata=None,
                         subfiletype=1, description="Aperio Image Library v12.0.15\r\nlabel 400x400")
        if macro is not None:
            writer.write(macro, **jpeg, photometric="rgb", metadata=None,
                         subfiletype=9, description="Aperio Image Library v12.0.15\r\nmacro 1280x431")
    return path


def _tile_rows(level: np.ndarray | Iterator[np.ndarray], height: int, width: int, tile: int) -> Iterator[np.ndarray]:
    """Yield (tile, tile, 3) tiles in row-major order from an array or memmap (edge tiles padded white)."""
    for y in range(0, height, tile):
        band = np.asarray(level[y:y + tile])
        for x in range(0, width, tile):
            t = band[:, x:x + tile]
            if t.shape[0] != tile or t.shape[1] != tile:
                full = np.full((tile, tile, 3), 255, np.uint8)
                full[:t.shape[0], :t.shape[1]] = t
                t = full
            yield t


def write_large_synthetic_slide(path: str | Path, width: int, height: int, seed: int = 0, mpp: float = 0.25,
                                tile: int = 256, quality: int = 80, chunk: int = 1024) -> Path:
    """Write a width x height Aperio-style .svs of synthetic tissue without holding it in memory.

    Level 0 is streamed to tifffile as a tile generator, one band of `chunk` rows at a time. Tissue comes
    from a small atlas of rendered fields (several diagnoses) placed per chunk under a slide-wide tissue
    mask, so a 50,000 x 50,000 slide takes minutes, not hours; chunk seams are visible up close but the
    pixel statistics, JPEG cost and pyramid are those of a real scan. Lower levels (factor 4) are built
    from the downsampled bands in temporary memmaps next to the output and deleted afterwards.
    """
    from .tissue import Look, render_tissue

    path = Path(path)
    rng = np.random.default_rng([seed, 4242])
    # Atlas: a few rendered fields at this MPP (each chunk x chunk).
    looks = [Look("colon_adenocarcinoma", "colon", 1, 0.5, {"necrosis": True}, "resection"),
             Look("colon_normal", "colon", -1, 0.0, {}, "resection"),
             Look("breast_invasive_ductal_carcinoma", "breast", 1, 0.5, {}, "excision"),
             Look("prostate_benign", "prostate", -1, 0.0, {}, "excision")]
    atlas = []
    for i, look in enumerate(looks):
        img = render_tissue(look, chunk, chunk, mpp, np.random.default_rng([seed, 99, i]), full=True)
        atlas.append(img)
    # Slide-wide tissue field at 1/64 resolution: a few large blobs.
    f = 64
    lh, lw = height // f + 2, width // f + 2
    yy, xx = np.mgrid[:lh, :lw].astype(np.float32)
    field_ = np.full((lh, lw), -1.0, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.2, 0.8) * lw, rng.uniform(0.2, 0.8) * lh
        rx, ry = rng.uniform(0.15, 0.3) * lw, rng.uniform(0.15, 0.3) * lh
        field_ = np.maximum(field_, 1 - np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal((lh, lw)).astype(np.float32), 3)
    field_ += 0.3 * noise / (noise.std() + 1e-6)
    background = np.array([243, 242, 240], np.uint8)

    def band(y0: int) -> np.ndarray:
        rows = min(chunk, height - y0)
        out = np.empty((rows, width, 3), np.uint8)
        for x0 in range(0, width, chunk):
            cols = min(chunk, width - x0)
            r = np.random.default_rng([seed, y0, x0])
            src = atlas[int(r.integers(0, len(atlas)))]
            k = int(r.integers(0, 4))
            src = np.rot90(src, k)[:rows, :cols]
            # Mask for this chunk from the low-res field (bilinear, thresholded: smooth borders).
            fy0, fx0 = y0 / f, x0 / f
            sub = field_[int(fy0):int(fy0) + chunk // f + 2, int(fx0):int(fx0) + chunk // f + 2]
            m = np.asarray(Image.fromarray(sub).resize((sub.shape[1] * f, sub.shape[0] * f),
                                                       Image.Resampling.BILINEAR))
            oy, ox = int(y0 - int(fy0) * f), int(x0 - int(fx0) * f)
            m = m[oy:oy + rows, ox:ox + cols] > 0
            out[:, x0:x0 + cols] = np.where(m[..., None], src, background)
        return out

    return write_streamed_slide(path, width, height, band, mpp=mpp, chunk=chunk, quality=quality,
                                scanner_id="SYNTH-BIG", tile=tile)


def write_streamed_slide(path: Path, width: int, height: int, band: Callable[[int], np.ndarray], mpp: float,
                         chunk: int = 1024, quality: int = 80, scanner_id: str = "SYNTH", tile: int = 256,
                         label: np.ndarray | None = None) -> Path:
    """Aperio-style .svs from `band(y0) -> (rows, width, 3)` (`chunk` rows at a time); levels (factor 4) go
    through temporary memmaps beside the output. Memory: a few bands, whatever the slide size. An optional
    `label` image is written with a macro image, as a scanner does."""
    sizes = []
    factor = 4
    while max(height, width) // factor >= 512:
        sizes.append((height // factor, width // factor))
        factor *= 4
    tmpdir = tempfile.mkdtemp(prefix="slide-v2-", dir=path.parent)
    levels = [np.lib.format.open_memmap(Path(tmpdir) / f"l{i}.npy", mode="w+", dtype=np.uint8, shape=(h, w, 3))
              for i, (h, w) in enumerate(sizes)]

    def level0_tiles() -> Iterator[np.ndarray]:
        for y0 in range(0, height, chunk):
            b = band(y0)
            if levels:
                h1 = b.shape[0] // 4
                if h1:
                    small = _downsample(b[:h1 * 4], 4)[:, :sizes[0][1]]
                    levels[0][y0 // 4:y0 // 4 + small.shape[0], :small.shape[1]] = small
            yield from _tile_rows(b, b.shape[0], width, tile)

    head = f"Aperio Image Library v12.0.15 \r\n{width}x{height}"
    description = (f"{head} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}|AppMag = {10 / mpp:g}"
                   f"|MPP = {mpp:.6f}|ScanScope ID = {scanner_id}")
    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}}
    try:
        with tifffile.TiffWriter(path, bigtiff=True) as writer:
            writer.write(level0_tiles(), shape=(height, width, 3), dtype=np.uint8, tile=(tile, tile), **jpeg,
                         photometric="rgb", description=description, metadata=None)
            for i in range(1, len(levels)):
                src = levels[i - 1]
                for y in range(0, sizes[i][0], 256):
                    blk = np.asarray(src[y * 4:(y + 256) * 4])
                    small = _downsample(blk, 4)
                    levels[i][y:y + small.shape[0], :small.shape[1]] = small[:, :sizes[i][1]]
            smallest = np.asarray(levels[-1]) if levels else band(0)
            thumb = _downsample(smallest, max(1, max(smallest.shape[:2]) // 768))
            writer.write(thumb, **jpeg, photometric="rgb", metadata=None, description=f"{head} -> thumbnail")
            for (h, w), lev in zip(sizes, levels, strict=True):
                writer.write(_tile_rows(lev, h, w, tile), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                             **jpeg, photometric="rgb", metadata=None, description=f"{head} -> level")
            if label is not None:
                writer.write(label, compression="lzw", photometric="rgb", metadata=None, subfiletype=1,
                             description="Aperio Image Library v12.0.15\r\nlabel 400x400")
                macro = Image.new("RGB", (1280, 431), (225, 228, 230))
                macro.paste(Image.fromarray(label).resize((380, 380)), (25, 25))
                th = Image.fromarray(thumb)
                th.thumbnail((800, 400))
                macro.paste(th, (440 + (800 - th.width) // 2, (431 - th.height) // 2))
                writer.write(np.asarray(macro), **jpeg, photometric="rgb", metadata=None, subfiletype=9,
                             description="Aperio Image Library v12.0.15\r\nmacro 1280x431")
    finally:
        levels.clear()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path
