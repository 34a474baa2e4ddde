"""In Chromium: a polygon drawn with real mouse clicks on the slide is saved in level-0 pixels, comes back
after a page refresh with its area in mm², exports as GeoJSON and imports back; every annotation tool is
clickable (nothing covers it) at 1440x900 and 1920x1080; the de-identified viewer shows no annotations."""
from __future__ import annotations

import json
import os

import pytest
from playwright.sync_api import expect

from webapp.slides.ingest import ingest_slide
from webapp.slides.models import Annotation

pytestmark = pytest.mark.browser

VIEWER = "document.querySelector('[data-pa-viewer]').pathAlignViewer"
LOADED = f"""() => {{ const v = {VIEWER}; const p = v && v.panes.main; const item = p && p.osd.world.getItemAt(0);
  return !!(item && item.getFullyLoaded()); }}"""
READY = "() => document.querySelector('[data-pa-annotations]').dataset.state === 'ready'"
# The level-0 pixel under a point of the main pane's canvas (Deep Zoom image pixels + the slide's bounds).
TO_LEVEL0 = f"""([x, y]) => {{ const p = {VIEWER}.panes.main; const item = p.osd.world.getItemAt(0);
  const r = p.osd.element.getBoundingClientRect();
  const q = item.viewerElementToImageCoordinates(new OpenSeadragon.Point(x - r.left, y - r.top));
  const b = p.meta.bounds || {{x: 0, y: 0}}; return [q.x + b.x, q.y + b.y]; }}"""
# Whether the element at the centre of each control is the control itself (or inside it).
UNCOVERED = """(selector) => [...document.querySelectorAll(selector)].filter((el) => el.offsetParent !== null).map((el) => {
  const r = el.getBoundingClientRect(); const x = r.left + r.width / 2; const y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  return {name: el.textContent.trim() || el.dataset.annRole, ok: !!hit && (hit === el || el.contains(hit)),
          inView: y > 0 && y < window.innerHeight && x > 0 && x < window.innerWidth, hit: hit && hit.outerHTML.slice(0, 80)};
})"""
CONTROLS = "[data-pa-annotations] .pa-ann-bar button, [data-pa-annotations] .pa-ann-bar a.button, " \
           "[data-pa-annotations] .pa-ann-bar label.button, [data-pa-annotations] .pa-ann-bar select, " \
           "[data-pa-annotations] .pa-ann-bar input[type=checkbox]"


@pytest.fixture(autouse=True)
def default_labels(db):
    """The lab's starting label list (QuPath's classes), as the migration seeds it: a transactional test
    elsewhere in a run empties the tables, seeded rows included."""
    from importlib import import_module

    from webapp.slides.models import AnnotationLabel

    for position, (name, color) in enumerate(import_module("webapp.slides.migrations.0003_annotations").DEFAULT_LABELS):
        AnnotationLabel.objects.get_or_create(name=name, defaults={"color": color, "position": position})


@pytest.fixture
def annotated_case(cast, case_factory, good_slide):
    case = case_factory(assigned_to=cast.path1)
    case.slide = ingest_slide(good_slide, part=case.parts.get(), original_filename="a.svs", move=False)
    return case


def shoelace(ring) -> float:
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:], strict=False))) / 2


def assert_controls_clickable(page) -> None:
    found = page.evaluate(UNCOVERED, CONTROLS)
    assert len(found) >= 12, found
    bad = [c for c in found if not (c["ok"] and c["inView"])]
    assert not bad, f"annotation controls covered or off screen at {page.viewport_size}: {bad}"


def open_viewer(page, case) -> None:
    page.goto(f"/cases/{case.pk}/viewer/?slide={case.slide.pk}")
    page.wait_for_function(LOADED, timeout=20000)
    page.wait_for_function(READY)


