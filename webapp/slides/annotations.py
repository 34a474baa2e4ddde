"""Annotation rules: who may read and write a slide's annotations, geometry checks, measurements in physical
units, and GeoJSON import and export in QuPath's dialect.

Coordinates are level-0 pixels of the slide file (x to the right, y down), as QuPath writes them; the
viewer converts from its Deep Zoom image (which starts at the slide's bounds) before it sends anything.

Access follows the case (webapp.slides.access / webapp.cases.access): whoever may see the case reads its
slides' shared annotations and their own; lab admins and the assigned pathologist may write (anyone else
who can read gets 403, everyone else 404). A personal annotation is its owner's alone: nobody else reads or
changes it. Evaluators never reach a case: they read annotations only through a de-identified grant whose
source allows it (a rating study with "show the shared annotation layer to raters",
`tile_access.shared_annotations_allowed`), and then only the shared layer, read-only, with no author names,
comments or times (`deidentified_dict`); their writes, imports and exports are refused (403).

GeoJSON (QuPath 0.4+): a FeatureCollection of Features whose properties carry
`"objectType": "annotation"` and `"classification": {"name": ..., "color": [r, g, b]}`. Import also takes a
bare list of Features or a single Feature (QuPath's other export shapes); detections and cells are skipped.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from webapp.cases.access import can_work_on

from .access import get_slide_for_user
from .models import Annotation, AnnotationLabel, Slide
from .tile_access import resolve_slide, shared_annotations_allowed

MAX_IMPORT_BYTES = 10 * 1024 * 1024  # a QuPath export of a few thousand hand-drawn regions fits easily
MAX_FEATURES = 5000  # per import (cell detections are skipped, not counted)
MAX_VERTICES = 50_000  # per annotation: a free-hand outline of a whole biopsy at full resolution
MAX_COMMENT = 2000
GEOJSON_CONTENT_TYPE = "application/geo+json"
HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
GEOMETRY_FOR_KIND = {
    Annotation.Kind.POINT: "Point",
    Annotation.Kind.LINE: "LineString",
    Annotation.Kind.RECTANGLE: "Polygon",
    Annotation.Kind.POLYGON: "Polygon",
    Annotation.Kind.FREEHAND: "Polygon",
}


class AnnotationError(ValueError):
    """A request or file the annotation rules refuse; the message is shown to the user as it is."""


class AnnotationConflict(AnnotationError):
    """Someone else changed the annotation since this user loaded it (HTTP 409)."""


# --- access ------------------------------------------------------------------------------------------
def can_annotate(user, case) -> bool:
    """Lab admins and the case's assigned pathologist write annotations; other readers only read."""
    return bool(user.is_authenticated and (user.is_lab_admin or can_work_on(user, case)))


def get_slide_for_annotations(user, slide_id, *, write: bool = False) -> Slide:
    """The slide if `user` may see its case (else 404); with `write`, 403 for those who may only read."""
    slide = get_slide_for_user(user, slide_id)
    if write and not can_annotate(user, slide.part.case):
        raise PermissionDenied
    return slide


@dataclass(frozen=True)
class Access:
    slide: Slide
    # A rater's study grant: the shared layer only, read-only, no author names, comments or times.
    deidentified: bool = False


def annotation_access(request, slide_id, *, write: bool = False) -> Access:
    """Who may read (or, with `write`, change) `slide_id`'s annotations: the case's readers as
    `get_slide_for_annotations` says; else a de-identified grant in this session (an open rating study
    that shows this slide to the user) whose source shows the shared layer, for reading only (403 for a
    write); else 404. The source is asked afresh on every request (switching the study's option off
    takes effect at once)."""
    try:
        return Access(get_slide_for_annotations(request.user, slide_id, write=write))
    except Http404:
        grant, slide = resolve_slide(request, slide_id)  # Http404 again without a de-identified grant
        if grant.full or not shared_annotations_allowed(grant):
            raise
    if write:
        raise PermissionDenied
    return Access(slide, deidentified=True)


def visible_annotations(user, slide: Slide, access: Access):
    """The live annotations of `slide` this reader sees: shared and own, or the shared layer only."""
    rows = Annotation.objects.alive() if access.deidentified else Annotation.objects.visible_to(user)
    if access.deidentified:
        rows = rows.filter(layer=Annotation.Layer.SHARED)
    return rows.filter(slide=slide).select_related("label", "owner")


