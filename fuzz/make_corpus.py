"""Write the corpus of broken slide files that `tests/test_trust_fuzz.py` replays through `read_slide_file` (inspect_slide and the thumbnail).

    .venv/bin/python fuzz/make_corpus.py            # rewrites fuzz/corpus/ (deterministic, a few hundred KB)

Every file is small and named after what is wrong with it. Files named `found-*` are inputs the fuzzer
found (copied in by hand from crash-* files) and are kept when the corpus is rewritten. The seeds are tiny valid slides (an Aperio SVS,
a generic tiled TIFF, a BigTIFF); the rest are those seeds damaged in the ways real files arrive damaged
(interrupted copies, bit rot, wrong files) or hostile (huge declared sizes, IFD loops, absurd counts).
"""
from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.synthetic.wsi import write_pyramidal_tiff  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"

# TIFF tag numbers and types used by the hand-written files.
WIDTH, LENGTH, BITS, COMPRESSION, PHOTOMETRIC, DESCRIPTION = 256, 257, 258, 259, 262, 270
SAMPLES, PLANAR = 277, 284
TILE_W, TILE_L, TILE_OFFSETS, TILE_COUNTS = 322, 323, 324, 325
SHORT, LONG = 3, 4


def _picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 240, np.uint8)
    image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = (220, 150, 190)
    for y, x in rng.integers(0, min(height, width) - 8, size=(40, 2)):  # a few smooth "nuclei": small JPEGs
        image[y:y + 6, x:x + 6] = (90, 50, 140)
    return image


def seeds(work: Path) -> dict[str, bytes]:
    svs = write_pyramidal_tiff(work / "seed.svs", _picture(256, 384), min_level_size=64, tile=128, quality=50)
    generic = work / "generic.tif"
    tifffile.imwrite(generic, _picture(256, 256, 1), tile=(128, 128), photometric="rgb", compression="jpeg",
                     metadata=None)
    big = work / "big.tif"
    tifffile.imwrite(big, _picture(256, 256, 2), tile=(128, 128), photometric="rgb", compression="jpeg",
                     bigtiff=True, metadata=None)
    return {"seed-aperio.svs": svs.read_bytes(), "seed-generic.tif": generic.read_bytes(),
            "seed-bigtiff.tif": big.read_bytes()}


