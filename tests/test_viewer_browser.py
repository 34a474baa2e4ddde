"""In Chromium: the case viewer loads tiles, zooms, measures, switches slides, syncs two panes, shows a
heatmap overlay, and gives an outsider nothing."""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.test_workspace_layout_browser import COMPARE_CONTROLS, CONTROLS, assert_clickable
from webapp.slides import overlays
from webapp.slides.ingest import ingest_slide

pytestmark = pytest.mark.browser

VIEWER = "document.querySelector('[data-pa-viewer]').pathAlignViewer"

# Share of the main pane's canvas covered by drawn, non-white pixels, and the colour at its centre.
CANVAS_STATS = """
() => {
  const canvas = $V.panes.main.osd.drawer.canvas;
  const ctx = canvas.getContext('2d');
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 0; i < data.length; i += 16) {
    if (data[i + 3] > 0 && (data[i] < 235 || data[i + 1] < 235 || data[i + 2] < 235)) drawn++;
  }
  const c = ctx.getImageData(Math.floor(canvas.width / 2), Math.floor(canvas.height / 2), 1, 1).data;
  return {drawn: drawn / (data.length / 16), centre: [c[0], c[1], c[2], c[3]]};
}
""".replace("$V", VIEWER)

FULLY_LOADED = """
(pane) => {
  const v = $V; const p = v && v.panes[pane];
  const item = p && p.osd.world.getItemAt(0);
  return !!(item && item.getFullyLoaded() && p.osd.world.needsDraw() === false);
}
""".replace("$V", VIEWER)

# True once the centre pixel differs clearly from `before` (a redraw is asynchronous).
CHANGED = "(before) => { const c = (" + CANVAS_STATS.strip() + ")().centre; " + \
    "return Math.abs(c[0] - before[0]) + Math.abs(c[1] - before[1]) + Math.abs(c[2] - before[2]) > 30; }"

VIEW_STATE = """
(pane) => {
  const p = $V.panes[pane]; const item = p.osd.world.getItemAt(0);
  const c = item.viewportToImageCoordinates(p.osd.viewport.getCenter(true));
  const d = item.source.dimensions;
  return {zoom: p.imageZoom(), cx: c.x / d.x, cy: c.y / d.y, rotation: p.osd.viewport.getRotation(true),
          slide: p.slideId};
}
""".replace("$V", VIEWER)


@pytest.fixture
def viewer_case(cast, case_factory, good_slide):
    case = case_factory(assigned_to=cast.path1)
    part = case.parts.first()
    case.he = ingest_slide(good_slide, part=part, original_filename="a.svs", block_label="1", move=False)
    case.ihc = ingest_slide(good_slide, part=part, original_filename="b.svs", stain="Ki-67", block_label="2",
                            move=False)
    return case


@pytest.fixture
def heatmap():
    def provider(slide):
        if slide.stain != "H&E":
            return None
        coords = [[x, y] for y in range(0, 2048, 256) for x in range(0, 3072, 256)]
        return {"patch_size": 256, "coords": coords, "values": [1.0] * (len(coords) - 1) + [0.0], "label": "Test heat"}

    overlays.register_overlay("test-heat", provider)
    yield
    overlays.unregister_overlay("test-heat")


def shot(page, name: str) -> None:
    """Screenshots for a human look when PATHALIGN_SCREENSHOTS names a folder."""
    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    if folder:
        page.screenshot(path=f"{folder}/viewer-{name}.png")


def wait_loaded(page, pane: str = "main") -> None:
    page.wait_for_function(FULLY_LOADED, arg=pane, timeout=20000)


def close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-9)