def get_annotation_for_user(user, slide: Slide, annotation_id, *, write: bool = False) -> Annotation:
    """One live annotation of `slide` that `user` can see (shared, or their own); 404 otherwise. With
    `write` the row is locked until the transaction ends (call it inside transaction.atomic)."""
    if write and not can_annotate(user, slide.part.case):
        raise PermissionDenied
    rows = Annotation.objects.visible_to(user)
    if write:
        rows = rows.select_for_update(of=("self",))
    try:
        return rows.select_related("label", "owner").get(pk=annotation_id, slide=slide)
    except (Annotation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such annotation.") from None


# --- geometry ----------------------------------------------------------------------------------------
def _point(value, slide: Slide) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) < 2:
        raise AnnotationError("A coordinate must be a pair of numbers [x, y].")
    x, y = value[0], value[1]
    if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, int | float) or not isinstance(y, int | float):
        raise AnnotationError("A coordinate must be a pair of numbers [x, y].")
    if not (math.isfinite(x) and math.isfinite(y)):
        raise AnnotationError("A coordinate is not a finite number.")
    if not (-1 <= x <= slide.width + 1 and -1 <= y <= slide.height + 1):
        raise AnnotationError(
            f"The point ({x:g}, {y:g}) lies outside the slide ({slide.width} x {slide.height} level-0 pixels): "
            "is the file from another slide, or not in level-0 pixels?")
    return [round(float(x), 2), round(float(y), 2)]


def _ring(value, slide: Slide) -> list[list[float]]:
    if not isinstance(value, list) or len(value) < 3:
        raise AnnotationError("A polygon ring needs at least three points.")
    ring = [_point(p, slide) for p in value]
    if ring[0] != ring[-1]:
        ring.append(list(ring[0]))  # GeoJSON rings are closed; accept an open one and close it
    if len(ring) < 4:
        raise AnnotationError("A polygon ring needs at least three distinct points.")
    return ring


def clean_geometry(kind: str, geometry, slide: Slide) -> dict:
    """A checked GeoJSON geometry for an annotation of `kind`, rounded to 1/100 pixel."""
    if kind not in Annotation.Kind.values:
        raise AnnotationError(f"Unknown annotation kind {kind!r}; use one of {', '.join(Annotation.Kind.values)}.")
    if not isinstance(geometry, dict) or "coordinates" not in geometry:
        raise AnnotationError("The geometry must be a GeoJSON object with 'type' and 'coordinates'.")
    expected = GEOMETRY_FOR_KIND[kind]
    if geometry.get("type") != expected:
        raise AnnotationError(f"A {kind} is a GeoJSON {expected}, not {geometry.get('type')!r}.")
    coords = geometry["coordinates"]
    if expected == "Point":
        return {"type": "Point", "coordinates": _point(coords, slide)}
    if expected == "LineString":
        if not isinstance(coords, list) or len(coords) < 2:
            raise AnnotationError("A line needs at least two points.")
        if len(coords) > MAX_VERTICES:
            raise AnnotationError(f"A line may have at most {MAX_VERTICES:,} points.")
        return {"type": "LineString", "coordinates": [_point(p, slide) for p in coords]}
    if not isinstance(coords, list) or not coords:
        raise AnnotationError("A polygon needs at least one ring.")
    if sum(len(r) if isinstance(r, list) else 0 for r in coords) > MAX_VERTICES:
        raise AnnotationError(f"A polygon may have at most {MAX_VERTICES:,} points.")
    rings = [_ring(r, slide) for r in coords]
    if _ring_area(rings[0]) == 0:
        raise AnnotationError("The polygon has no area (its points lie on a line).")
    return {"type": "Polygon", "coordinates": rings}


def _ring_area(ring: list[list[float]]) -> float:
    """Shoelace formula, in square pixels (absolute)."""
    total = 0.0
    for (x1, y1), (x2, y2) in zip(ring, ring[1:], strict=False):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


def _path_length(points: list[list[float]]) -> float:
    return sum(math.dist(a, b) for a, b in zip(points, points[1:], strict=False))


@dataclass
class Measurement:
    length_um: float | None = None  # a line's length, or a region's perimeter
    area_mm2: float | None = None
    area_px: float | None = None
    length_px: float | None = None
    text: str = ""
    notes: list[str] = field(default_factory=list)


