"""Annotations API: per-user and shared layers, access through the case, audit events, measurements from
the slide's resolution, and QuPath-style GeoJSON export and import."""
from __future__ import annotations

import json
import time

import pytest
from django.urls import reverse

from webapp.audit.models import AuditEvent
from webapp.slides import annotations as rules
from webapp.slides.ingest import ingest_slide
from webapp.slides.models import Annotation, AnnotationLabel, Slide

# 2000 x 1000 level-0 pixels: at 0.5 um/px that is 1000 um x 500 um = 0.5 mm^2.
RECT = {"type": "Polygon", "coordinates": [[[100, 200], [2100, 200], [2100, 1200], [100, 1200], [100, 200]]]}
LINE = {"type": "LineString", "coordinates": [[0, 0], [300, 400]]}  # 500 px = 250 um at 0.5 um/px


@pytest.fixture(autouse=True)
def default_labels(db):
    """The lab's starting label list (QuPath's classes), as the migration seeds it: a transactional test
    elsewhere in a run empties the tables, seeded rows included."""
    from importlib import import_module

    from webapp.slides.models import AnnotationLabel

    for position, (name, color) in enumerate(import_module("webapp.slides.migrations.0003_annotations").DEFAULT_LABELS):
        AnnotationLabel.objects.get_or_create(name=name, defaults={"color": color, "position": position})


@pytest.fixture
def slide(cast, case_factory, good_slide) -> Slide:
    case = case_factory(assigned_to=cast.path1)
    return ingest_slide(good_slide, part=case.parts.get(), original_filename="a.svs", user=cast.admin, move=False)


def url(name: str, slide: Slide, annotation=None) -> str:
    args = [slide.pk] if annotation is None else [slide.pk, annotation if isinstance(annotation, str) else annotation.pk]
    return reverse(name, args=args)


def post_json(client, target: str, body):
    return client.post(target, data=json.dumps(body), content_type="application/json")


def create(client, slide, **body):
    data = {"kind": "rectangle", "geometry": RECT, "layer": "personal", "comment": ""} | body
    return post_json(client, url("slide_annotations", slide), data)


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def test_known_rectangle_area_and_line_length(slide, client_for, cast):
    """2000 x 1000 px at 0.5 um/px is 0.5 mm^2; a 500 px line is 250 um (the fixture slide is 0.5 um/px)."""
    assert slide.effective_mpp == pytest.approx(0.5)
    client = client_for(cast.path1)
    rect = create(client, slide).json()
    assert rect["area_mm2"] == pytest.approx(0.5)
    assert rect["length_um"] == pytest.approx(3000.0)  # perimeter: 2 x (1000 + 500) um
    assert "0.500 mm²" in rect["measurement"]
    line = create(client, slide, kind="line", geometry=LINE).json()
    assert line["length_um"] == pytest.approx(250.0)
    assert line["measurement"] == "250.0 µm"
    free = create(client, slide, kind="freehand", geometry={"type": "Polygon", "coordinates": [[[0, 0], [1000, 0], [0, 1000]]]}).json()
    assert free["area_mm2"] == pytest.approx(500 * 1000 * 0.25 / 1e6)  # ring closed by the server


def test_unknown_resolution_says_so_instead_of_a_number(slide, client_for, cast):
    Slide.objects.filter(pk=slide.pk).update(mpp_x=None, mpp_y=None, mpp_override=None)
    client = client_for(cast.path1)
    rect = create(client, slide).json()
    assert rect["area_mm2"] is None and rect["length_um"] is None
    assert "resolution unknown" in rect["measurement"] and "2,000,000 px²" in rect["measurement"]
    listing = client.get(url("slide_annotations", slide)).json()
    assert listing["resolution_unknown"] is True and listing["mpp"] is None