def test_viewer_end_to_end(cast, page_for, viewer_case, heatmap):
    page = page_for(cast.path1)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    tile_statuses: list[int] = []
    page.on("response", lambda r: tile_statuses.append(r.status) if "/dzi/slide_files/" in r.url else None)

    # Opening from the case page's thumbnail.
    page.goto(f"/cases/{viewer_case.pk}/")
    page.click(f"a[href$='?slide={viewer_case.he.pk}']")
    page.wait_for_function(f"() => {VIEWER} && {VIEWER}.element.dataset.state === 'ready'")
    wait_loaded(page)
    assert tile_statuses and set(tile_statuses) == {200}
    stats = page.evaluate(CANVAS_STATS)
    assert stats["drawn"] > 0.2, stats  # tissue is on the canvas, not a blank pane
    expect(page.locator("[data-role=meta]")).to_contain_text("0.5000 µm/px")
    expect(page.locator("[data-role=meta]")).to_contain_text("3,072 × 2,048")
    expect(page.locator("[data-associated=label] img")).to_be_visible()
    expect(page.locator("[data-pane=main] .pa-scalebar-label")).to_contain_text("µm")
    shot(page, "opened")

    # Heatmap: on, colours the slide; off, the slide looks as before.
    before = stats["centre"]
    expect(page.locator("[data-role=overlay-select] option")).to_have_text(["Test heat"])
    page.check("[data-role=overlay-toggle]")
    page.wait_for_function(f"() => {VIEWER}.overlayState().loaded")
    wait_loaded(page)
    page.wait_for_function(CHANGED, arg=before, timeout=10000)
    shot(page, "heatmap")
    on = page.evaluate(CANVAS_STATS)["centre"]
    assert sum(abs(a - b) for a, b in zip(on[:3], before[:3], strict=True)) > 30, (before, on)
    page.fill("[data-role=overlay-opacity]", "100")
    assert page.evaluate(f"{VIEWER}.overlayState().opacity") == 1
    page.uncheck("[data-role=overlay-toggle]")
    assert page.evaluate(f"{VIEWER}.overlayState().visible") is False
    page.wait_for_timeout(300)
    off = page.evaluate(CANVAS_STATS)["centre"]
    assert sum(abs(a - b) for a, b in zip(off[:3], before[:3], strict=True)) < 15, (before, off)

    # Zoom: 20x button (objective 20x, 0.5 µm/px: one image pixel per screen pixel), then the 5x key.
    page.click("button[data-mag='20']")
    page.wait_for_function(f"() => Math.abs({VIEWER}.magnification() - 20) < 0.5")
    wait_loaded(page)
    assert page.evaluate(CANVAS_STATS)["drawn"] > 0.2
    expect(page.locator("[data-pane=main] .pa-mag-readout")).to_have_text("20×")
    page.locator("[data-pane=main] .pa-osd").click()
    page.keyboard.press("2")
    page.wait_for_function(f"() => Math.abs({VIEWER}.magnification() - 5) < 0.2")
    wait_loaded(page)  # the 5x view's tiles are in before the ruler's no-pan check counts responses

    # Ruler: drag 200 screen pixels at 5x = 200 / 0.25 image pixels x 0.5 µm = 400 µm. Nothing is sent.
    page.click("button[data-action=ruler]")
    box = page.locator("[data-pane=main] .pa-osd").bounding_box()
    x, y = box["x"] + box["width"] / 2 - 100, box["y"] + box["height"] / 2
    requests_before = len(tile_statuses)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 100, y, steps=4)
    page.mouse.move(x + 200, y, steps=4)
    page.mouse.up()
    measured = page.evaluate(f"{VIEWER}.measurement()")
    assert measured == pytest.approx(400, rel=0.03)
    expect(page.locator("[data-pane=main] .pa-ruler-label")).to_contain_text("µm")
    shot(page, "ruler")
    assert len(tile_statuses) == requests_before  # the view did not pan while measuring
    page.keyboard.press("Escape")
    assert page.evaluate(f"{VIEWER}.measurement()") is None

    # Switching slides from the strip.
    page.click(f".pa-thumb[data-slide-id='{viewer_case.ihc.pk}']")
    page.wait_for_function(f"() => {VIEWER}.panes.main.slideId === '{viewer_case.ihc.pk}'")
    wait_loaded(page)
    expect(page.locator("[data-meta-pane=main] h3")).to_contain_text("Ki-67")
    assert f"slide={viewer_case.ihc.pk}" in page.url
    expect(page.locator(f".pa-thumb[data-slide-id='{viewer_case.ihc.pk}']")).to_have_attribute("aria-current", "true")

    # Side by side: H&E on the right follows the IHC on the left, and the other way round.
    page.click(f".pa-compare-btn[data-slide-id='{viewer_case.he.pk}']")
    expect(page.locator("[data-pane=compare]")).to_be_visible()
    page.wait_for_function(f"() => {VIEWER}.panes.compare && {VIEWER}.panes.compare.slideId === '{viewer_case.he.pk}'")
    wait_loaded(page, "compare")
    assert f"compare={viewer_case.he.pk}" in page.url
    main_box = page.locator("[data-pane=main] .pa-osd").bounding_box()
    page.mouse.move(main_box["x"] + main_box["width"] * 0.3, main_box["y"] + main_box["height"] * 0.4)
    page.mouse.wheel(0, -400)
    page.mouse.down()
    page.mouse.move(main_box["x"] + main_box["width"] * 0.5, main_box["y"] + main_box["height"] * 0.6, steps=5)
    page.mouse.up()
    page.wait_for_timeout(1200)  # let the spring animations settle
    left, right = page.evaluate(VIEW_STATE, "main"), page.evaluate(VIEW_STATE, "compare")
    assert left["slide"] != right["slide"]
    assert close(left["zoom"], right["zoom"], 0.02) and abs(left["cx"] - right["cx"]) < 0.01
    assert abs(left["cy"] - right["cy"]) < 0.01, (left, right)
    zoom_before = left["zoom"]
    compare_box = page.locator("[data-pane=compare] .pa-osd").bounding_box()
    page.mouse.move(compare_box["x"] + compare_box["width"] / 2, compare_box["y"] + compare_box["height"] / 2)
    page.mouse.wheel(0, 300)
    page.wait_for_timeout(1200)
    left, right = page.evaluate(VIEW_STATE, "main"), page.evaluate(VIEW_STATE, "compare")
    assert left["zoom"] < zoom_before and close(left["zoom"], right["zoom"], 0.02)
    page.click("button[data-action=rotate]")
    page.wait_for_timeout(1000)
    assert page.evaluate(VIEW_STATE, "main")["rotation"] % 360 == page.evaluate(VIEW_STATE, "compare")["rotation"] % 360
    wait_loaded(page, "compare")
    shot(page, "side-by-side")

    csp = [p for p in problems if "Content Security Policy" in p or "page error" in p]
    assert not csp, csp
    assert set(tile_statuses) <= {200, 304}


