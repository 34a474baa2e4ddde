"""One pixel budget for every read of a slide's pixels (thumbnail, Deep Zoom, IIIF, label and macro images).

A slide file declares its size; what a read costs follows from the level it is read from, so a budget is
checked before anything is decoded. A "decompression bomb" (a 0.9 MB single-level TIFF declaring 16k x 16k
pixels made get_thumbnail decode 268 Mpixel: 2.1 GB RSS and 20 s of CPU in the web process) is refused, or
read from a level small enough, never decoded whole.

- READ_PIXELS: the most pixels one decode (one `read_region`, one associated image) may produce: 4096 x 4096,
  64 MiB as RGBA. A scanner's pyramid has a level under it for every view; a file without one is refused
  for the views that would need more.
- REQUEST_PIXELS: the most pixels one request may read in chunks of at most READ_PIXELS (IIIF regions).
"""
from __future__ import annotations

import openslide
from PIL import Image

READ_PIXELS = 4096 * 4096
REQUEST_PIXELS = 64 * 1024 * 1024


class OverBudget(ValueError):
    """The read would decode more pixels than the budget allows; the message says so for the user."""


def _mpx(pixels: float) -> str:
    return f"{pixels / 1e6:.0f} Mpixel" if pixels >= 1e7 else f"{pixels / 1e6:.1f} Mpixel"


def check(pixels: float, what: str, budget: int = READ_PIXELS) -> None:
    if pixels > budget:
        raise OverBudget(f"{what} would decode {_mpx(pixels)} at once; at most {_mpx(budget)} are read per "
                         "image. The file has no level small enough for it (a scanner's pyramid does).")


def thumbnail_level(slide: openslide.AbstractSlide, size: tuple[int, int]) -> int:
    """The level `get_thumbnail(size)` reads whole (the smallest level at least `size`), if it fits the
    budget; OverBudget otherwise."""
    width, height = slide.dimensions
    level = slide.get_best_level_for_downsample(max(width / size[0], height / size[1]))
    w, h = slide.level_dimensions[level]
    check(w * h, f"A thumbnail from level {level} ({w} x {h})")
    return level


def thumbnail(slide: openslide.AbstractSlide, size: tuple[int, int]) -> Image.Image:
    """openslide's get_thumbnail(size) as RGB, within the budget (the same level, the same background)."""
    level = thumbnail_level(slide, size)
    region = slide.read_region((0, 0), level, slide.level_dimensions[level])
    colour = slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
    try:
        image = Image.new("RGB", region.size, "#" + colour)
    except ValueError:
        image = Image.new("RGB", region.size, "#ffffff")
    image.paste(region, None, region)
    image.thumbnail(size, Image.Resampling.LANCZOS)
    return image


def associated_size(slide: openslide.AbstractSlide, name: str) -> tuple[int, int] | None:
    """The declared size of associated image `name` (OpenSlide's properties), None if it declares none."""
    try:
        return (int(slide.properties[f"openslide.associated.{name}.width"]),
                int(slide.properties[f"openslide.associated.{name}.height"]))
    except (KeyError, ValueError):
        return None


def check_associated(slide: openslide.AbstractSlide, name: str) -> None:
    """Before decoding a label or macro image (OpenSlide reads them whole)."""
    size = associated_size(slide, name)
    if size is None:
        raise OverBudget(f"The {name} image declares no size; it is not read.")
    check(size[0] * size[1], f"The {name} image ({size[0]} x {size[1]})")


def deepzoom_read_pixels(dz, level: int, address: tuple[int, int]) -> int:
    """Pixels one Deep Zoom tile decodes: openslide's DeepZoomGenerator reads the tile's region from the
    best slide level for its downsample (its `_get_tile_info`, the same computation `get_tile` makes; the
    pinned openslide-python), then scales it down."""
    (_location, _slide_level, (width, height)), _size = dz._get_tile_info(level, address)
    return width * height
