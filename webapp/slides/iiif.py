"""IIIF Image API 3.0, compliance level 1 (plus a few cheap level-2 features), as pure functions.

Request: {base}/{region}/{size}/{rotation}/{quality}.{format}
- region: full | square | x,y,w,h | pct:x,y,w,h          (pct is a level-2 extra)
- size:   max | w, | ,h | w,h | pct:n | !w,h, each optionally with ^ (upscaling)   (pct, !w,h, ^ extras)
- rotation: 0 only (mirroring and other angles answer 501 Not Implemented, as the spec says)
- quality: default | color | gray          (gray is an extra)
- format: jpg | png                        (png is an extra)
Syntax errors and impossible requests raise IIIFError(400); valid but unsupported features raise 501.
Coordinates are level-0 pixels of the whole slide (not the Deep Zoom bounds).
Level 1 also requires CORS on info.json and images: `cors_headers` (origins from PATHALIGN_IIIF_CORS_ORIGINS).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from . import pixel_budget

CONTEXT = "http://iiif.io/api/image/3/context.json"
PROTOCOL = "http://iiif.io/api/image"
PROFILE_URI = "http://iiif.io/api/image/3/level1.json"
TILE_SIZE = 512
MAX_WIDTH = 4096
MAX_HEIGHT = 4096
# Pixels read from the slide for one request, at the chosen pyramid level, in chunks of READ_CHUNK squared
# (webapp/slides/pixel_budget.py). Bounds the work of one request on slides with few pyramid levels (a
# single-level slide asked for "full/max" would read every pixel).
MAX_READ_PIXELS = pixel_budget.REQUEST_PIXELS
READ_CHUNK = 2048
EXTRA_FORMATS = ["png"]
EXTRA_QUALITIES = ["color", "gray"]
EXTRA_FEATURES = ["regionByPct", "sizeByPct", "sizeByConfinedWh", "sizeUpscaling"]
KNOWN_FORMATS = {"jpg", "png", "tif", "gif", "jp2", "pdf", "webp"}
KNOWN_QUALITIES = {"default", "color", "gray", "bitonal"}
_NUMBER = r"\d+(?:\.\d+)?"


class IIIFError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> IIIFError:
    return IIIFError(400, message)


@dataclass(frozen=True)
class ImageRequest:
    region: tuple[int, int, int, int]  # x, y, w, h in level-0 pixels, clipped to the image
    size: tuple[int, int]  # output width, height
    quality: str
    format: str

    @property
    def cache_key(self) -> tuple:
        return ("iiif", *self.region, *self.size, self.quality, self.format)


def cors_headers(origin: str | None, own_origin: str, allowed: list[str] | tuple[str, ...]) -> dict[str, str]:
    """CORS response headers for an IIIF response to a request from `origin` (its Origin header).

    `allowed` lists the other origins whose pages may read the service (PATHALIGN_IIIF_CORS_ORIGINS); the
    app's own origin is always allowed. A listed origin gets its own name back, with credentials allowed,
    because every IIIF URL needs the user's session. `*` lets any page read it, but browsers then send no
    cookies, so only an open deployment (a proxy that authenticates by other means) gains from it. A request
    without Origin (not cross-origin) is answered with the app's own origin; an origin not listed gets no
    header at all, so its pages cannot read the response.
    """
    headers = {"Vary": "Origin"}
    if "*" in allowed:
        headers["Access-Control-Allow-Origin"] = "*"
    elif not origin:
        headers["Access-Control-Allow-Origin"] = own_origin
    elif origin == own_origin or origin in allowed:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def parse_region(text: str, width: int, height: int) -> tuple[int, int, int, int]:
    if text == "full":
        return 0, 0, width, height
    if text == "square":
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    if text.startswith("pct:"):
        match = re.fullmatch(rf"({_NUMBER}),({_NUMBER}),({_NUMBER}),({_NUMBER})", text[4:])
        if not match:
            raise bad(f"Region {text!r}: expected pct:x,y,w,h with non-negative numbers.")
        px, py, pw, ph = (float(v) for v in match.groups())
        x, y = math.floor(px * width / 100), math.floor(py * height / 100)
        w, h = round(pw * width / 100), round(ph * height / 100)
    else:
        match = re.fullmatch(r"(\d+),(\d+),(\d+),(\d+)", text)
        if not match:
            raise bad(f"Region {text!r}: expected full, square, x,y,w,h or pct:x,y,w,h.")
        x, y, w, h = (int(v) for v in match.groups())
    if w <= 0 or h <= 0:
        raise bad(f"Region {text!r} has zero width or height.")
    if x >= width or y >= height:
        raise bad(f"Region {text!r} lies outside the image ({width}x{height}).")
    # Partly outside: the spec asks to crop to the image.
    return x, y, min(w, width - x), min(h, height - y)


def _limit(w: float, h: float, max_w: int, max_h: int) -> tuple[float, float]:
    scale = min(1.0, max_w / w, max_h / h)
    return w * scale, h * scale


def parse_size(
    text: str, region_w: int, region_h: int, max_w: int = MAX_WIDTH, max_h: int = MAX_HEIGHT
) -> tuple[int, int]:
    upscale = text.startswith("^")
    spec = text[1:] if upscale else text
    aspect = region_w / region_h
    if spec == "max":
        if upscale:
            scale = min(max_w / region_w, max_h / region_h)
            w, h = region_w * scale, region_h * scale
        else:
            w, h = _limit(region_w, region_h, max_w, max_h)
        return max(1, round(w)), max(1, round(h))
    if spec.startswith("pct:"):
        if not re.fullmatch(_NUMBER, spec[4:]):
            raise bad(f"Size {text!r}: expected pct:n.")
        pct = float(spec[4:])
        if pct <= 0 or (pct > 100 and not upscale):
            raise bad(f"Size {text!r}: the percentage must be above 0 and at most 100 (or use ^pct:n).")
        w, h = region_w * pct / 100, region_h * pct / 100
    elif spec.startswith("!"):
        match = re.fullmatch(r"(\d+),(\d+)", spec[1:])
        if not match:
            raise bad(f"Size {text!r}: expected !w,h.")
        bw, bh = int(match.group(1)), int(match.group(2))
        scale = min(bw / region_w, bh / region_h)
        if not upscale:
            scale = min(scale, 1.0)
        w, h = region_w * scale, region_h * scale
    else:
        match = re.fullmatch(r"(\d*),(\d*)", spec)
        if not match or (not match.group(1) and not match.group(2)):
            raise bad(f"Size {text!r}: expected max, w,, ,h, w,h, !w,h or pct:n.")
        w_text, h_text = match.groups()
        if w_text and h_text:
            w, h = int(w_text), int(h_text)
        elif w_text:
            w = int(w_text)
            h = w / aspect
        else:
            h = int(h_text)
            w = h * aspect
        if not upscale and (round(w) > region_w or round(h) > region_h):
            raise bad(f"Size {text!r} is larger than the region ({region_w}x{region_h}); use ^ to upscale.")
    out_w, out_h = round(w), round(h)
    if out_w <= 0 or out_h <= 0:
        raise bad(f"Size {text!r} gives an empty image.")
    if out_w > max_w or out_h > max_h:
        raise bad(f"Size {text!r} ({out_w}x{out_h}) exceeds the maximum {max_w}x{max_h}.")
    return out_w, out_h


def parse_rotation(text: str) -> None:
    match = re.fullmatch(rf"(!?)({_NUMBER})", text)
    if not match:
        raise bad(f"Rotation {text!r}: expected a number of degrees from 0 to 360, optionally after '!'.")
    degrees = float(match.group(2))
    if degrees > 360:
        raise bad(f"Rotation {text!r}: degrees must be between 0 and 360.")
    if match.group(1) or degrees % 360:
        raise IIIFError(501, "Only rotation 0 is supported (compliance level 1).")


def parse_quality_format(text: str) -> tuple[str, str]:
    quality, dot, fmt = text.rpartition(".")
    if not dot or not quality:
        raise bad(f"{text!r}: expected {{quality}}.{{format}}, for example default.jpg.")
    if quality not in KNOWN_QUALITIES:
        raise bad(f"Quality {quality!r}: expected default, color, gray or bitonal.")
    if fmt not in KNOWN_FORMATS:
        raise bad(f"Format {fmt!r} is not an IIIF format.")
    if quality == "bitonal":
        raise IIIFError(501, "Quality bitonal is not supported; use default, color or gray.")
    if fmt not in ("jpg", "png"):
        raise IIIFError(501, f"Format {fmt!r} is not supported; use jpg or png.")
    return quality, fmt


def parse_request(
    region: str, size: str, rotation: str, quality_format: str, width: int, height: int
) -> ImageRequest:
    """Parse and validate the four path segments of an image request (rotation and format first:
    a client asking for something we never do learns it without us computing the rest)."""
    parse_rotation(rotation)
    quality, fmt = parse_quality_format(quality_format)
    box = parse_region(region, width, height)
    out = parse_size(size, box[2], box[3])
    return ImageRequest(box, out, quality, fmt)


def scale_factors(width: int, height: int, tile: int = TILE_SIZE) -> list[int]:
    factors = [1]
    while max(width, height) / factors[-1] > tile:
        factors.append(factors[-1] * 2)
    return factors


def info(base_id: str, width: int, height: int) -> dict:
    """The info.json document for an image of `width` x `height` served at `base_id`."""
    factors = scale_factors(width, height)
    sizes = []
    for factor in reversed(factors):
        w, h = math.ceil(width / factor), math.ceil(height / factor)
        if w <= MAX_WIDTH and h <= MAX_HEIGHT:
            sizes.append({"width": w, "height": h})
    return {
        "@context": CONTEXT,
        "id": base_id,
        "type": "ImageService3",
        "protocol": PROTOCOL,
        "profile": "level1",
        "width": width,
        "height": height,
        "maxWidth": MAX_WIDTH,
        "maxHeight": MAX_HEIGHT,
        "sizes": sizes,
        "tiles": [{"width": TILE_SIZE, "height": TILE_SIZE, "scaleFactors": factors}],
        "extraFormats": EXTRA_FORMATS,
        "extraQualities": EXTRA_QUALITIES,
        "extraFeatures": EXTRA_FEATURES,
    }


class RegionReader(Protocol):
    """What rendering needs from a slide: OpenSlide's interface (so tests can pass a fake)."""

    level_count: int
    level_downsamples: tuple[float, ...]
    level_dimensions: tuple[tuple[int, int], ...]

    def get_best_level_for_downsample(self, downsample: float) -> int: ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image: ...