def test_outsider_gets_no_tiles(cast, page_for, viewer_case):
    page = page_for(cast.outsider)
    response = page.goto(f"/cases/{viewer_case.pk}/viewer/?slide={viewer_case.he.pk}")
    assert response.status == 404
    for url in (f"/slides/{viewer_case.he.pk}/dzi/slide.dzi",
                f"/slides/{viewer_case.he.pk}/dzi/slide_files/12/0_0.jpeg",
                f"/slides/{viewer_case.he.pk}/iiif/full/max/0/default.jpg"):
        assert page.request.get(url).status == 404


def test_case_viewer_grid_from_the_url(cast, page_for, viewer_case, good_slide, case_factory):
    """?more= opens the third pane of a grid; the URL follows the panes; a slide of another case is a 404."""
    third = ingest_slide(good_slide, part=viewer_case.parts.first(), original_filename="c.svs", stain="CK7",
                         block_label="3", move=False)
    page = page_for(cast.path1)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"/cases/{viewer_case.pk}/viewer/?slide={viewer_case.he.pk}&compare={viewer_case.ihc.pk}&more={third.pk}")
    page.wait_for_function(f"() => {VIEWER} && {VIEWER}.paneNames().length === 3")
    wait_loaded(page, "third")
    assert page.evaluate(f"{VIEWER}.panes.third.slideId") == str(third.pk)
    # The viewer fills the window: the strip ends on screen, below the panes, and every control takes a click.
    strip = page.locator(".pa-strip").bounding_box()
    assert strip["y"] + strip["height"] <= 900
    assert_clickable(page, CONTROLS + ", " + COMPARE_CONTROLS, at_least=20)
    page.click(".pa-pane[data-pane=third] .pa-pane-close")
    page.wait_for_function("() => !window.location.search.includes('more=')")
    assert f"compare={viewer_case.ihc.pk}" in page.url
    other = case_factory(assigned_to=cast.path1)
    foreign = ingest_slide(good_slide, part=other.parts.first(), original_filename="d.svs", move=False)
    response = page.goto(f"/cases/{viewer_case.pk}/viewer/?slide={viewer_case.he.pk}&more={foreign.pk}")
    assert response.status == 404
