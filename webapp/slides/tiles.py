"""Open slides and encoded tiles, cached in memory so a tile request costs one dictionary lookup when warm.

Where the file allows it (`passthrough.probe`: JPEG-tiled TIFF levels or DICOM WSI JPEG frames whose tiles
decode to OpenSlide's own pixels), the Deep Zoom grid is tile-aligned: tile size = the file's tile size, overlap 0, so a Deep Zoom tile
of a native level is one source tile, served as the file's JPEG bytes. Other slides keep the grid of
openslide-python's examples/deepzoom (254 + 1 overlap); other levels and edge tiles are rendered by OpenSlide.

Three caches, all per process and bounded:
- `slides`: an LRU of open OpenSlide handles with their DeepZoomGenerator (opening a slide parses its
  file structure, which takes milliseconds to seconds for some formats).
- `DECODED`: one `openslide.OpenSlideCache` shared by every handle, so decoded source tiles are bounded
  per process rather than per slide.
- `encoded`: an LRU of encoded tile bytes (JPEG/PNG), keyed by slide and request, bounded in bytes.

OpenSlide handles are thread-safe, so gunicorn's threads share them. An evicted handle is not closed here:
a request may still be reading from it; the handle closes itself when the last reference goes.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import openslide
from django.conf import settings
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from . import passthrough, pixel_budget, prerendered

# Deep Zoom parameters of openslide-python's examples/deepzoom: 254 + 2 x 1 overlap = 256-pixel requests.
DZ_TILE_SIZE = 254
DZ_OVERLAP = 1
DZ_LIMIT_BOUNDS = True
JPEG_QUALITY = settings.TILE_JPEG_QUALITY
# Bump when the rendering changes, so browsers drop tiles they hold under an old ETag.
RENDER_VERSION = "2"
# Part of the DZI URL the viewer loads (`?grid=`; OpenSeadragon carries it to every tile URL): tiles are
# cached by browsers for a day without asking, so a grid change (2: tile-aligned) must change the URLs.
GRID_VERSION = "2"
# Deep Zoom levels at twice a served level's downsample (between the levels of a /4 pyramid) are drawn from
# the source tiles decoded at half scale in the DCT domain instead of OpenSlide's full decode + Lanczos
# (`passthrough.half_scale_tile`); False serves them by OpenSlide's path.
HALF_SCALE_DECODE = True
TILE_FORMATS = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png"}


class TileNotFound(Exception):
    """The tile address or level does not exist for this slide (404)."""


class SlideUnreadable(Exception):
    """OpenSlide could not open the slide or decode the requested pixels (a clean 404, never a 500)."""


@dataclass(frozen=True)
class OpenedSlide:
    slide_id: str
    path: str
    osr: openslide.AbstractSlide
    dz: DeepZoomGenerator
    signature: str  # changes if the file is replaced, so ETags and cached bytes follow the file
    raw: passthrough.RawTiles | None = None  # the file's own JPEG tiles, where they can be served as stored
    native: dict[int, int] = field(default_factory=dict)  # Deep Zoom level -> OpenSlide level served raw
    half: dict[int, int] = field(default_factory=dict)  # Deep Zoom level -> served level at half its downsample
    passthrough_note: str = ""  # why tiles are (not) served raw, for logs and tests
    prerendered: prerendered.CompanionLookup | None = None  # the `half` levels kept on disk, once rendered

    def etag(self, key: str) -> str:
        digest = hashlib.blake2b(f"{self.signature}|{RENDER_VERSION}|{key}".encode(), digest_size=12)
        return f'"{digest.hexdigest()}"'


def _file_signature(path: Path) -> str:
    # Multi-file formats (MIRAX, DICOM) open through one file of a folder; its stat identifies the set.
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


class SlideLRU:
    """A thread-safe LRU of open slides, keyed by slide id."""

    def __init__(self, capacity: int, cache: openslide.OpenSlideCache | None) -> None:
        self.capacity = capacity
        self._cache = cache
        self._items: OrderedDict[str, OpenedSlide] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}

    def get(self, slide_id: str, path: str | Path) -> OpenedSlide:
        key = str(slide_id)
        with self._lock:
            item = self._items.get(key)
            if item is not None and item.path == str(path):
                self._items.move_to_end(key)
                return item
            opening = self._opening.setdefault(key, threading.Lock())
        # Open outside the LRU lock (slow for some formats), once per slide even with concurrent requests.
        with opening:
            with self._lock:
                item = self._items.get(key)
                if item is not None and item.path == str(path):
                    return item
            try:
                item = self._open(key, Path(path))
            finally:
                with self._lock:
                    self._opening.pop(key, None)
            with self._lock:
                self._items[key] = item
                self._items.move_to_end(key)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return item

    def _open(self, slide_id: str, path: Path) -> OpenedSlide:
        try:
            signature = _file_signature(path)
            osr = openslide.open_slide(str(path))
            if self._cache is not None and isinstance(osr, openslide.OpenSlide):
                osr.set_cache(self._cache)
            raw, note = passthrough.probe(path, osr)
            native: dict[int, int] = {}
            half: dict[int, int] = {}
            if raw is not None:
                dz = DeepZoomGenerator(osr, tile_size=raw.tile_size, overlap=0, limit_bounds=DZ_LIMIT_BOUNDS)
                native = passthrough.native_levels(dz, osr, raw)
                half = passthrough.half_scale_levels(dz, osr, raw) if HALF_SCALE_DECODE else {}
            if raw is not None and not native:
                note = f"{note}; but no Deep Zoom level is one of them at scale 1"
            if not native:
                raw = None
                dz = DeepZoomGenerator(
                    osr, tile_size=DZ_TILE_SIZE, overlap=DZ_OVERLAP, limit_bounds=DZ_LIMIT_BOUNDS
                )
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideUnreadable(f"The slide file could not be opened: {exc}") from None
        lookup = None
        if raw is not None and half:
            key = prerendered.companion_key(signature, RENDER_VERSION, raw.tile_size, JPEG_QUALITY)
            lookup = prerendered.CompanionLookup(key, dz, half, raw.tile_size)
        return OpenedSlide(slide_id, str(path), osr, dz, signature, raw, native, half, note, lookup)

    def discard(self, slide_id: str) -> None:
        """Forget a handle: OpenSlide errors are sticky, so a handle that failed once must be reopened."""
        with self._lock:
            self._items.pop(str(slide_id), None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class BytesLRU:
    """A thread-safe LRU of encoded images, bounded by total bytes."""

    def __init__(self, capacity_bytes: int, max_item_bytes: int | None = None) -> None:
        self.capacity = capacity_bytes
        self.max_item = max_item_bytes or max(1, capacity_bytes // 8)
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.max_item:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = data
            self._size += len(data)
            while self._size > self.capacity and self._items:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._items)


# Per-process caches, sized by settings (MiB).
DECODED = openslide.OpenSlideCache(settings.OPENSLIDE_CACHE_MB * 1024**2)
slides = SlideLRU(settings.TILE_OPEN_SLIDES, DECODED)
encoded = BytesLRU(settings.TILE_CACHE_MB * 1024**2, max_item_bytes=2 * 1024**2)


def encode(image: Image.Image, fmt: str) -> bytes:
    """Encode a tile; JPEG at the openslide example's quality, PNG without optimisation (speed)."""
    buffer = io.BytesIO()
    if fmt in ("jpeg", "jpg"):
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    return buffer.getvalue()


