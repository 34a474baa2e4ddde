"""The scanner's own JPEG tiles, served as they are stored: no decode, no re-encode.

Where a Deep Zoom tile is exactly one source tile of a native pyramid level (a tile-aligned grid: Deep Zoom
tile size equal to the file's tile size, no overlap, a level whose downsample equals the Deep Zoom level's,
and the tile whole inside the level), the browser can be given the tile's JPEG bytes from the file. TIFF
formats (Aperio SVS, generic tiled TIFF, Philips TIFF) keep them as tiles of a JPEG-compressed image
directory, often as "abbreviated" JPEG streams whose quantisation and Huffman tables sit once in the
JPEGTables tag (347); those are merged into a complete JPEG here (tables without their EOI + the tile
without its SOI).

`tifffile` reads the layout (tile offsets and byte counts, JPEGTables); the bytes are read with `os.pread`
(thread-safe, no shared file position). OpenSlide still decodes everything else.

Nothing is trusted blindly. When a slide is opened, `probe` checks each native level's structure
(JPEG compression, 8-bit, contiguous, square tiles of one size) and then decodes one tile of the level both
ways, Pillow from the merged bytes (what a browser does) and OpenSlide's `read_region`, and keeps the level
only if the pixels agree (max abs difference <= 1). That one comparison covers colour-space conventions a
header cannot prove (YCbCr vs RGB JPEG streams, Adobe transform flags, Aperio's RGB-in-JPEG). A level or
slide that fails any check is served by the current OpenSlide path. Each served tile is checked cheaply
without decoding (SOI, tables, one baseline frame of the expected size, one scan, no stray marker in the
entropy-coded data, EOI): a tile that fails is corrupt (`CorruptTile`, a 404 with a message). ICC profiles
stay as today: OpenSlide's path sends none in its tiles, so an APP2 ICC segment in a source tile is dropped.
"""
from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

log = logging.getLogger(__name__)

# OpenSlide vendors whose levels are the TIFF's own tiled image directories, one to one.
TIFF_VENDORS = frozenset({"aperio", "generic-tiff", "philips"})
MIN_TILE, MAX_TILE = 64, 2048
MAX_PAGES = 64
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
# In entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart marker; anything else ends it.
_STRAY_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")


class CorruptTile(Exception):
    """The source tile's bytes are not a complete JPEG of the expected size."""


@dataclass(frozen=True)
class NativeLevel:
    offsets: np.ndarray  # (tiles,) int64, row-major
    counts: np.ndarray  # (tiles,) int64
    across: int  # tiles per row in the file
    down: int
    tables: bytes  # JPEGTables without its EOI, or b"" when every tile carries its own tables
    components: int
    path: str  # the file holding the level (DICOM: one file per level)


class RawTiles:
    """The raw JPEG tiles of a slide's passable levels (OpenSlide level -> NativeLevel)."""

    def __init__(self, tile_size: int, levels: dict[int, NativeLevel]) -> None:
        self.tile_size = tile_size
        self.levels = levels
        # Open as long as the slide handle: the LRU drops handles without closing them (a reader may hold
        # one), and each file closes itself with its last reference.
        self._files = {path: open(path, "rb") for path in {native.path for native in levels.values()}}  # noqa: SIM115

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """The complete JPEG of source tile (col, row) of OpenSlide level `level`; None where the file holds
        no tile there (sparse files: OpenSlide draws the background); CorruptTile if its bytes are broken."""
        native = self.levels[level]
        if not (0 <= col < native.across and 0 <= row < native.down):
            return None
        index = row * native.across + col
        offset, count = int(native.offsets[index]), int(native.counts[index])
        if offset <= 0 or count <= 0:
            return None
        if count > 64 * 1024 * 1024:
            raise CorruptTile(f"Source tile {col},{row} of level {level} declares {count} bytes.")
        data = os.pread(self._files[native.path].fileno(), count, offset)
        if len(data) != count:
            raise CorruptTile(f"Source tile {col},{row} of level {level} is truncated ({len(data)} of {count} "
                              "bytes in the file).")
        return complete_jpeg(native.tables, data, self.tile_size, native.components,
                             where=f"Source tile {col},{row} of level {level}")