def test_create_edit_soft_delete_with_audit(slide, client_for, cast):
    client = client_for(cast.path1)
    tumor = AnnotationLabel.objects.get(name="Tumor")
    response = create(client, slide, label=tumor.pk, comment="invasive front")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["label"]["name"] == "Tumor" and created["comment"] == "invasive front" and created["mine"]
    [event] = events("annotation_create")
    assert event.case_id == slide.part.case_id and event.object_id == created["id"]
    assert event.after["label"] == "Tumor" and event.after["kind"] == "rectangle"

    stroma = AnnotationLabel.objects.get(name="Stroma")
    moved = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    response = post_json(client, url("slide_annotation", slide, created["id"]),
                         {"label": stroma.pk, "comment": "stroma after all", "geometry": moved, "layer": "shared"})
    assert response.status_code == 200, response.content
    edited = response.json()
    assert (edited["label"]["name"], edited["comment"], edited["layer"]) == ("Stroma", "stroma after all", "shared")
    assert edited["geometry"] == moved
    [event] = events("annotation_edit")
    assert event.before["label"] == "Tumor" and event.after["label"] == "Stroma"

    response = client.post(url("slide_annotation_delete", slide, created["id"]))
    assert response.status_code == 200
    row = Annotation.objects.get(pk=created["id"])  # soft: the row stays, with who and when
    assert row.deleted_at is not None and row.deleted_by == cast.path1
    assert client.get(url("slide_annotations", slide)).json()["annotations"] == []
    assert client.get(url("slide_annotation", slide, created["id"])).status_code == 404
    [event] = events("annotation_delete")
    assert event.before["comment"] == "stroma after all"


def test_an_edit_over_someone_elses_newer_change_is_a_409(slide, client_for, cast):
    path1, admin = client_for(cast.path1), client_for(cast.admin)
    shared = create(path1, slide, layer="shared", comment="first").json()
    target = url("slide_annotation", slide, shared["id"])
    newer = post_json(admin, target, {"comment": "admin's", "updated_at": shared["updated_at"]})
    assert newer.status_code == 200
    stale = post_json(path1, target, {"comment": "mine", "updated_at": shared["updated_at"]})
    assert stale.status_code == 409 and "changed this annotation" in stale.json()["error"]
    assert Annotation.objects.get(pk=shared["id"]).comment == "admin's"
    fresh = post_json(path1, target, {"comment": "mine", "updated_at": newer.json()["updated_at"]})
    assert fresh.status_code == 200 and fresh.json()["comment"] == "mine"
    assert len(events("annotation_edit")) == 2


def test_personal_layer_is_private_and_shared_layer_is_shared(slide, client_for, cast):
    path1, admin = client_for(cast.path1), client_for(cast.admin)
    mine = create(path1, slide, comment="private note").json()
    shared = create(path1, slide, layer="shared", comment="for the tumour board").json()
    admins = create(admin, slide, comment="admin's own").json()

    seen_by_admin = {a["id"] for a in admin.get(url("slide_annotations", slide)).json()["annotations"]}
    assert seen_by_admin == {shared["id"], admins["id"]}
    seen_by_path1 = {a["id"] for a in path1.get(url("slide_annotations", slide)).json()["annotations"]}
    assert seen_by_path1 == {mine["id"], shared["id"]}
    # Another user's personal annotation does not exist for you, not even to delete.
    assert admin.post(url("slide_annotation_delete", slide, mine["id"])).status_code == 404
    assert post_json(admin, url("slide_annotation", slide, mine["id"]), {"comment": "x"}).status_code == 404
    # The shared layer is shared work: the admin may edit it, but only its author moves it off the layer.
    assert post_json(admin, url("slide_annotation", slide, shared["id"]), {"comment": "seen"}).status_code == 200
    response = post_json(admin, url("slide_annotation", slide, shared["id"]), {"layer": "personal"})
    assert response.status_code == 400 and "author" in response.json()["error"]


def test_outsiders_get_404_and_evaluators_see_nothing(slide, client_for, cast):
    create(client_for(cast.path1), slide, layer="shared")
    annotation = Annotation.objects.get()
    for user in (cast.path2, cast.outsider, cast.evaluator):
        client = client_for(user)
        assert client.get(url("slide_annotations", slide)).status_code == 404
        assert client.get(url("slide_annotations_export", slide)).status_code == 404
        assert client.get(url("slide_annotation", slide, annotation)).status_code == 404
        assert create(client, slide).status_code == 404
        assert client.post(url("slide_annotation_delete", slide, annotation)).status_code == 404
        assert client.post(url("slide_annotations_import", slide), data=b"{}",
                           content_type="application/geo+json").status_code == 404
    assert client_for(None).get(url("slide_annotations", slide)).status_code == 302  # to the login page
    assert Annotation.objects.count() == 1