def _flatten(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    # Transparent pixels (outside scanned areas) become the slide's background colour, as in Deep Zoom.
    base = Image.new("RGB", rgba.size, background)
    base.paste(rgba, mask=rgba.getchannel("A") if rgba.mode == "RGBA" else None)
    return base


def render(
    reader: RegionReader, request: ImageRequest, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """Read the region from the pyramid level nearest above the output scale and resize it.

    Large reads go in chunks so memory stays bounded; reads beyond MAX_READ_PIXELS are refused (400)
    rather than tying up a worker.
    """
    x, y, w, h = request.region
    out_w, out_h = request.size
    downsample = min(w / out_w, h / out_h)
    level = reader.get_best_level_for_downsample(max(1.0, downsample)) if downsample >= 1 else 0
    level_ds = reader.level_downsamples[level]
    read_w, read_h = max(1, math.ceil(w / level_ds)), max(1, math.ceil(h / level_ds))
    level_w, level_h = reader.level_dimensions[level]
    read_w = min(read_w, max(1, level_w - math.floor(x / level_ds)))
    read_h = min(read_h, max(1, level_h - math.floor(y / level_ds)))
    if read_w * read_h > MAX_READ_PIXELS:
        raise bad(
            f"This request would read {read_w}x{read_h} pixels from the slide; ask for a smaller region "
            f"or a smaller size (at most {MAX_READ_PIXELS // 1024**2} Mpixel per request)."
        )
    if read_w <= READ_CHUNK and read_h <= READ_CHUNK:
        image = _flatten(reader.read_region((x, y), level, (read_w, read_h)), background)
        if image.size != (out_w, out_h):
            image = image.resize(
                (out_w, out_h), Image.Resampling.LANCZOS if downsample > 1 else Image.Resampling.BICUBIC
            )
    else:
        image = Image.new("RGB", (out_w, out_h), background)
        sx, sy = out_w / read_w, out_h / read_h
        for cy in range(0, read_h, READ_CHUNK):
            for cx in range(0, read_w, READ_CHUNK):
                cw, ch = min(READ_CHUNK, read_w - cx), min(READ_CHUNK, read_h - cy)
                ox0, oy0 = round(cx * sx), round(cy * sy)
                ox1, oy1 = round((cx + cw) * sx), round((cy + ch) * sy)
                if ox1 <= ox0 or oy1 <= oy0:
                    continue
                location = (x + round(cx * level_ds), y + round(cy * level_ds))
                chunk = _flatten(reader.read_region(location, level, (cw, ch)), background)
                image.paste(chunk.resize((ox1 - ox0, oy1 - oy0), Image.Resampling.LANCZOS), (ox0, oy0))
    if request.quality == "gray":
        image = image.convert("L")
    return image