def test_draw_polygon_reload_export_import(cast, page_for, annotated_case, tmp_path):
    page = page_for(cast.path1)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.set_viewport_size({"width": 1440, "height": 900})
    open_viewer(page, annotated_case)
    assert_controls_clickable(page)

    # Every tool button takes a real click at its centre.
    for tool in ("point", "line", "rect", "polygon", "freehand", ""):
        box = page.locator(f"[data-ann-tool='{tool}']").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.locator(f"[data-ann-tool='{tool}']")).to_have_attribute("aria-pressed", "true")

    # A polygon with real clicks on the canvas; a double click on the last corner finishes it.
    page.select_option("[data-ann-role=label]", label="Tumor")
    page.locator("[data-ann-tool=polygon]").click()
    canvas = page.locator("[data-pane=main] .pa-osd").bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    corners = [(cx - 120, cy - 80), (cx + 110, cy - 90), (cx + 130, cy + 70), (cx - 100, cy + 90)]
    expected = [page.evaluate(TO_LEVEL0, [x, y]) for x, y in corners]
    for x, y in corners[:-1]:
        page.mouse.click(x, y)
        page.wait_for_timeout(120)
    page.mouse.dblclick(*corners[-1])
    expect(page.locator("[data-ann-role=status]")).to_contain_text("Polygon saved", timeout=10000)
    [saved] = Annotation.objects.all()
    assert (saved.kind, saved.owner, saved.layer, saved.label.name) == ("polygon", cast.path1, "personal", "Tumor")
    ring = saved.geometry["coordinates"][0]
    assert ring[0] == ring[-1]
    # The saved corners are where the mouse clicked, in level-0 pixels (a click may land a pixel off).
    zoom = page.evaluate(f"{VIEWER}.panes.main.osd.world.getItemAt(0).viewportToImageZoom({VIEWER}.panes.main.osd.viewport.getZoom(true))")
    tolerance = 3 / zoom
    for (ex, ey) in expected:
        assert min(abs(px - ex) + abs(py - ey) for px, py in ring) <= tolerance, (expected, ring)
    area_mm2 = shoelace(ring) * 0.5 * 0.5 / 1e6
    assert area_mm2 > 0.01

    # After a refresh the polygon is listed again, with its area in mm² (the slide is 0.5 µm/px).
    page.reload()
    page.wait_for_function(LOADED, timeout=20000)
    page.wait_for_function(READY)
    expect(page.locator("[data-ann-role=count]")).to_have_text("1")
    page.locator("[data-ann-role=list-toggle]").click()
    item = page.locator(".pa-ann-item").first
    expect(item).to_contain_text(f"{area_mm2:,.3f} mm²")
    expect(item).to_contain_text("Tumor")
    assert page.locator(".a9s-annotation").count() == 1  # drawn on the slide
    item.click()  # jumps to it and opens its form
    expect(page.locator("[data-ann-role=form-measure]")).to_contain_text("mm²")
    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    if folder:
        page.screenshot(path=f"{folder}/viewer-annotations.png")

    # Export: a QuPath FeatureCollection in level-0 pixels.
    with page.expect_download() as download:
        page.locator("[data-ann-role=export]").click()
    exported = tmp_path / "export.geojson"
    download.value.save_as(exported)
    doc = json.loads(exported.read_text())
    assert doc["type"] == "FeatureCollection"
    [feature] = doc["features"]
    assert feature["geometry"] == saved.geometry
    assert feature["properties"]["classification"]["name"] == "Tumor"
    assert feature["properties"]["objectType"] == "annotation"

    # Import it back (onto the shared layer): a second polygon with the same geometry.
    page.select_option("[data-ann-role=layer]", "shared")
    page.set_input_files("[data-ann-role=import]", str(exported))
    expect(page.locator("[data-ann-role=status]")).to_contain_text("Imported 1 annotation", timeout=10000)
    expect(page.locator("[data-ann-role=count]")).to_have_text("2")
    imported = Annotation.objects.get(layer="shared")
    assert imported.geometry == saved.geometry and imported.kind == "polygon"
    assert not problems, problems

    # The same controls at 1920x1080.
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.wait_for_timeout(200)
    assert_controls_clickable(page)


def test_deidentified_view_has_no_annotations(cast, page_for, annotated_case):
    Annotation.objects.create(slide=annotated_case.slide, owner=cast.path1, layer="shared", kind="point",
                              geometry={"type": "Point", "coordinates": [100, 100]})
    page = page_for(cast.path1)
    annotation_requests: list[str] = []
    page.on("request", lambda r: annotation_requests.append(r.url) if "/annotations/" in r.url else None)
    page.goto(f"/slides/{annotated_case.slide.pk}/deidentified/")
    page.wait_for_function(LOADED, timeout=20000)
    assert page.locator("[data-pa-annotations]").count() == 0
    assert page.locator(".a9s-annotation").count() == 0
    assert annotation_requests == []