def handmade_tiff(tags: list[tuple[int, int, list[int]]], *, next_ifd: int | None = 0, data: bytes = b"",
                  first_ifd: int | None = None) -> bytes:
    """A little-endian classic TIFF with one IFD at offset 8 holding `tags` (tag, type, values).

    `next_ifd` None points the IFD's next-offset at the IFD itself (a loop); `data` follows the IFD.
    """
    entries, extra = [], b""
    ifd_size = 2 + 12 * len(tags) + 4
    extra_base = 8 + ifd_size
    for tag, kind, values in sorted(tags):
        fmt = "H" if kind == SHORT else "I"
        packed = struct.pack(f"<{len(values)}{fmt}", *values)
        if len(packed) <= 4:
            entries.append(struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\0"))
        else:
            entries.append(struct.pack("<HHII", tag, kind, len(values), extra_base + len(extra)))
            extra += packed
    ifd = struct.pack("<H", len(tags)) + b"".join(entries) + struct.pack("<I", 8 if next_ifd is None else next_ifd)
    header = b"II*\0" + struct.pack("<I", 8 if first_ifd is None else first_ifd)
    return header + ifd + extra + data


def _tiled_rgb(width: int, height: int, offsets: list[int], counts: list[int], tile: int = 16) -> list:
    return [(WIDTH, LONG, [width]), (LENGTH, LONG, [height]), (BITS, SHORT, [8, 8, 8]),
            (COMPRESSION, SHORT, [1]), (PHOTOMETRIC, SHORT, [2]), (SAMPLES, SHORT, [3]), (PLANAR, SHORT, [1]),
            (TILE_W, SHORT, [tile]), (TILE_L, SHORT, [tile]), (TILE_OFFSETS, LONG, offsets),
            (TILE_COUNTS, LONG, counts)]


def handmade() -> dict[str, bytes]:
    tile_bytes = 16 * 16 * 3
    files = {}
    # A one-tile uncompressed TIFF written by hand, then the same with lies in it.
    body = bytes(range(256)) * (tile_bytes // 256)
    plain = _tiled_rgb(16, 16, [0], [tile_bytes])
    size = len(handmade_tiff(plain))
    files["handmade-uncompressed-16px.tif"] = handmade_tiff(_tiled_rgb(16, 16, [size], [tile_bytes]), data=body)
    files["huge-dimensions-4G-square.tif"] = handmade_tiff(
        _tiled_rgb(0xFFFFFFFF, 0xFFFFFFFF, [size], [tile_bytes]), data=body)
    files["huge-dimensions-2G-wide.tif"] = handmade_tiff(_tiled_rgb(2**31 - 1, 16, [size], [tile_bytes]), data=body)
    files["zero-dimensions.tif"] = handmade_tiff(_tiled_rgb(0, 0, [size], [tile_bytes]), data=body)
    files["tile-offset-past-eof.tif"] = handmade_tiff(_tiled_rgb(16, 16, [10**9], [tile_bytes]))
    files["tile-count-huge.tif"] = handmade_tiff(_tiled_rgb(16, 16, [size], [0xFFFFFFF0]), data=body)
    files["tile-size-zero.tif"] = handmade_tiff(_tiled_rgb(16, 16, [size], [tile_bytes], tile=0), data=body)
    files["tile-size-odd.tif"] = handmade_tiff(_tiled_rgb(16, 16, [size], [tile_bytes], tile=7), data=body)
    # 2^20 x 2^20 pixels of 16-px tiles = 4 billion tiles declared, with 4 listed.
    files["tile-array-short.tif"] = handmade_tiff(_tiled_rgb(2**20, 2**20, [size] * 4, [tile_bytes] * 4),
                                                  data=body)
    files["ifd-loop-self.tif"] = handmade_tiff(_tiled_rgb(16, 16, [size], [tile_bytes]), next_ifd=None, data=body)
    files["ifd-offset-past-eof.tif"] = handmade_tiff(plain, first_ifd=2**31)
    files["ifd-offset-zero.tif"] = b"II*\0\0\0\0\0"
    files["ifd-huge-entry-count.tif"] = b"II*\0\x08\0\0\0\xff\xff" + b"\0" * 64
    files["header-only-le.tif"] = b"II*\0"
    files["header-only-be.tif"] = b"MM\0*"
    files["bigtiff-header-only.tif"] = b"II+\0\x08\0\0\0"
    files["bigtiff-bad-offset-size.tif"] = b"II+\0\x04\0\0\0" + b"\0" * 32
    return files


def _two_ifd_loop() -> bytes:
    # IFD A at 8 -> IFD B -> IFD A ...
    tags = _tiled_rgb(16, 16, [0], [16 * 16 * 3])
    first = handmade_tiff(tags)
    ifd_size = 2 + 12 * len(tags) + 4
    second_at = len(first)
    data = bytearray(first)
    struct.pack_into("<I", data, 8 + ifd_size - 4, second_at)  # A.next = B
    second = bytearray(data[8:8 + ifd_size])
    struct.pack_into("<I", second, ifd_size - 4, 8)  # B.next = A
    return bytes(data) + bytes(second)


def _patch_tag(data: bytes, tag_name: str, value: int, page: int = 0) -> bytes:
    """Overwrite one numeric tag of a real file in place (found with tifffile)."""
    import io

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tag = tif.pages[page].tags[tag_name]
        offset, dtype = tag.valueoffset, tag.dtype
        big = tif.is_bigtiff
    patched = bytearray(data)
    fmt = {3: "<H", 4: "<I", 16: "<Q"}.get(int(dtype), "<I")
    if big and fmt == "<I" and int(dtype) == 16:
        fmt = "<Q"
    struct.pack_into(fmt, patched, offset, value & (0xFFFF if fmt == "<H" else 0xFFFFFFFF))
    return bytes(patched)


def damaged(seed_files: dict[str, bytes]) -> dict[str, bytes]:
    files = {}
    rng = random.Random(20261129)
    for seed_name, data in seed_files.items():
        stem = seed_name.removeprefix("seed-").split(".")[0]
        suffix = "." + seed_name.rsplit(".", 1)[1]
        for fraction in (0.02, 0.25, 0.5, 0.9):
            files[f"truncated-{stem}-{int(fraction * 100)}pct{suffix}"] = data[: int(len(data) * fraction)]
        files[f"truncated-{stem}-minus1{suffix}"] = data[:-1]
        for index in range(6):  # bit flips spread over the file (header and IFDs are near both ends)
            flipped = bytearray(data)
            for _ in range(1 + index):
                position = rng.randrange(len(flipped))
                flipped[position] ^= 1 << rng.randrange(8)
            files[f"bitflip-{stem}-{index}{suffix}"] = bytes(flipped)
        for index in range(3):  # a block of zeros where data was (a sparse file from a failed copy)
            zeroed = bytearray(data)
            start = rng.randrange(len(zeroed) - 512)
            zeroed[start:start + 512] = b"\0" * 512
            files[f"zeroed-block-{stem}-{index}{suffix}"] = bytes(zeroed)
    svs = seed_files["seed-aperio.svs"]
    files["aperio-width-huge.svs"] = _patch_tag(svs, "ImageWidth", 0xFFFFFFFF)
    files["aperio-length-huge.svs"] = _patch_tag(svs, "ImageLength", 0x7FFFFFFF)
    files["aperio-tile-width-zero.svs"] = _patch_tag(svs, "TileWidth", 0)
    files["aperio-level1-width-huge.svs"] = _patch_tag(svs, "ImageWidth", 0xFFFFFFF0, page=2)
    description = b"MPP = 0.500000"
    for name, replacement in (("mpp-nan", b"MPP = nan     "), ("mpp-huge", b"MPP = 1e308   "),
                              ("mpp-negative", b"MPP = -0.5    ")):
        files[f"aperio-{name}.svs"] = svs.replace(description, replacement, 1)
    return files


def wrong_files() -> dict[str, bytes]:
    return {
        "empty.svs": b"",
        "one-byte.svs": b"I",
        "text.svs": b"This is a text file, not a slide.\n" * 20,
        "png-renamed.svs": b"\x89PNG\r\n\x1a\n" + b"\0" * 200,
        "zip-renamed.svs": b"PK\x03\x04" + b"\0" * 200,
        "jpeg-renamed.svs": b"\xff\xd8\xff\xe0" + b"\0" * 200,
        "html-renamed.svs": b"<!doctype html><script>alert(1)</script>" * 5,
        "random-bytes.svs": random.Random(7).randbytes(4096),
        "dicom-magic-junk.dcm": b"\0" * 128 + b"DICM" + random.Random(8).randbytes(512),
        "ndpi-like-junk.ndpi": b"II*\0" + random.Random(9).randbytes(2048),
        "nul-padded.tif": b"\0" * 4096,
        "ff-padded.tif": b"\xff" * 4096,
    }


def main() -> None:
    import tempfile

    CORPUS.mkdir(parents=True, exist_ok=True)
    for old in CORPUS.iterdir():
        if not old.name.startswith("found-"):  # inputs the fuzzer found are kept (regression cases)
            old.unlink()
    with tempfile.TemporaryDirectory() as work:
        seed_files = seeds(Path(work))
    files = {**seed_files, **handmade(), **damaged(seed_files), **wrong_files(), "ifd-loop-two.tif": _two_ifd_loop()}
    for name, data in sorted(files.items()):
        (CORPUS / name).write_bytes(data)
    total = sum(len(data) for data in files.values())
    print(f"wrote {len(files)} files, {total / 1024:.0f} KiB, to {CORPUS}")


if __name__ == "__main__":
    main()