def complete_jpeg(tables: bytes, data: bytes, size: int, components: int, where: str = "The tile") -> bytes:
    """`data` (a tile's JPEG stream, maybe abbreviated) as a complete baseline JPEG, checked without decoding:
    CorruptTile unless it is SOI, tables, one SOF0/SOF1 of size x size with `components`, one scan, EOI."""
    if data[:2] != SOI:
        raise CorruptTile(f"{where} is not a JPEG stream (no start-of-image marker).")
    end = len(data)
    while end > 2 and data[end - 1] == 0:  # some writers pad segments with zeros after EOI
        end -= 1
    if data[end - 2:end] != EOI:
        raise CorruptTile(f"{where} is truncated (no end-of-image marker).")
    stream = tables + data[2:end] if tables else data[:end]
    out = bytearray(SOI)
    pos, seen_dqt, seen_dht, frame = 2, bool(tables and b"\xff\xdb" in tables), False, None
    while True:
        if pos + 4 > len(stream) or stream[pos] != 0xFF:
            raise CorruptTile(f"{where} has a broken JPEG header.")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(stream[pos + 2:pos + 4], "big")
        segment = stream[pos:pos + 2 + length]
        if length < 2 or len(segment) != 2 + length:
            raise CorruptTile(f"{where} has a broken JPEG header.")
        if marker in (0xC0, 0xC1):
            if frame is not None or length < 8:
                raise CorruptTile(f"{where} has a broken JPEG frame header.")
            frame = (int.from_bytes(segment[5:7], "big"), int.from_bytes(segment[7:9], "big"), segment[9])
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise CorruptTile(f"{where} is not a baseline JPEG (SOF marker {marker:#x}).")
        elif marker == 0xDB:
            seen_dqt = True
        elif marker == 0xC4:
            seen_dht = True
        if marker == 0xDA:
            out += segment
            pos += 2 + length
            break
        if not (marker == 0xE2 and segment[4:16] == b"ICC_PROFILE\x00"):  # profiles stay as today: none
            out += segment
        pos += 2 + length
    if frame is None or not (seen_dqt and seen_dht):
        raise CorruptTile(f"{where} lacks its frame header or JPEG tables.")
    if frame != (size, size, components):
        raise CorruptTile(f"{where} is {frame[1]}x{frame[0]} with {frame[2]} components, not {size}x{size}.")
    entropy = stream[pos:len(stream) - 2]
    if stream[-2:] != EOI or _STRAY_MARKER.search(entropy):
        raise CorruptTile(f"{where} has corrupt entropy-coded data.")
    out += entropy
    out += EOI
    return bytes(out)