def cached_render(opened: OpenedSlide, key: tuple, render: Callable[[], bytes]) -> bytes:
    """Bytes for `key` from the encoded cache, or `render()` them (turning OpenSlide errors into
    SlideUnreadable and dropping the now-broken handle)."""
    full_key = (opened.slide_id, opened.signature, *key)
    data = encoded.get(full_key)
    if data is not None:
        return data
    try:
        data = render()
    except openslide.OpenSlideError as exc:
        slides.discard(opened.slide_id)
        raise SlideUnreadable(f"The slide's pixels could not be decoded: {exc}") from None
    except OSError as exc:  # file vanished or unreadable on disk
        slides.discard(opened.slide_id)
        raise SlideUnreadable(f"The slide file could not be read: {exc}") from None
    encoded.put(full_key, data)
    return data


def dz_tile(opened: OpenedSlide, level: int, col: int, row: int, fmt: str) -> bytes:
    """One Deep Zoom tile, encoded; TileNotFound for a level or address outside the pyramid."""
    dz = opened.dz
    if not 0 <= level < dz.level_count:
        raise TileNotFound(f"Level {level} does not exist (0..{dz.level_count - 1}).")
    cols, rows = dz.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        raise TileNotFound(f"Tile {col}_{row} is outside level {level} ({cols}x{rows} tiles).")
    # The pixel budget: a slide without a pyramid would decode its whole level 0 for the coarse levels.
    try:
        pixel_budget.check(pixel_budget.deepzoom_read_pixels(dz, level, (col, row)), f"Deep Zoom level {level}")
    except pixel_budget.OverBudget as exc:
        raise TileNotFound(str(exc)) from None
    return cached_render(opened, ("dz", level, col, row, fmt),
                         lambda: render_dz_tile(opened, level, col, row, fmt))