def test_who_may_write(slide, cast):
    """Lab admins and the assigned pathologist write; the rule is one function (can_annotate) that the
    views apply with 403 for readers who may not write. Today every reader of a case may annotate it."""
    case = slide.part.case
    assert rules.can_annotate(cast.admin, case) and rules.can_annotate(cast.path1, case)
    assert not rules.can_annotate(cast.path2, case) and not rules.can_annotate(cast.evaluator, case)
    cast.path1.is_active = False
    assert not rules.can_annotate(cast.path1, case)


def test_deidentified_evaluator_grant_gives_no_annotations(slide, client_for, cast, monkeypatch):
    """An evaluation grant (de-identified tiles) never opens the annotation API."""
    from webapp.slides import tile_access

    monkeypatch.setitem(tile_access.GRANT_SOURCES, "test-ann", lambda source, user: True)  # restored after
    client = client_for(cast.evaluator)
    session = client.session
    session[tile_access.SESSION_GRANTS] = {str(slide.pk): [time.time() + 600, "test-ann", 1]}
    session.save()
    assert client.get(reverse("slide_viewer_meta", args=[slide.pk])).status_code == 200
    assert client.get(url("slide_annotations", slide)).status_code == 404
    assert client.get(url("slide_annotations_export", slide)).status_code == 404


def test_bad_input_is_a_clear_400(slide, client_for, cast):
    client = client_for(cast.path1)
    cases = [
        ({"kind": "circle", "geometry": RECT}, "Unknown annotation kind"),
        ({"kind": "rectangle", "geometry": LINE}, "is a GeoJSON Polygon"),
        ({"kind": "point", "geometry": {"type": "Point", "coordinates": [99999, 5]}}, "outside the slide"),
        ({"kind": "polygon", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 5], [10, 10]]]}}, "no area"),
        ({"kind": "point", "geometry": {"type": "Point", "coordinates": ["a", 1]}}, "pair of numbers"),
        ({"kind": "point", "geometry": {"type": "Point", "coordinates": [1, 1]}, "label": 999999}, "label"),
    ]
    for body, message in cases:
        response = post_json(client, url("slide_annotations", slide), {"layer": "personal"} | body)
        assert response.status_code == 400 and message in response.json()["error"], (body, response.content)
    assert client.post(url("slide_annotations", slide), data="not json", content_type="application/json").status_code == 400
    assert Annotation.objects.count() == 0


