"""Write an RGB image as an Aperio-style pyramidal tiled TIFF (.svs) that OpenSlide opens with MPP.

Layout, as Aperio scanners write it: level 0 (tiled), a stripped thumbnail, the lower levels (tiled),
then stripped label and macro images named in their ImageDescription.
"""
from __future__ import annotations

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
