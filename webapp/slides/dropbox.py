"""The scanner drop folder: files (or multi-file slide folders) waiting to be attached to a case.

A name such as `S26-00042_A_1_HE.svs` (accession, part, optional block, optional stain) is matched to its
case and part automatically; other files are attached by a lab admin from the import page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from webapp.cases.models import Part

from .ingest import SlideRejected, ingest_slide
from .models import Slide

NAME_PATTERN = re.compile(
    r"^(?P<accession>[A-Z]{1,3}\d{2}-\d{5})_(?P<part>[A-Z]{1,2})(?:_(?P<block>[A-Za-z0-9]{1,8}))?"
    r"(?:_(?P<stain>[A-Za-z0-9&+-]{1,40}))?(?:\.[A-Za-z0-9]+)?$"
)
STAIN_ALIASES = {"HE": "H&E", "H&E": "H&E"}


class DropboxError(Exception):
    pass


@dataclass
class DropEntry:
    name: str
    size: int
    is_dir: bool
    accession: str = ""
    part_label: str = ""
    block: str = ""
    stain: str = ""
    part: Part | None = None


def _drop_dir() -> Path:
    return Path(settings.SLIDE_DROP_DIR).resolve()


def parse_name(name: str) -> dict | None:
    match = NAME_PATTERN.match(name)
    if not match:
        return None
    stain = match["stain"] or "HE"
    return {
        "accession": match["accession"],
        "part": match["part"],
        "block": match["block"] or "",
        "stain": STAIN_ALIASES.get(stain.upper(), stain),
    }


def scan() -> list[DropEntry]:
    entries = []
    for path in sorted(_drop_dir().iterdir()):
        if path.name.startswith(".") or path.is_symlink():
            continue  # hidden files are scanners' partial writes; links could point anywhere
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        entry = DropEntry(name=path.name, size=size, is_dir=path.is_dir())
        if parsed := parse_name(path.name):
            entry.accession, entry.part_label = parsed["accession"], parsed["part"]
            entry.block, entry.stain = parsed["block"], parsed["stain"]
            entry.part = Part.objects.select_related("case").filter(
                case__accession_number=entry.accession, label=entry.part_label
            ).first()
        entries.append(entry)
    return entries


def resolve_entry(name: str) -> Path:
    """The drop-folder path for `name`, refusing anything that is not a direct child (path traversal)."""
    drop = _drop_dir()
    candidate = (drop / name).resolve()
    if candidate.parent != drop or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise DropboxError("That name is not a file in the drop folder.")
    if not candidate.exists():
        raise DropboxError(f"{name} is no longer in the drop folder.")
    return candidate


def import_entry(name: str, *, part: Part, stain: str = "H&E", block_label: str = "", user=None) -> Slide:
    path = resolve_entry(name)
    slide = ingest_slide(path, part=part, original_filename=name, stain=stain, block_label=block_label,
                         user=user, move=True)
    _owner_only(slide.path.parent)  # a moved file keeps the mode the scanner gave it
    return slide


def _owner_only(folder: Path) -> None:
    """The stored slide's folder 0700 and everything in it 0700/0600, however the scanner wrote it."""
    folder.chmod(0o700)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def import_matched(user=None) -> tuple[list[Slide], list[tuple[str, str]]]:
    imported, failed = [], []
    for entry in scan():
        if entry.part is None:
            continue
        try:
            imported.append(import_entry(entry.name, part=entry.part, stain=entry.stain,
                                         block_label=entry.block, user=user))
        except (SlideRejected, DropboxError) as exc:
            failed.append((entry.name, str(exc)))
    return imported, failed