# --- probing a slide --------------------------------------------------------------------------------
def _level_of_page(page, tile: int | None, path: str) -> tuple[int, NativeLevel] | None:
    """(tile size, NativeLevel) for a JPEG-tiled page tifffile can describe, else None."""
    if not page.is_tiled or page.compression != 7 or page.planarconfig != 1 or page.imagedepth != 1:
        return None
    if page.bitspersample != 8 or page.samplesperpixel not in (1, 3) or page.tiledepth != 1:
        return None
    if page.photometric not in (1, 2, 6) or page.tilewidth != page.tilelength:
        return None
    size = page.tilewidth
    if not MIN_TILE <= size <= MAX_TILE or (tile is not None and size != tile):
        return None
    across = -(-page.imagewidth // size)
    down = -(-page.imagelength // size)
    offsets = np.asarray(page.dataoffsets, np.int64)
    counts = np.asarray(page.databytecounts, np.int64)
    if offsets.shape != (across * down,) or counts.shape != offsets.shape:
        return None
    tables = page.jpegtables or b""
    if tables:
        if tables[:2] != SOI:
            return None
        tables = tables[:-2] if tables[-2:] == EOI else tables
    return size, NativeLevel(offsets, counts, across, down, tables, page.samplesperpixel, path)


def _agrees(raw: RawTiles, osr: openslide.AbstractSlide, level: int) -> bool:
    """One whole tile of the level, decoded from our bytes (as a browser would) and by OpenSlide."""
    size = raw.tile_size
    width, height = osr.level_dimensions[level]
    full_across, full_down = width // size, height // size
    if not full_across or not full_down:
        return False
    col, row = full_across // 2, full_down // 2
    try:
        data = raw.tile(level, col, row)
        if data is None:
            return False
        ours = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
        downsample = osr.level_downsamples[level]
        region = osr.read_region((round(col * size * downsample), round(row * size * downsample)), level,
                                 (size, size))
    except (CorruptTile, openslide.OpenSlideError, OSError, ValueError, SyntaxError):
        return False
    theirs = np.asarray(region, np.int16)
    if theirs[..., 3].min() != 255:  # transparent pixels: OpenSlide composites them; not ours to copy
        return False
    return ours.shape == theirs[..., :3].shape and int(np.abs(ours - theirs[..., :3]).max()) <= 1


def _tiff_levels(path: str, osr: openslide.AbstractSlide) -> tuple[int | None, dict[int, NativeLevel], str]:
    import tifffile

    tile, levels = None, {}
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages[:MAX_PAGES])
        for level, (width, height) in enumerate(osr.level_dimensions):
            for page in pages:
                if getattr(page, "imagewidth", None) == width and page.imagelength == height and page.is_tiled:
                    found = _level_of_page(page, tile, path)
                    if found is not None:
                        tile, levels[level] = found
                    break
            if level == 0 and 0 not in levels:
                return None, {}, "level 0 is not a JPEG-tiled TIFF image"
    return tile, levels, ""


DICOM_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
DICOM_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MAX_DICOM_FILES = 256


def _dicom_frames(path: str, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(offsets, lengths) of each frame of the file's encapsulated Pixel Data, one fragment per frame."""
    import pydicom

    offsets, lengths = np.zeros(frames, np.int64), np.zeros(frames, np.int64)
    with open(path, "rb") as handle:
        pydicom.dcmread(handle, stop_before_pixels=True)  # leaves the file at the Pixel Data element
        fd, pos = handle.fileno(), handle.tell()
        # (7FE0,0010), explicit VR OB, undefined length: the value is a sequence of items.
        if os.pread(fd, 12, pos) != b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff":
            return None
        pos, index = pos + 12, -1  # index -1: the Basic Offset Table item
        while index <= frames:
            header = os.pread(fd, 8, pos)
            if len(header) != 8:
                return None
            tag, length = header[:4], int.from_bytes(header[4:], "little")
            if tag == b"\xfe\xff\xdd\xe0":  # sequence delimiter
                break
            if tag != b"\xfe\xff\x00\xe0" or index >= frames:
                return None  # not an item, or more fragments than frames
            if index >= 0:
                offsets[index], lengths[index] = pos + 8, length
            pos += 8 + length
            index += 1
    return (offsets, lengths) if index == frames else None


def _dicom_levels(path: str, osr: openslide.AbstractSlide) -> tuple[int | None, dict[int, NativeLevel], str]:
    """The levels of a DICOM WSI series (one file per level, TILED_FULL, JPEG baseline frames)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    main = pydicom.dcmread(path, stop_before_pixels=True)
    series = main.get("SeriesInstanceUID")
    volumes = []
    for candidate in sorted(Path(path).parent.iterdir())[:MAX_DICOM_FILES]:
        if not candidate.is_file():
            continue
        try:
            dataset = pydicom.dcmread(candidate, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        image_type = list(dataset.get("ImageType", []))
        if (dataset.get("SeriesInstanceUID") == series and dataset.get("SOPClassUID") == DICOM_WSI
                and len(image_type) > 2 and image_type[2] == "VOLUME"):
            volumes.append((str(candidate), dataset))
    tile, levels = None, {}
    for level, size in enumerate(osr.level_dimensions):
        for candidate, dataset in volumes:
            if (dataset.get("TotalPixelMatrixColumns"), dataset.get("TotalPixelMatrixRows")) != size:
                continue
            side = dataset.get("Columns")
            if (str(dataset.file_meta.get("TransferSyntaxUID", "")) != DICOM_JPEG_BASELINE
                    or dataset.get("DimensionOrganizationType") != "TILED_FULL"
                    or side != dataset.get("Rows") or not MIN_TILE <= int(side) <= MAX_TILE
                    or (tile is not None and side != tile)
                    or int(dataset.get("TotalPixelMatrixFocalPlanes", 1) or 1) != 1
                    or int(dataset.get("NumberOfOpticalPaths", 1) or 1) != 1
                    or dataset.get("SamplesPerPixel") not in (1, 3) or dataset.get("BitsAllocated") != 8
                    or int(dataset.get("PlanarConfiguration", 0) or 0) != 0):
                break
            across, down = -(-size[0] // side), -(-size[1] // side)
            if int(dataset.get("NumberOfFrames", 1) or 1) != across * down:
                break
            frames = _dicom_frames(candidate, across * down)
            if frames is not None:
                tile = int(side)
                levels[level] = NativeLevel(frames[0], frames[1], across, down, b"",
                                            int(dataset.SamplesPerPixel), candidate)
            break
        if level == 0 and 0 not in levels:
            return None, {}, "level 0 is not a TILED_FULL series of JPEG baseline frames"
    return tile, levels, ""


def probe(path: str | Path, osr: openslide.AbstractSlide) -> tuple[RawTiles | None, str]:
    """The slide's raw JPEG tiles where they can be served as they are, with the reason when not."""
    if not isinstance(osr, openslide.OpenSlide):
        return None, "not opened by OpenSlide"
    props = osr.properties
    vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "")
    if vendor not in TIFF_VENDORS and vendor != "dicom":
        return None, f"format {vendor or 'unknown'!r} is not read raw (served by OpenSlide)"
    if any(int(props.get(name, 0) or 0) for name in (openslide.PROPERTY_NAME_BOUNDS_X,
                                                      openslide.PROPERTY_NAME_BOUNDS_Y)):
        return None, "the slide's bounds do not start at 0,0 (tiles would not align)"
    try:
        if vendor == "dicom":
            tile, levels, why = _dicom_levels(str(path), osr)
        else:
            tile, levels, why = _tiff_levels(str(path), osr)
    except ImportError as exc:
        return None, f"the reader is not installed: {exc}"
    except Exception as exc:  # noqa: BLE001 - an accelerator: any doubt means the OpenSlide path
        return None, f"the layout could not be read: {exc}"
    if tile is None or not levels:
        return None, why or "no level can be read raw"
    try:
        raw = RawTiles(tile, levels)
    except OSError as exc:
        return None, f"the file could not be opened for raw reads: {exc}"
    # The check reads through a handle of its own: OpenSlide errors are sticky, and a corrupt check tile
    # must not break the handle that serves the slide.
    try:
        check = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        raw.close()
        return None, f"the slide could not be opened for the check: {exc}"
    try:
        for level in list(levels):
            if not _agrees(raw, check, level):
                del levels[level]
    finally:
        check.close()
    if not levels:
        raw.close()
        return None, "no level's tiles decode to OpenSlide's pixels"
    return raw, f"levels {sorted(levels)} served raw ({tile} px tiles)"


def native_levels(dz, osr: openslide.AbstractSlide, raw: RawTiles) -> dict[int, int]:
    """Deep Zoom level -> OpenSlide level, for the Deep Zoom levels that are native levels at scale 1."""
    mapping = {}
    top = dz.level_count - 1
    for dz_level in range(dz.level_count):
        downsample = 2 ** (top - dz_level)
        level = osr.get_best_level_for_downsample(downsample)
        if level in raw.levels and osr.level_downsamples[level] == downsample:
            mapping[dz_level] = level
    return mapping


def half_scale_levels(dz, osr: openslide.AbstractSlide, raw: RawTiles) -> dict[int, int]:
    """Deep Zoom level -> OpenSlide level, for Deep Zoom levels at exactly twice a served level's downsample
    (the levels between those of a /4 pyramid)."""
    mapping = {}
    top = dz.level_count - 1
    for dz_level in range(dz.level_count):
        downsample = 2 ** (top - dz_level)
        level = osr.get_best_level_for_downsample(downsample)
        if level in raw.levels and osr.level_downsamples[level] * 2 == downsample:
            mapping[dz_level] = level
    return mapping


def half_scale_tile(dz, mapping: dict[int, int], raw: RawTiles, dz_level: int, col: int,
                    row: int) -> Image.Image | None:
    """A Deep Zoom tile at twice a served level's downsample, from its 2 x 2 whole source tiles each decoded
    at half scale in the DCT domain (libjpeg's scaled IDCT, Pillow's `draft`): a quarter of the decoding
    work and no resampling pass, where OpenSlide's path decodes them in full and resizes with Lanczos.
    None (OpenSlide's path) unless the tile covers exactly four whole source tiles."""
    level = mapping.get(dz_level)
    if level is None:
        return None
    size = raw.tile_size
    if size % 16 or raw.levels[level].components != 3:
        return None  # half-scale blocks would not tile the output exactly; grey JPEGs: OpenSlide's path
    (location, slide_level, l_size), z_size = dz._get_tile_info(dz_level, (col, row))
    downsample = 2 ** (dz.level_count - 1 - dz_level)
    if (slide_level != level or tuple(l_size) != (2 * size, 2 * size) or tuple(z_size) != (size, size)
            or tuple(location) != (col * size * downsample, row * size * downsample)):
        return None
    half = size // 2
    out = Image.new("RGB", (size, size))
    for dy in (0, 1):
        for dx in (0, 1):
            data = raw.tile(level, 2 * col + dx, 2 * row + dy)
            if data is None:
                return None
            try:
                image = Image.open(io.BytesIO(data))
                image.draft("RGB", (half, half))
                if image.size != (half, half):
                    return None
                out.paste(image.convert("RGB"), (dx * half, dy * half))
            except (OSError, ValueError, SyntaxError) as exc:
                raise CorruptTile(f"Source tile {2 * col + dx},{2 * row + dy} of level {level} could not be "
                                  f"decoded: {exc}") from None
    return out


def dz_tile(dz, mapping: dict[int, int], raw: RawTiles, dz_level: int, col: int, row: int) -> bytes | None:
    """The Deep Zoom tile's JPEG from the file, or None where it is not exactly one whole source tile."""
    level = mapping.get(dz_level)
    if level is None:
        return None
    size = raw.tile_size
    (location, slide_level, l_size), z_size = dz._get_tile_info(dz_level, (col, row))
    downsample = 2 ** (dz.level_count - 1 - dz_level)
    if (slide_level != level or tuple(l_size) != (size, size) or tuple(z_size) != (size, size)
            or tuple(location) != (col * size * downsample, row * size * downsample)):
        return None  # an edge tile (partial), or not aligned: OpenSlide's path
    return raw.tile(level, col, row)
