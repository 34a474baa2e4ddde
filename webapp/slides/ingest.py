"""Accepting a slide file: validate with OpenSlide, read its metadata, make a thumbnail, store it.

The file is checked at a temporary name inside the slide store, so the final move is a rename on the same
filesystem. Any failure removes what was written and leaves the database unchanged.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import openslide
from django.conf import settings
from django.db import transaction
from PIL import Image

from . import pixel_budget
from .models import Slide
from .resolution import note_ingested
from .signals import slide_stored

log = logging.getLogger(__name__)

# Single-file formats a browser may upload. Multi-file formats (MIRAX .mrxs, DICOM folders, VMS) come in
# through the drop-folder import, which can move a whole directory.
UPLOAD_EXTENSIONS = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".svslide", ".bif", ".vsi", ".czi", ".dcm"}
THUMBNAIL_SIZE = (512, 512)
HIDDEN_PROPERTY_PREFIXES = ("openslide.associated.",)


class SlideRejected(Exception):
    """The file is not a slide we can serve; the message names the problem for the user."""


@dataclass
class SlideMetadata:
    vendor: str
    width: int
    height: int
    level_count: int
    level_dimensions: list
    level_downsamples: list
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    scanner: str
    associated_images: list
    properties: dict = field(default_factory=dict)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def inspect_slide(path: Path) -> tuple[SlideMetadata, openslide.OpenSlide]:
    """Open `path` with OpenSlide and prove its pixels decode; raise SlideRejected with a clear reason."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        raise SlideRejected("The file is empty.")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as exc:
        raise SlideRejected(f"OpenSlide could not read the file: {exc}") from None
    if vendor is None:
        if path.is_file() and _has_image_signature(path):
            raise SlideRejected("The file starts like a TIFF/DICOM image but is damaged or incomplete "
                                "(was the copy interrupted?).")
        raise SlideRejected("The file is not a whole-slide image format that OpenSlide recognises.")
    try:
        slide = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideRejected(f"The slide file is damaged or incomplete ({vendor}): {exc}") from None
    try:
        width, height = slide.dimensions
        if width <= 0 or height <= 0:
            raise SlideRejected("The slide reports no pixels.")
        _check_tile_sizes(slide)
        # Decode the lowest level whole and the far corner of level 0: a truncated file fails here.
        lowest = slide.level_count - 1
        lw, lh = slide.level_dimensions[lowest]
        if lw * lh <= 16_000_000:
            slide.read_region((0, 0), lowest, (lw, lh))
        slide.read_region((max(0, width - 512), max(0, height - 512)), 0, (min(512, width), min(512, height)))
        props = _readable_properties(slide)
    except SlideRejected:
        slide.close()
        raise
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        slide.close()
        raise SlideRejected(f"The slide's image data is damaged or truncated: {exc}") from None
    scanner = props.get("aperio.ScanScope ID") or props.get("hamamatsu.Product") or props.get(
        "leica.device-model", ""
    )
    metadata = SlideMetadata(
        vendor=vendor,
        width=width,
        height=height,
        level_count=slide.level_count,
        level_dimensions=[list(d) for d in slide.level_dimensions],
        level_downsamples=[float(d) for d in slide.level_downsamples],
        mpp_x=_float(props.get(openslide.PROPERTY_NAME_MPP_X)),
        mpp_y=_float(props.get(openslide.PROPERTY_NAME_MPP_Y)),
        objective_power=_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
        scanner=scanner[:200],
        associated_images=sorted(slide.associated_images),
        properties={k: v[:500] for k, v in props.items() if not k.startswith(HIDDEN_PROPERTY_PREFIXES)},
    )
    return metadata, slide


# Scanners write tiles of 240-1024 px (a few 4096 px); OpenSlide allocates a whole tile to decode any part of
# it, and GLib aborts the process when that fails. A damaged header declaring a 788-million-pixel-wide tile
# (found by the fuzzer) must be refused before anything is decoded.
MAX_TILE_PIXELS = 8192 * 8192


def _check_tile_sizes(slide: openslide.OpenSlide) -> None:
    for level in range(slide.level_count):
        try:
            tile_w = int(slide.properties.get(f"openslide.level[{level}].tile-width", 0))
            tile_h = int(slide.properties.get(f"openslide.level[{level}].tile-height", 0))
        except (KeyError, ValueError):
            continue
        if tile_w * tile_h > MAX_TILE_PIXELS:
            raise SlideRejected(
                f"The slide's level {level} declares tiles of {tile_w} x {tile_h} pixels; the file is damaged."
            )