def measure(kind: str, geometry: dict, mpp: float | None) -> Measurement:
    """Length (lines) in µm, area (regions) in mm² and perimeter in µm, from the slide's µm per pixel.
    With an unknown resolution the figures are None and the text says so, in pixels."""
    m = Measurement()
    if kind == Annotation.Kind.POINT:
        return m
    if kind == Annotation.Kind.LINE:
        m.length_px = _path_length(geometry["coordinates"])
        if mpp is None:
            m.text = f"{m.length_px:,.0f} px (resolution unknown: no length in µm)"
        else:
            m.length_um = m.length_px * mpp
            m.text = format_length(m.length_um)
        return m
    rings = geometry["coordinates"]
    m.area_px = max(0.0, _ring_area(rings[0]) - sum(_ring_area(r) for r in rings[1:]))
    m.length_px = _path_length(rings[0])
    if mpp is None:
        m.text = f"{m.area_px:,.0f} px² (resolution unknown: no area in mm²)"
    else:
        m.area_mm2 = m.area_px * mpp * mpp / 1e6
        m.length_um = m.length_px * mpp
        m.text = f"{format_area(m.area_mm2)} · perimeter {format_length(m.length_um)}"
    return m


def format_length(um: float) -> str:
    if um >= 1000:
        return f"{um / 1000:,.2f} mm"
    return f"{um:,.1f} µm"


def format_area(mm2: float) -> str:
    if mm2 >= 0.01:
        return f"{mm2:,.3f} mm²"
    return f"{mm2 * 1e6:,.0f} µm² ({mm2:.4f} mm²)"


# --- serialisation -----------------------------------------------------------------------------------
def label_dict(label: AnnotationLabel) -> dict:
    return {"id": label.pk, "name": label.name, "color": label.color}


def annotation_dict(annotation: Annotation, user, mpp: float | None, *, writable: bool) -> dict:
    """What the viewer needs about one annotation (`writable`: the user may write this case's annotations)."""
    m = measure(annotation.kind, annotation.geometry, mpp)
    label = annotation.label
    return {
        "id": str(annotation.pk),
        "kind": annotation.kind,
        "layer": annotation.layer,
        "geometry": annotation.geometry,
        "label": label_dict(label) if label else None,
        "class_name": label.name if label else annotation.class_name,
        "color": label.color if label else (annotation.class_color or "#1f77b4"),
        "comment": annotation.comment,
        "owner": annotation.owner.username,
        "owner_name": str(annotation.owner),
        "mine": user is not None and annotation.owner_id == user.pk,
        "can_edit": writable,
        "created_at": annotation.created_at.isoformat(),
        "updated_at": annotation.updated_at.isoformat(),
        "length_um": m.length_um,
        "area_mm2": m.area_mm2,
        "area_px": m.area_px,
        "measurement": m.text,
    }


DEIDENTIFIED_AUTHOR = "pathologist"


def deidentified_dict(annotation: Annotation, mpp: float | None) -> dict:
    """`annotation_dict` for a rater: no author (names can say whose case it is or which arm wrote what),
    no comment (free text can carry identifiers), no times (dates are identifiers), never editable."""
    data = annotation_dict(annotation, None, mpp, writable=False)
    data.update(owner="", owner_name=DEIDENTIFIED_AUTHOR, comment="", mine=False, can_edit=False,
                created_at=None, updated_at=None)
    return data


def audit_snapshot(annotation: Annotation) -> dict:
    """The fields an audit event keeps about an annotation (geometry summarised, not copied)."""
    coords = annotation.geometry.get("coordinates", [])
    vertices = 1 if annotation.geometry.get("type") == "Point" else (
        len(coords) if annotation.geometry.get("type") == "LineString" else sum(len(r) for r in coords))
    return {
        "id": str(annotation.pk),
        "kind": annotation.kind,
        "layer": annotation.layer,
        "label": annotation.label.name if annotation.label else annotation.class_name,
        "comment": annotation.comment,
        "vertices": vertices,
        "owner": annotation.owner.username if annotation.owner_id else "",
    }


# --- changes -----------------------------------------------------------------------------------------
def _label(value) -> AnnotationLabel | None:
    if value in (None, ""):
        return None
    try:
        return AnnotationLabel.objects.get(pk=int(value), active=True)
    except (AnnotationLabel.DoesNotExist, ValueError, TypeError):
        raise AnnotationError("Choose a label from the lab's list.") from None