# --- GeoJSON ---------------------------------------------------------------------------------------
def test_export_is_a_qupath_feature_collection_and_reimports_to_the_same_geometry(slide, client_for, cast):
    client = client_for(cast.path1)
    tumor = AnnotationLabel.objects.get(name="Tumor")
    create(client, slide, label=tumor.pk, comment="carcinoma")
    create(client, slide, kind="line", geometry=LINE, layer="shared")
    create(client, slide, kind="point", geometry={"type": "Point", "coordinates": [10.5, 20.25]})
    freehand = {"type": "Polygon", "coordinates": [[[50, 50], [80, 55], [90, 90], [40, 85], [50, 50]]]}
    create(client, slide, kind="freehand", geometry=freehand)

    response = client.get(url("slide_annotations_export", slide))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/geo+json"
    assert "attachment" in response["Content-Disposition"]
    doc = json.loads(response.content)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 4
    rect = next(f for f in doc["features"] if f["properties"].get("classification"))
    assert rect["type"] == "Feature" and rect["geometry"] == RECT  # level-0 pixels, as drawn
    assert rect["properties"]["objectType"] == "annotation"
    assert rect["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert rect["properties"]["measurements"]["Area µm^2"] == pytest.approx(500_000)
    [event] = events("annotation_export")
    assert event.details["count"] == 4

    # Re-import onto the shared layer: same geometries, kinds, labels and comments, new rows.
    response = client.post(url("slide_annotations_import", slide),
                           data={"file": _upload(response.content), "layer": "shared"})
    assert response.status_code == 201, response.content
    assert response.json()["imported"] == 4
    imported = Annotation.objects.filter(layer="shared").exclude(kind="line").order_by("kind")
    originals = Annotation.objects.filter(layer="personal").order_by("kind")
    assert [(a.kind, a.geometry, a.label_id, a.comment) for a in imported] == \
        [(a.kind, a.geometry, a.label_id, a.comment) for a in originals]
    [event] = events("annotation_import")
    assert event.details["count"] == 4 and event.case_id == slide.part.case_id


def _upload(content: bytes, name: str = "annotations.geojson"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content, content_type="application/geo+json")


def test_import_qupath_shapes(slide, client_for, cast):
    """What QuPath writes: a bare list of Features, MultiPolygon, packed or [r,g,b] colours, detections."""
    features = [
        {"type": "Feature", "id": "a", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]], [[[200, 200], [300, 200], [250, 300], [200, 200]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "tumor", "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[5, 5], [9, 5], [9, 9], [5, 5]]]},
         "properties": {"objectType": "detection"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [7, 7]},
         "properties": {"classification": {"name": "Mitosis", "colorRGB": -65536}, "name": "a mitotic figure"}},
    ]
    client = client_for(cast.path1)
    response = client.post(url("slide_annotations_import", slide) + "?layer=personal",
                           data=json.dumps(features), content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json() == {"imported": 3, "skipped": {"detection": 1}}
    rows = list(Annotation.objects.order_by("kind", "created_at"))
    assert [r.kind for r in rows] == ["point", "polygon", "rectangle"]
    assert rows[2].label.name == "Tumor"  # matched to the lab's list ignoring case
    assert rows[0].class_name == "Mitosis" and rows[0].comment == "a mitotic figure"


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "not valid JSON"),
    (b'{"type": "Topology"}', "not a FeatureCollection"),
    (b'{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null}]}', "Feature 1 has no geometry"),
    (b'{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}},'
     b' {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1e9, 1]}}]}', "Feature 2: The point"),
    (b'{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": []}}]}',
     "not supported"),
    (b'{"type": "FeatureCollection", "features": []}', "no annotations"),
])
def test_malformed_geojson_is_a_clear_400_and_saves_nothing(slide, client_for, cast, payload, message):
    client = client_for(cast.path1)
    response = client.post(url("slide_annotations_import", slide), data={"file": _upload(payload)})
    assert response.status_code == 400
    assert message in response.json()["error"], response.json()
    assert Annotation.objects.count() == 0
    assert not events("annotation_import")


def test_oversized_import_is_refused(slide, client_for, cast):
    client = client_for(cast.path1)
    big = b" " * (rules.MAX_IMPORT_BYTES + 1)
    response = client.post(url("slide_annotations_import", slide), data={"file": _upload(big)})
    assert response.status_code == 400 and "larger than" in response.json()["error"]
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}}
    many = json.dumps({"type": "FeatureCollection", "features": [point] * (rules.MAX_FEATURES + 1)}).encode()
    response = client.post(url("slide_annotations_import", slide), data={"file": _upload(many)})
    assert response.status_code == 400 and "more than" in response.json()["error"]
    assert Annotation.objects.count() == 0


def test_label_list_is_the_lab_admins(client_for, cast):
    admin = client_for(cast.admin)
    assert admin.get(reverse("annotation_labels")).status_code == 200
    response = admin.post(reverse("annotation_labels"), {"name": "Invasive front", "color": "#112233", "position": "7"})
    assert response.status_code == 302
    label = AnnotationLabel.objects.get(name="Invasive front")
    assert (label.color, label.position, label.active) == ("#112233", 7, True)
    admin.post(reverse("annotation_labels"), {"id": label.pk, "name": "Invasive margin", "color": "#112233", "position": "7"})
    label.refresh_from_db()
    assert label.name == "Invasive margin" and label.active is False  # unticked "offered": retired
    assert events("annotation_label_save")[-1].after["name"] == "Invasive margin"
    assert client_for(cast.path1).get(reverse("annotation_labels")).status_code == 403
    assert client_for(cast.path1).post(reverse("annotation_labels"), {"name": "x", "color": "#000000"}).status_code == 403