def test_every_tool_draws_and_the_form_edits_and_deletes(cast, page_for, annotated_case):
    page = page_for(cast.path1)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error} {error.stack}"))
    page.on("dialog", lambda dialog: dialog.accept())  # the delete confirmation
    page.set_viewport_size({"width": 1440, "height": 900})
    open_viewer(page, annotated_case)
    canvas = page.locator("[data-pane=main] .pa-osd").bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2

    def drag(points):
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(x, y, steps=4)
        page.mouse.up()

    def saved(count: int, name: str) -> Annotation:
        expect(page.locator("[data-ann-role=status]")).to_contain_text(f"{name} saved", timeout=10000)
        assert Annotation.objects.count() == count
        return Annotation.objects.order_by("-created_at").first()

    page.locator("[data-ann-tool=rect]").click()
    drag([(cx - 200, cy - 150), (cx - 100, cy - 100), (cx - 40, cy - 60)])
    rect = saved(1, "Rectangle")
    assert rect.kind == "rectangle" and len(rect.geometry["coordinates"][0]) == 5
    page.locator("[data-ann-tool=point]").click()
    page.mouse.click(cx + 150, cy - 120)
    point = saved(2, "Point")
    assert point.geometry["type"] == "Point"
    dot = page.locator(f".a9s-point[data-id='#{point.pk}'] .a9s-inner")
    expect(dot).to_be_visible()  # a dot of constant size on screen, where the click was
    box = dot.bounding_box()
    assert abs(box["x"] + box["width"] / 2 - (cx + 150)) < 3 and abs(box["y"] + box["height"] / 2 - (cy - 120)) < 3
    page.locator("[data-ann-tool=line]").click()
    drag([(cx - 200, cy + 120), (cx - 100, cy + 125), (cx, cy + 130)])
    line = saved(3, "Line")
    assert line.geometry["type"] == "LineString"
    expect(page.locator("[data-ann-role=form-measure]")).to_contain_text("µm")
    page.locator("[data-ann-tool=freehand]").click()
    drag([(cx + 60, cy + 20), (cx + 160, cy + 10), (cx + 200, cy + 90), (cx + 120, cy + 140), (cx + 50, cy + 90)])
    free = saved(4, "Free-hand")
    assert free.geometry["type"] == "Polygon" and len(free.geometry["coordinates"][0]) > 5
    expect(page.locator("[data-ann-role=form-measure]")).to_contain_text("mm²")

    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    if folder:
        page.screenshot(path=f"{folder}/viewer-annotation-tools.png")

    # The form (open on the last shape): label, comment, shared layer; then delete the rectangle.
    page.select_option(".pa-ann-form select[name=label]", label="Necrosis")
    page.fill(".pa-ann-form textarea[name=comment]", "comedo necrosis")
    page.select_option(".pa-ann-form select[name=layer]", "shared")
    page.locator(".pa-ann-form [type=submit]").click()
    expect(page.locator("[data-ann-role=status]")).to_have_text("Saved.")
    free.refresh_from_db()
    assert (free.label.name, free.comment, free.layer) == ("Necrosis", "comedo necrosis", "shared")
    page.locator(f".pa-ann-item[data-ann-id='{rect.pk}']").click()
    page.locator("[data-ann-role=delete]").click()
    expect(page.locator("[data-ann-role=status]")).to_have_text("Deleted.")
    expect(page.locator("[data-ann-role=count]")).to_have_text("3")
    rect.refresh_from_db()
    assert rect.deleted_at is not None
    # Hiding the shared layer hides the free-hand region on the slide, not the others.
    shapes = page.locator(".a9s-annotation")
    expect(shapes).to_have_count(3)
    page.locator("[data-ann-show=shared]").uncheck()
    expect(shapes).to_have_count(2)
    assert not problems, problems



def test_side_by_side_panes_each_have_their_layer_and_the_workspace_tools_are_clickable(
        cast, page_for, annotated_case, good_slide):
    """Each pane gets its own annotation layer (viewer.js's slide-opened event); the list follows the pane
    last clicked. In the report workspace the annotation controls are clickable too."""
    ihc = ingest_slide(good_slide, part=annotated_case.parts.get(), original_filename="b.svs", stain="Ki-67",
                       block_label="2", move=False)
    Annotation.objects.create(slide=ihc, owner=cast.path1, layer="shared", kind="point",
                              geometry={"type": "Point", "coordinates": [900, 700]}, comment="Ki-67 hot spot")
    page = page_for(cast.path1)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"/cases/{annotated_case.pk}/viewer/?slide={annotated_case.slide.pk}&compare={ihc.pk}")
    page.wait_for_function("() => window.PathAlignAnnotations && PathAlignAnnotations.layers.length === 2"
                           " && PathAlignAnnotations.layers.every((l) => l.slide)")
    page.wait_for_function(READY)
    expect(page.locator("[data-ann-role=count]")).to_have_text("0")  # the main pane leads at first
    compare = page.locator("[data-pane=compare] .pa-osd").bounding_box()
    page.mouse.click(compare["x"] + compare["width"] / 2, compare["y"] + compare["height"] / 2)
    expect(page.locator("[data-ann-role=count]")).to_have_text("1")
    expect(page.locator("[data-pane=compare] .a9s-point")).to_have_count(1)
    expect(page.locator("[data-pane=main] .a9s-annotation")).to_have_count(0)
    page.locator("[data-ann-role=list-toggle]").click()
    expect(page.locator(".pa-ann-item")).to_contain_text("Ki-67 hot spot")
    main = page.locator("[data-pane=main] .pa-osd").bounding_box()
    page.mouse.click(main["x"] + main["width"] / 2, main["y"] + main["height"] / 2)
    expect(page.locator("[data-ann-role=count]")).to_have_text("0")

    for size in ({"width": 1440, "height": 900}, {"width": 1920, "height": 1080}):
        page.set_viewport_size(size)
        page.goto(f"/cases/{annotated_case.pk}/workspace/")
        page.wait_for_function(READY, timeout=20000)
        assert_controls_clickable(page)
