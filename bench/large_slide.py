"""A large synthetic Aperio slide for benchmarks, written tile by tile (never the whole image in memory).

Tiles are drawn from a small bank of textured H&E-like patches, placed where a few elliptical "tissue"
pieces lie, so JPEG sizes and decode costs look like a real scan's. Pyramid levels (/4, /16, /64) are
generated the same way at their own scale rather than by downsampling level 0, which would need it all.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

TILE = 256
BANK = 24


def _bank(seed: int) -> np.ndarray:
    """BANK textured tissue tiles: pink stroma with noise, purple nuclei, a few pale lumina."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    tiles = np.empty((BANK, TILE, TILE, 3), np.uint8)
    for index in range(BANK):
        base = np.array([226, 160, 190], float) + rng.normal(0, 6, 3)
        image = base + rng.normal(0, 9, (TILE, TILE, 1)) + rng.normal(0, 4, (TILE, TILE, 3))
        for _ in range(rng.integers(40, 120)):  # nuclei
            cy, cx, r = rng.integers(0, TILE), rng.integers(0, TILE), rng.uniform(2.5, 6)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = np.array([90, 50, 140]) + rng.normal(0, 10, 3)
        for _ in range(rng.integers(0, 3)):  # lumina
            cy, cx, r = rng.integers(0, TILE), rng.integers(0, TILE), rng.uniform(10, 30)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 244
        tiles[index] = np.clip(image, 0, 255).astype(np.uint8)
    return tiles


def _pieces(width: int, height: int, seed: int) -> list[tuple[float, float, float, float]]:
    rng = np.random.default_rng(seed + 1)
    pieces = [(width * 0.5, height * 0.5, width * 0.36, height * 0.3)]
    for _ in range(3):
        pieces.append((rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height,
                       rng.uniform(0.08, 0.18) * width, rng.uniform(0.08, 0.18) * height))
    return pieces


def _tiles(width: int, height: int, scale: int, bank: np.ndarray, pieces, seed: int) -> Iterator[np.ndarray]:
    """Row-major tiles of the level with downsample `scale`."""
    lw, lh = math.ceil(width / scale), math.ceil(height / scale)
    rng = np.random.default_rng(seed + scale)
    white = np.full((TILE, TILE, 3), 245, np.uint8)
    offsets = np.arange(TILE) * scale
    for ty in range(math.ceil(lh / TILE)):
        ys = ty * TILE * scale + offsets
        for tx in range(math.ceil(lw / TILE)):
            xs = tx * TILE * scale + offsets
            mask = np.zeros((TILE, TILE), bool)
            for cx, cy, rx, ry in pieces:
                if xs[-1] < cx - rx or xs[0] > cx + rx or ys[-1] < cy - ry or ys[0] > cy + ry:
                    continue
                mask |= ((ys[:, None] - cy) / ry) ** 2 + ((xs[None, :] - cx) / rx) ** 2 < 1
            if not mask.any():
                yield white
            elif mask.all():
                yield bank[rng.integers(BANK)]
            else:
                yield np.where(mask[:, :, None], bank[rng.integers(BANK)], white)


def write_large_slide(path: str | Path, width: int, height: int, seed: int = 0, mpp: float = 0.25,
                      objective_power: float = 40, quality: int = 80) -> Path:
    """Write an Aperio-style pyramidal BigTIFF (.svs) of width x height, streaming tiles."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    bank = _bank(seed)
    pieces = _pieces(width, height, seed)
    head = f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) JPEG/RGB Q={quality}"
    description = f"{head}|AppMag = {objective_power:g}|MPP = {mpp:.6f}|ScanScope ID = BENCH-1"
    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}, "photometric": "rgb", "metadata": None}
    started = time.monotonic()
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        writer.write(_tiles(width, height, 1, bank, pieces, seed), shape=(height, width, 3), dtype=np.uint8,
                     tile=(TILE, TILE), description=description, **jpeg)
        # Aperio's second page is a stripped thumbnail.
        scale = max(1, math.ceil(max(width, height) / 1024))
        thumb = np.concatenate([np.concatenate(list(row), axis=1) for row in _rows(width, height, scale, bank,
                                                                                   pieces, seed)], axis=0)
        thumb = thumb[: math.ceil(height / scale), : math.ceil(width / scale)]
        writer.write(thumb, description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> thumbnail", **jpeg)
        scale = 4
        while max(width, height) / scale >= 512:
            lw, lh = math.ceil(width / scale), math.ceil(height / scale)
            writer.write(_tiles(width, height, scale, bank, pieces, seed), shape=(lh, lw, 3), dtype=np.uint8,
                         tile=(TILE, TILE), description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> level",
                         **jpeg)
            scale *= 4
    tmp.rename(path)
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.monotonic() - started:.0f} s")
    return path


def _rows(width: int, height: int, scale: int, bank, pieces, seed: int) -> Iterator[list[np.ndarray]]:
    cols = math.ceil(math.ceil(width / scale) / TILE)
    row: list[np.ndarray] = []
    for tile in _tiles(width, height, scale, bank, pieces, seed):
        row.append(tile)
        if len(row) == cols:
            yield row
            row = []