def _readable_properties(slide: openslide.OpenSlide) -> dict[str, str]:
    """The slide's properties, skipping names OpenSlide cannot look up again (non-UTF-8 TIFF tag names
    come back with replacement characters, and asking for them raises KeyError)."""
    properties = {}
    for name in list(slide.properties):
        try:
            properties[name] = slide.properties[name]
        except KeyError:
            continue
    return properties


IMAGE_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # TIFF and BigTIFF, both byte orders


def _has_image_signature(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return head[:4] in IMAGE_SIGNATURES or head[128:132] == b"DICM"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def safe_display_name(name: str) -> str:
    """The uploaded name as shown in the UI: no directories, no control characters, bounded length."""
    name = os.path.basename(name.replace("\\", "/"))
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:255]


def read_slide_file(path: Path) -> tuple[SlideMetadata, Image.Image]:
    """Everything ingest does with a file's bytes: validate and read its metadata (`inspect_slide`), then
    make its thumbnail within the pixel budget. SlideRejected (with a sentence for the user) for anything
    wrong; never another exception (the fuzz target, fuzz/fuzz_inspect_slide.py, runs exactly this)."""
    metadata, handle = inspect_slide(path)
    try:
        return metadata, pixel_budget.thumbnail(handle, THUMBNAIL_SIZE)  # never a whole unbounded level
    except pixel_budget.OverBudget as exc:
        raise SlideRejected(str(exc)) from None
    except (openslide.OpenSlideError, OSError, ValueError) as exc:  # a damaged tile past the checked ones
        raise SlideRejected(f"The slide's pixels cannot be read ({exc}).") from None
    finally:
        handle.close()


def ingest_slide(
    source: Path,
    *,
    part,
    original_filename: str,
    stain: str = "H&E",
    block_label: str = "",
    user=None,
    move: bool = True,
) -> Slide:
    """Validate `source` (a file or a multi-file slide directory) and store it as a new Slide of `part`.

    On success the file lives at SLIDE_STORE_DIR/<uuid>/<uuid><ext>; on failure nothing is left behind
    in the store (the caller owns `source` and decides whether to delete it) and no row is written.
    """
    store = Path(settings.SLIDE_STORE_DIR)
    slide_id = uuid.uuid4()
    suffix = Path(safe_display_name(original_filename)).suffix.lower()
    if not suffix.isascii() or len(suffix) > 10:
        suffix = ""
    folder = store / str(slide_id)
    folder.mkdir(parents=True)
    staged = folder / (f"{slide_id}{suffix}" if source.is_file() else str(slide_id))
    try:
        if move:
            shutil.move(str(source), staged)
        elif source.is_dir():
            shutil.copytree(source, staged)
        else:
            shutil.copyfile(source, staged)
        slide_file = staged if staged.is_file() else _main_file_in(staged)
        metadata, thumbnail = read_slide_file(slide_file)
        size = staged.stat().st_size if staged.is_file() else sum(
            p.stat().st_size for p in staged.rglob("*") if p.is_file()
        )
        with transaction.atomic():
            slide = Slide.objects.create(
                id=slide_id,
                part=part,
                stain=stain,
                block_label=block_label,
                file_path=str(slide_file.relative_to(store)),
                original_filename=safe_display_name(original_filename),
                file_size=size,
                created_by=user,
                **metadata.__dict__,
            )
            slide.thumbnail_path.parent.mkdir(parents=True, exist_ok=True)
            thumbnail.save(slide.thumbnail_path, "JPEG", quality=85)
    except BaseException:
        if move and staged.exists() and not source.exists():
            # Give the caller its file back so a failed import loses nothing.
            shutil.move(str(staged), source)
        _remove(folder)
        (store / "thumbnails" / f"{slide_id}.jpg").unlink(missing_ok=True)
        raise
    note_ingested(slide)  # resolution unknown (missing or implausible um/px): logged; analysis waits
    transaction.on_commit(lambda: slide_stored.send(sender=Slide, slide=slide, user=user))
    log.info("stored slide %s (%s, %dx%d)", slide.pk, metadata.vendor, metadata.width, metadata.height)
    return slide


def _main_file_in(directory: Path) -> Path:
    """The file OpenSlide should open inside a multi-file slide directory (MIRAX index, DICOM series)."""
    candidates = sorted(p for p in directory.rglob("*") if p.is_file())
    for pattern in (".mrxs", ".vms", ".vmu", ".dcm"):
        for candidate in candidates:
            if candidate.suffix.lower() == pattern:
                return candidate
    for candidate in candidates:
        if openslide.OpenSlide.detect_format(str(candidate)):
            return candidate
    raise SlideRejected("The folder holds no file that OpenSlide recognises as a slide.")