def render_dz_tile(opened: OpenedSlide, level: int, col: int, row: int, fmt: str,
                   use_prerendered: bool = True) -> bytes:
    """One Deep Zoom tile's bytes, without the encoded cache: pre-rendered, passed through, decoded at half
    scale, or OpenSlide's path, in that order (JPEG only for the first three: a PNG asks for OpenSlide's
    exact pixels). Raises SlideUnreadable for a corrupt source tile and OpenSlide's errors as they come."""
    dz = opened.dz
    if opened.raw is not None and fmt in ("jpeg", "jpg"):
        if use_prerendered and level in opened.half and opened.prerendered is not None:
            companion = opened.prerendered.get()
            data = companion.tile(level, col, row) if companion is not None else None
            if data is not None:
                return data  # rendered once, after the slide was stored (prerender.py)
        try:
            data = passthrough.dz_tile(dz, opened.native, opened.raw, level, col, row)
            if data is not None:
                return data  # the scanner's own JPEG, as stored
            image = passthrough.half_scale_tile(dz, opened.half, opened.raw, level, col, row)
        except passthrough.CorruptTile as exc:
            raise SlideUnreadable(str(exc)) from None
        if image is not None:
            return encode(image, fmt)
    return encode(dz.get_tile(level, (col, row)), fmt)


def associated_image(osr: openslide.AbstractSlide, name: str) -> Image.Image:
    """A label or macro image, within the pixel budget (OpenSlide decodes them whole); SlideUnreadable if not."""
    try:
        pixel_budget.check_associated(osr, name)
    except pixel_budget.OverBudget as exc:
        raise SlideUnreadable(str(exc)) from None
    return osr.associated_images[name]


def bounds(osr: openslide.AbstractSlide) -> tuple[int, int, int, int]:
    """The level-0 rectangle the Deep Zoom pyramid covers (limit_bounds): x, y, width, height."""
    props = osr.properties
    width, height = osr.dimensions
    if not DZ_LIMIT_BOUNDS:
        return 0, 0, width, height

    def prop(name: str, default: int) -> int:
        try:
            return int(props.get(name, default))
        except (TypeError, ValueError):
            return default

    return (
        prop(openslide.PROPERTY_NAME_BOUNDS_X, 0),
        prop(openslide.PROPERTY_NAME_BOUNDS_Y, 0),
        prop(openslide.PROPERTY_NAME_BOUNDS_WIDTH, width),
        prop(openslide.PROPERTY_NAME_BOUNDS_HEIGHT, height),
    )