def _comment(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AnnotationError("The comment must be text.")
    value = value.strip()
    if len(value) > MAX_COMMENT:
        raise AnnotationError(f"The comment is longer than {MAX_COMMENT} characters.")
    return value


def _layer(value) -> str:
    value = value or Annotation.Layer.PERSONAL
    if value not in Annotation.Layer.values:
        raise AnnotationError("The layer is 'personal' or 'shared'.")
    return value


def create(slide: Slide, user, data: dict) -> Annotation:
    if not isinstance(data, dict):
        raise AnnotationError("Send a JSON object.")
    kind = data.get("kind")
    annotation = Annotation(
        slide=slide, owner=user, updated_by=user, kind=kind,
        layer=_layer(data.get("layer")),
        geometry=clean_geometry(kind, data.get("geometry"), slide),
        label=_label(data.get("label")),
        comment=_comment(data.get("comment")),
    )
    annotation.save()
    return annotation


def update(annotation: Annotation, user, data: dict) -> Annotation:
    """Change label, comment, layer or geometry (the kind stays). Moving an annotation to another layer is
    its owner's choice only (a shared one taken back to a personal layer would vanish for everyone else)."""
    if not isinstance(data, dict):
        raise AnnotationError("Send a JSON object.")
    seen = data.get("updated_at")
    if seen and seen != annotation.updated_at.isoformat():
        who = annotation.updated_by or annotation.owner
        raise AnnotationConflict(
            f"{who} changed this annotation at {annotation.updated_at:%H:%M:%S} since you opened it; "
            "reload the slide to see their version.")
    if "layer" in data:
        layer = _layer(data["layer"])
        if layer != annotation.layer and annotation.owner_id != user.pk:
            raise AnnotationError("Only the annotation's author can move it to another layer.")
        annotation.layer = layer
    if "geometry" in data:
        annotation.geometry = clean_geometry(annotation.kind, data["geometry"], annotation.slide)
    if "label" in data:
        annotation.label = _label(data["label"])
        annotation.class_name = annotation.class_color = ""
    if "comment" in data:
        annotation.comment = _comment(data["comment"])
    annotation.updated_by = user
    annotation.save()
    return annotation


def soft_delete(annotation: Annotation, user) -> None:
    annotation.deleted_at = timezone.now()
    annotation.deleted_by = user
    annotation.save(update_fields=["deleted_at", "deleted_by"])


# --- GeoJSON -----------------------------------------------------------------------------------------
def _rgb(color: str) -> list[int]:
    value = color.lstrip("#") if color and HEX_COLOR.match(color) else "1f77b4"
    return [int(value[i:i + 2], 16) for i in (0, 2, 4)]


def to_feature(annotation: Annotation, mpp: float | None) -> dict:
    label = annotation.label
    name = label.name if label else annotation.class_name
    color = label.color if label else annotation.class_color
    properties: dict = {"objectType": "annotation", "isLocked": False}
    if name:
        properties["classification"] = {"name": name, "color": _rgb(color)}
    if annotation.comment:
        properties["comment"] = annotation.comment
    m = measure(annotation.kind, annotation.geometry, mpp)
    measurements = {}
    if m.area_mm2 is not None:
        measurements["Area µm^2"] = round(m.area_mm2 * 1e6, 2)
    if m.length_um is not None:
        measurements["Length µm" if annotation.kind == Annotation.Kind.LINE else "Perimeter µm"] = round(m.length_um, 2)
    if measurements:
        properties["measurements"] = measurements
    properties["pathalign"] = {"kind": annotation.kind, "layer": annotation.layer,
                               "author": annotation.owner.username,
                               "created": annotation.created_at.isoformat()}
    return {"type": "Feature", "id": str(annotation.pk), "geometry": annotation.geometry, "properties": properties}


def export_geojson(slide: Slide, annotations) -> dict:
    """A QuPath-style FeatureCollection (level-0 pixels) of `annotations`."""
    mpp = slide.effective_mpp
    return {"type": "FeatureCollection", "features": [to_feature(a, mpp) for a in annotations]}


@dataclass
class ImportResult:
    annotations: list[Annotation]
    skipped: dict[str, int]


SKIPPED_OBJECT_TYPES = ("detection", "cell", "tile", "tma_core")


def _features(document) -> list:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        raise AnnotationError("The file is not GeoJSON: expected a FeatureCollection, a Feature or a list of them.")
    if document.get("type") == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise AnnotationError("The FeatureCollection has no 'features' list.")
        return features
    if document.get("type") == "Feature":
        return [document]
    raise AnnotationError(f"GeoJSON of type {document.get('type')!r} is not a FeatureCollection or a Feature.")


def _split(geometry: dict) -> list[tuple[str, dict]]:
    """(kind, geometry) pairs for one imported geometry; multi-geometries become one annotation each."""
    kind_of = {"Point": Annotation.Kind.POINT, "LineString": Annotation.Kind.LINE, "Polygon": Annotation.Kind.POLYGON}
    gtype = geometry.get("type")
    if gtype in kind_of:
        return [(kind_of[gtype], geometry)]
    singles = {"MultiPoint": "Point", "MultiLineString": "LineString", "MultiPolygon": "Polygon"}
    if gtype in singles and isinstance(geometry.get("coordinates"), list):
        return [(kind_of[singles[gtype]], {"type": singles[gtype], "coordinates": c}) for c in geometry["coordinates"]]
    raise AnnotationError(f"Geometry type {gtype!r} is not supported (Point, LineString, Polygon and their Multi- forms are).")


def _is_rectangle(geometry: dict) -> bool:
    rings = geometry["coordinates"]
    if len(rings) != 1 or len(rings[0]) != 5:
        return False
    xs = {p[0] for p in rings[0]}
    ys = {p[1] for p in rings[0]}
    return len(xs) == 2 and len(ys) == 2


def parse_geojson(raw: bytes, slide: Slide, user, layer: str) -> ImportResult:
    """Unsaved annotations (and the count of skipped detections etc.) from a GeoJSON file, or AnnotationError naming the first problem (nothing is
    saved then). Classifications are matched to the lab's labels by name (case-insensitive); an unknown
    one is kept with its colour."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise AnnotationError(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB; split it.")
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"The file is not valid JSON: {exc}.") from None
    layer = _layer(layer)
    labels = {label.name.casefold(): label for label in AnnotationLabel.objects.all()}
    found: list[Annotation] = []
    skipped: dict[str, int] = {}
    for number, feature in enumerate(_features(document), start=1):
        where = f"Feature {number}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationError(f"{where} is not a GeoJSON Feature.")
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            raise AnnotationError(f"{where}: 'properties' is not an object.")
        object_type = str(props.get("objectType", "annotation")).lower()
        if object_type in SKIPPED_OBJECT_TYPES:
            skipped[object_type] = skipped.get(object_type, 0) + 1
            continue
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict):
            raise AnnotationError(f"{where} has no geometry.")
        own = props.get("pathalign") if isinstance(props.get("pathalign"), dict) else {}
        classification = props.get("classification") or {}
        name = classification.get("name", "") if isinstance(classification, dict) else str(classification)
        color = classification.get("color", classification.get("colorRGB")) if isinstance(classification, dict) else None
        label = labels.get(str(name).casefold()) if name else None
        comment = props.get("comment") or props.get("description") or props.get("name") or ""
        try:
            parts = _split(geometry)
            for kind, part in parts:
                wanted = own.get("kind")
                if len(parts) == 1 and wanted in Annotation.Kind.values and GEOMETRY_FOR_KIND[wanted] == part["type"]:
                    kind = wanted
                clean = clean_geometry(kind, part, slide)
                if kind == Annotation.Kind.POLYGON and not wanted and _is_rectangle(clean):
                    kind = Annotation.Kind.RECTANGLE
                found.append(Annotation(
                    slide=slide, owner=user, updated_by=user, layer=layer, kind=kind, geometry=clean,
                    label=label, class_name="" if label else str(name)[:80],
                    class_color="" if label else _hex(color), comment=_comment(str(comment))))
        except AnnotationError as exc:
            raise AnnotationError(f"{where}: {exc}") from None
        if len(found) > MAX_FEATURES:
            raise AnnotationError(f"The file holds more than {MAX_FEATURES:,} annotations; split it.")
    if not found:
        raise AnnotationError("The file holds no annotations." + (
            f" Skipped: {', '.join(f'{n} {t}' for t, n in skipped.items())}." if skipped else ""))
    return ImportResult(found, skipped)


def _hex(color) -> str:
    if isinstance(color, list) and len(color) >= 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color[:3]):
        return "#" + "".join(f"{c:02x}" for c in color[:3])
    if isinstance(color, int):  # QuPath < 0.4 wrote packed ARGB integers
        return f"#{(color >> 16) & 255:02x}{(color >> 8) & 255:02x}{color & 255:02x}"
    return ""


def import_geojson(raw: bytes, slide: Slide, user, layer: str) -> ImportResult:
    """Check the whole file first, then save every annotation in one transaction (all or nothing)."""
    parsed = parse_geojson(raw, slide, user, layer)
    with transaction.atomic():
        saved = Annotation.objects.bulk_create(parsed.annotations, batch_size=500)
    return ImportResult(saved, parsed.skipped)
