"""Pre-rendered Deep Zoom levels: the levels between a /4 pyramid's, kept on disk as the viewer will ask for them.

A scanner's pyramid halves its resolution four times per level (/1, /4, /16, ...); Deep Zoom asks for every
power of two, so every other level a reader pans at (/2, /8, ...) has no stored tile: each of its tiles is
four source tiles decoded at half scale and encoded again (`passthrough.half_scale_tile`, ~1.4 ms of CPU
against ~0.1 ms for a tile passed through). Under load that is the largest cost left per tile (docs/
operations.md), so those levels are rendered once, after a slide is stored (a background job,
`prerender.py`), into a companion file, and served from it as stored bytes afterwards.

The companion is a standard tiled TIFF written by tifffile (one page per Deep Zoom level, JPEG tiles of the
viewer's tile size, the tiles' bytes exactly those the renderer produces, so a viewer sees the same image
whether or not the file exists). It covers the whole tiles of each level; partial edge tiles and any tile the
renderer could not make (a corrupt source tile: its 404 stays) are left out, and asked of the renderer as
before. Its name is a hash of the slide file's signature (path, size, mtime), the render version, the tile
size and the JPEG quality, and its pages carry the same key: a replaced slide file, a new renderer or a new
quality setting never reads an old companion; a missing, partial or broken one only means the tiles are
rendered as before.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from django.conf import settings

log = logging.getLogger(__name__)

FORMAT = "pathalign-viewer-levels"
FORMAT_VERSION = 1
RECHECK_SECONDS = 15.0  # how often a process looks again for a companion that was not there yet
MAX_TILE_BYTES = 4 * 1024 * 1024


def companion_key(signature: str, render_version: str, tile_size: int, quality: int) -> str:
    return f"{FORMAT}/{FORMAT_VERSION}|{signature}|render {render_version}|tile {tile_size}|q{quality}"


def companion_path(key: str) -> Path:
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return Path(settings.VIEWER_LEVELS_DIR) / f"{digest}.tif"


@dataclass(frozen=True)
class Level:
    offsets: np.ndarray  # (tiles,) int64, row-major; 0 where the tile was left out
    counts: np.ndarray
    across: int
    down: int


class Prerendered:
    """An open companion: Deep Zoom level -> its stored whole tiles, read with `os.pread` (thread-safe)."""

    def __init__(self, path: Path, levels: dict[int, Level]) -> None:
        self.path = path
        self.levels = levels
        self._file = open(path, "rb")  # noqa: SIM115 - open as long as this object; closes with it

    def tile(self, dz_level: int, col: int, row: int) -> bytes | None:
        """The stored JPEG of a tile, or None (not stored, or its bytes are not a whole JPEG: render it)."""
        level = self.levels.get(dz_level)
        if level is None or not (0 <= col < level.across and 0 <= row < level.down):
            return None
        index = row * level.across + col
        offset, count = int(level.offsets[index]), int(level.counts[index])
        if offset <= 0 or not 0 < count <= MAX_TILE_BYTES:
            return None
        data = os.pread(self._file.fileno(), count, offset)
        if len(data) != count or data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
            log.warning("viewer levels %s: tile %s/%s_%s is damaged; rendering it instead", self.path.name,
                        dz_level, col, row)
            return None
        return data


def whole_tiles(dz, dz_level: int, tile_size: int) -> tuple[int, int]:
    """Tiles across and down of a Deep Zoom level that are whole (tile_size a side; no overlap)."""
    width, height = dz.level_dimensions[dz_level]
    return width // tile_size, height // tile_size


def open_companion(key: str, dz, levels: dict[int, int], tile_size: int) -> Prerendered | None:
    """The companion for `key` if it exists and its pages are the expected levels; else None."""
    path = companion_path(key)
    if not path.is_file():
        return None
    found: dict[int, Level] = {}
    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                meta = json.loads(page.description or "{}")
                dz_level = meta.get("dz_level")
                if meta.get("key") != key or dz_level not in levels:
                    log.warning("viewer levels %s: a page is not for this slide; ignored", path.name)
                    return None
                across, down = whole_tiles(dz, dz_level, tile_size)
                if (page.tilewidth, page.tilelength) != (tile_size, tile_size) or \
                        (page.imagewidth, page.imagelength) != (across * tile_size, down * tile_size) or \
                        len(page.dataoffsets) != across * down:
                    log.warning("viewer levels %s: level %s has another layout; ignored", path.name, dz_level)
                    return None
                found[dz_level] = Level(np.asarray(page.dataoffsets, np.int64),
                                        np.asarray(page.databytecounts, np.int64), across, down)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        log.warning("viewer levels %s could not be read (%s); tiles are rendered instead", path.name, exc)
        return None
    return Prerendered(path, found)


class CompanionLookup:
    """Finds a slide's companion once it exists: a process that opened the slide before the background job
    finished looks again every RECHECK_SECONDS, without a file-system call per tile in between."""

    def __init__(self, key: str, dz, levels: dict[int, int], tile_size: int) -> None:
        self.key, self._dz, self._levels, self._tile_size = key, dz, levels, tile_size
        self._found: Prerendered | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    def get(self) -> Prerendered | None:
        if self._found is not None or not self._levels:
            return self._found
        now = time.monotonic()
        if now < self._next_check:
            return None
        with self._lock:
            if self._found is None and now >= self._next_check:
                self._next_check = now + RECHECK_SECONDS
                self._found = open_companion(self.key, self._dz, self._levels, self._tile_size)
        return self._found


def write_companion(key: str, dz, levels: dict[int, int], tile_size: int,
                    render: Callable[[int, int, int], bytes | None],
                    progress: Callable[[int, int], None] | None = None) -> tuple[Path, int, int]:
    """Render the whole tiles of `levels` (Deep Zoom level numbers) with `render(level, col, row)` (JPEG
    bytes, or None to leave a tile out) into the companion for `key`, written to a temporary name and moved
    into place. Returns (path, tiles stored, tiles left out)."""
    path = companion_path(key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    todo = [(level, *whole_tiles(dz, level, tile_size)) for level in sorted(levels, reverse=True)]
    todo = [(level, across, down) for level, across, down in todo if across and down]
    total = sum(across * down for _, across, down in todo)
    counts = {"stored": 0, "left out": 0}

    def tiles_of(level: int, across: int, down: int) -> Iterator[bytes]:
        for row in range(down):
            for col in range(across):
                data = render(level, col, row)
                counts["stored" if data else "left out"] += 1
                if progress and (counts["stored"] + counts["left out"]) % 256 == 0:
                    progress(counts["stored"] + counts["left out"], total)
                yield data or b""  # an empty tile: offset 0, read as "render it"

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
            for level, across, down in todo:
                # Pillow's JPEGs are YCbCr with 4:2:0 subsampling: said so, for any other TIFF reader.
                writer.write(tiles_of(level, across, down), shape=(down * tile_size, across * tile_size, 3),
                             dtype=np.uint8, tile=(tile_size, tile_size), compression="jpeg",
                             photometric="ycbcr", subsampling=(2, 2), metadata=None,
                             description=json.dumps({"key": key, "dz_level": level}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, counts["stored"], counts["left out"]
