"""In Chromium, at the screen sizes pathologists use: the report workspace's viewer owns the screen and
every one of its controls takes a real mouse click (nothing covers it); a thumbnail opens its slide, side
by side splits the width, a grid of four slides stays synchronised, brightness and gamma change the
pixels on screen, the heatmap shows its legend, stays off the glass, thresholds and jumps to its top
regions, and the report panel moves and stays where it was put."""
from __future__ import annotations

import io
import math
import os

import pytest
from PIL import Image, ImageStat
from playwright.sync_api import expect

from webapp.slides import overlays
from webapp.slides.ingest import ingest_slide

pytestmark = pytest.mark.browser

VIEWER = "document.querySelector('[data-pa-viewer]').pathAlignViewer"

# For each element matching `selector` (visible ones): is it on screen, and is the element at its centre
# the control itself or inside it (a label's text, an image in a button)?
HIT_TEST = """
(selector) => Array.from(document.querySelectorAll(selector)).filter((el) => {
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden';
}).map((el) => {
  const r = el.getBoundingClientRect();
  const x = r.left + r.width / 2; const y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  return {control: el.outerHTML.slice(0, 90), onScreen: x >= 0 && y >= 0 && x < innerWidth && y < innerHeight,
          ok: !!hit && (hit === el || el.contains(hit)), hit: hit ? hit.outerHTML.slice(0, 90) : null};
})
"""

FULLY_LOADED = """
(pane) => {
  const v = $V; const p = v && v.panes[pane];
  const item = p && p.osd.world.getItemAt(0);
  return !!(item && item.getFullyLoaded() && p.osd.world.needsDraw() === false);
}
""".replace("$V", VIEWER)

VIEW_STATE = """
(pane) => {
  const p = $V.panes[pane]; const item = p.osd.world.getItemAt(0);
  const c = item.viewportToImageCoordinates(p.osd.viewport.getCenter(true));
  const d = item.source.dimensions;
  return {zoom: p.imageZoom(), cx: c.x / d.x, cy: c.y / d.y, rotation: p.osd.viewport.getRotation(true),
          slide: p.slideId};
}
""".replace("$V", VIEWER)

# The main canvas's pixel over level-0 image point (x, y) (the drawer canvas is one pixel per CSS pixel here).
PIXEL_AT = """
([x, y]) => {
  const p = $V.panes.main; const item = p.osd.world.getItemAt(0);
  const b = p.meta.bounds; const pt = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x - b.x, y - b.y));
  const c = p.osd.drawer.canvas; const ratio = c.width / c.clientWidth;
  return Array.from(c.getContext('2d').getImageData(Math.round(pt.x * ratio), Math.round(pt.y * ratio), 1, 1).data);
}
""".replace("$V", VIEWER)

# Every control of the workspace viewer that is always there (the others are checked when they appear).
CONTROLS = ", ".join([
    ".pa-toolbar [data-action=home]", ".pa-toolbar [data-action=mag]", ".pa-toolbar [data-action=ruler]",
    ".pa-toolbar [data-action=rotate]", ".pa-toolbar [data-action=fullscreen]", ".pa-toolbar [data-action=info]",
    "[data-role=adjust] > summary", "[data-role=overlay-select]", "[data-role=overlay-toggle]",
    "[data-role=overlay-opacity]", "[data-role=overlay-threshold]", ".pa-help > summary",
    ".pa-strip .pa-thumb", ".pa-strip .pa-compare-btn", ".pa-strip .pa-grid-btn", "[data-ws-layout]",
])
COMPARE_CONTROLS = "[data-role=sync], [data-action=compare-off], .pa-pane:not([hidden]) .pa-pane-close"

SIZES = [(1440, 900), (1920, 1080), (1366, 768)]


@pytest.fixture
def four_slide_case(cast, case_factory, good_slide):
    case = case_factory(assigned_to=cast.path1)
    part = case.parts.first()
    case.slides_made = [
        ingest_slide(good_slide, part=part, original_filename=f"{i}.svs", stain=stain, block_label=str(i + 1),
                     move=False)
        for i, stain in enumerate(["H&E", "Ki-67", "CK7", "PAS"])
    ]
    return case


@pytest.fixture
def centre_heat():
    """A heatmap over the whole slide, glass included: three hot spots on the tissue over a low background."""
    spots = [(1100, 800, 1.0), (2000, 1250, 0.8), (1450, 1500, 0.6)]

    def provider(slide):
        coords = [[x, y] for y in range(0, 2048, 128) for x in range(0, 3072, 128)]
        values = [round(0.05 + max(h * math.exp(-((x + 64 - sx) ** 2 + (y + 64 - sy) ** 2) / (2 * 220**2))
                                   for sx, sy, h in spots), 4) for x, y in coords]
        return {"patch_size": 128, "coords": coords, "values": values, "label": "Attention (demo)"}

    overlays.register_overlay("centre-heat", provider)
    yield
    overlays.unregister_overlay("centre-heat")


def shot(page, name: str, **kwargs) -> None:
    """Screenshots for a human look when PATHALIGN_SCREENSHOTS names a folder."""
    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    if folder:
        page.screenshot(path=f"{folder}/{name}.png", **kwargs)


def wait_loaded(page, pane: str = "main") -> None:
    page.wait_for_function(FULLY_LOADED, arg=pane, timeout=20000)


def assert_clickable(page, selector: str, at_least: int) -> None:
    results = page.evaluate(HIT_TEST, selector)
    assert len(results) >= at_least, (selector, results)
    covered = [r for r in results if not (r["ok"] and r["onScreen"])]
    assert not covered, covered


def pane_brightness(page, pane: str = "main") -> float:
    png = page.locator(f"[data-pane={pane}] .openseadragon-canvas > canvas").first.screenshot()
    return sum(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("RGB")).mean) / 3


def close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-9)


@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_workspace_viewer_controls_take_real_clicks(cast, page_for, four_slide_case, centre_heat, width, height):
    he, ihc, ck7, pas = four_slide_case.slides_made
    page = page_for(cast.path1)
    page.set_viewport_size({"width": width, "height": height})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    opened: list[dict] = []
    page.expose_function("recordOpened", lambda detail: opened.append(detail))
    page.add_init_script("document.addEventListener('pathalign:slide-opened', (e) => window.recordOpened("
                         "{pane: e.detail.pane, slide: e.detail.slide, hasOsd: !!(e.detail.osd && e.detail.osd.viewport),"
                         " inPane: !!(e.detail.element && e.detail.element.dataset.pane === e.detail.pane)}))")
    page.goto(f"/cases/{four_slide_case.pk}/workspace/")
    page.wait_for_function(f"() => {VIEWER} && {VIEWER}.element.dataset.state === 'ready'")
    wait_loaded(page)

    # The viewer has the larger share of the screen and reaches the bottom of the window, strip included.
    viewer_box = page.locator("[data-pa-viewer]").bounding_box()
    report_box = page.locator("#report-panel").bounding_box()
    assert viewer_box["width"] > report_box["width"] and viewer_box["width"] > 0.55 * width, (viewer_box, report_box)
    assert viewer_box["y"] + viewer_box["height"] <= height and viewer_box["y"] + viewer_box["height"] > height - 40
    strip = page.locator(".pa-strip").bounding_box()
    pane = page.locator("[data-pane=main]").bounding_box()
    assert pane["y"] + pane["height"] <= strip["y"], (pane, strip)  # the canvas ends above the strip
    # The slide information is folded away in the workspace at first.
    expect(page.locator("[data-role=meta]")).to_be_hidden()
    assert_clickable(page, CONTROLS, at_least=20)

    # A thumbnail opens its slide (a two-slide case could not switch with a mouse before).
    page.mouse.click(*center(page, f".pa-thumb[data-slide-id='{ihc.pk}']"))
    page.wait_for_function(f"() => {VIEWER}.panes.main.slideId === '{ihc.pk}'")
    wait_loaded(page)
    expect(page.locator(f".pa-thumb[data-slide-id='{ihc.pk}']")).to_have_attribute("aria-current", "true")

    # Slide info unfolds and folds again.
    page.mouse.click(*center(page, ".pa-toolbar [data-action=info]"))
    expect(page.locator("[data-role=meta]")).to_contain_text("Ki-67")
    page.mouse.click(*center(page, ".pa-toolbar [data-action=info]"))
    expect(page.locator("[data-role=meta]")).to_be_hidden()

    # Side by side: the two panes split the viewer's width.
    page.mouse.click(*center(page, f".pa-compare-btn[data-slide-id='{he.pk}']"))
    page.wait_for_function(f"() => {VIEWER}.panes.compare && {VIEWER}.panes.compare.slideId === '{he.pk}'")
    wait_loaded(page, "compare")
    panes_box = page.locator(".pa-panes").bounding_box()
    for name in ("main", "compare"):
        box = page.locator(f"[data-pane={name}]").bounding_box()
        assert box["width"] > 0.45 * panes_box["width"], (name, box, panes_box)
    assert_clickable(page, CONTROLS + ", " + COMPARE_CONTROLS, at_least=23)

    # A grid of four: + Grid on the other two slides; all four panes follow the one the user moves.
    for slide in (ck7, pas):
        page.mouse.click(*center(page, f".pa-grid-btn[data-slide-id='{slide.pk}']"))
    page.wait_for_function(f"() => {VIEWER}.paneNames().length === 4")
    for name in ("third", "fourth"):
        wait_loaded(page, name)
    assert page.evaluate(f"{VIEWER}.paneNames()") == ["main", "compare", "third", "fourth"]
    boxes = [page.locator(f"[data-pane={name}]").bounding_box() for name in ("main", "compare", "third", "fourth")]
    assert close(boxes[0]["y"], boxes[1]["y"], 0.01) and boxes[2]["y"] > boxes[0]["y"] + boxes[0]["height"] - 1
    assert all(b["width"] > 0.45 * panes_box["width"] and b["height"] > 120 for b in boxes), boxes
    assert_clickable(page, CONTROLS + ", " + COMPARE_CONTROLS, at_least=25)
    third = page.locator("[data-pane=third] .pa-osd").bounding_box()
    page.mouse.move(third["x"] + third["width"] * 0.5, third["y"] + third["height"] * 0.5)
    page.mouse.wheel(0, -300)
    page.mouse.down()
    page.mouse.move(third["x"] + third["width"] * 0.3, third["y"] + third["height"] * 0.3, steps=5)
    page.mouse.up()
    page.wait_for_timeout(1200)
    states = {name: page.evaluate(VIEW_STATE, name) for name in ("main", "compare", "third", "fourth")}
    lead = states["third"]
    assert len({s["slide"] for s in states.values()}) == 4
    for name, state in states.items():
        assert close(state["zoom"], lead["zoom"], 0.02) and abs(state["cx"] - lead["cx"]) < 0.01, (name, states)
        assert abs(state["cy"] - lead["cy"]) < 0.01, (name, states)
    # Every pane told the add-ons it opened a slide, with its OpenSeadragon viewer and element.
    seen = {(e["pane"], e["slide"]) for e in opened if e["hasOsd"] and e["inPane"]}
    assert {("third", str(ck7.pk)), ("fourth", str(pas.pk)), ("compare", str(he.pk)), ("main", str(ihc.pk))} <= seen
    shot(page, f"workspace-grid-{width}x{height}")
    # A pane's close button closes it; "Single slide" goes back to one.
    page.mouse.click(*center(page, "[data-pane=fourth] .pa-pane-close"))
    page.wait_for_function(f"() => {VIEWER}.paneNames().length === 3")
    page.mouse.click(*center(page, "[data-action=compare-off]"))
    page.wait_for_function(f"() => {VIEWER}.paneNames().length === 1")

    # The report panel moves below the slides and hides; the choice survives a reload.
    page.mouse.click(*center(page, "[data-ws-layout=hidden]"))
    expect(page.locator("#report-panel")).to_be_hidden()
    wide = page.locator("[data-pa-viewer]").bounding_box()
    assert wide["width"] > 0.9 * (width - 48), wide
    page.mouse.click(*center(page, "[data-ws-layout=bottom]"))
    expect(page.locator("#report-panel")).to_be_visible()
    page.reload()
    page.wait_for_function(f"() => {VIEWER} && {VIEWER}.element.dataset.state === 'ready'")
    assert page.locator(".workspace").get_attribute("data-report") == "bottom"
    report_top = page.locator("#report-panel").bounding_box()["y"]
    viewer_box = page.locator("[data-pa-viewer]").bounding_box()
    assert report_top >= viewer_box["y"] + viewer_box["height"] - 1
    assert_clickable(page, CONTROLS, at_least=20)
    page.mouse.click(*center(page, "[data-ws-layout=right]"))
    assert page.locator(".workspace").get_attribute("data-report") == "right"

    csp = [p for p in problems if "Content Security Policy" in p or "page error" in p]
    assert not csp, csp


def center(page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).first.bounding_box()
    assert box, selector
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


@pytest.mark.parametrize(("width", "height"), SIZES[:2], ids=[f"{w}x{h}" for w, h in SIZES[:2]])
def test_adjustments_heatmap_and_digital_zoom(cast, page_for, four_slide_case, centre_heat, width, height):
    he = four_slide_case.slides_made[0]
    page = page_for(cast.path1)
    page.set_viewport_size({"width": width, "height": height})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.goto(f"/cases/{four_slide_case.pk}/workspace/?slide={he.pk}")
    page.wait_for_function(f"() => {VIEWER} && {VIEWER}.element.dataset.state === 'ready'")
    wait_loaded(page)

    # Brightness, contrast and gamma: the pixels on screen change, and x puts them back.
    before = pane_brightness(page)
    page.mouse.click(*center(page, "[data-role=adjust] > summary"))
    slider = page.locator("[data-adjust=brightness]")
    expect(slider).to_be_visible()
    assert_clickable(page, "[data-adjust], [data-action=adjust-reset]", at_least=4)
    slider.fill("160")
    expect(page.locator("[data-adjust-out=brightness]")).to_have_text("160%")
    brighter = pane_brightness(page)
    assert brighter > before + 8, (before, brighter)
    page.locator("[data-adjust=gamma]").fill("2")
    assert page.evaluate(f"{VIEWER}.adjustments('main')") == {"brightness": 1.6, "contrast": 1, "gamma": 2}
    page.locator("[data-adjust=brightness]").fill("100")
    gamma_only = pane_brightness(page)
    assert gamma_only > before + 5, (before, gamma_only)  # gamma 2 lifts the mid-tones
    page.mouse.click(*center(page, "[data-role=adjust] > summary"))  # close the popover
    osd = page.locator("[data-pane=main] .pa-osd").bounding_box()
    page.mouse.click(osd["x"] + 20, osd["y"] + osd["height"] - 60)  # focus the viewer
    page.keyboard.press("x")
    page.wait_for_timeout(200)
    assert page.evaluate(f"{VIEWER}.adjustments('main')") == {"brightness": 1, "contrast": 1, "gamma": 1}
    assert abs(pane_brightness(page) - before) < 1.5

    # Heatmap: the legend with its scale; colour on tissue, none on the glass around it.
    glass_before = page.evaluate(PIXEL_AT, [60, 60])
    tissue_before = page.evaluate(PIXEL_AT, [1100, 800])
    expect(page.locator("[data-role=overlay-select] option")).to_have_text(["Attention (demo)"])
    page.mouse.click(*center(page, "[data-role=overlay-toggle]"))
    page.wait_for_function(f"() => {VIEWER}.overlayState().loaded")
    wait_loaded(page)
    state = page.evaluate(f"{VIEWER}.overlayState()")
    assert state["clipped"] and state["regions"] == 5, state
    legend = page.locator("[data-pane=main] .pa-legend")
    expect(legend).to_be_visible()
    expect(legend).to_contain_text("Attention (demo)")
    expect(legend.locator(".pa-legend-ticks span")).to_have_count(3)
    expect(legend).to_contain_text("tissue only")
    page.wait_for_timeout(300)
    tissue_on = page.evaluate(PIXEL_AT, [1100, 800])
    glass_on = page.evaluate(PIXEL_AT, [60, 60])
    assert sum(abs(a - b) for a, b in zip(tissue_on[:3], tissue_before[:3], strict=True)) > 30
    assert sum(abs(a - b) for a, b in zip(glass_on[:3], glass_before[:3], strict=True)) < 6, (glass_before, glass_on)
    page.mouse.click(osd["x"] + 5, osd["y"] + osd["height"] - 5)
    shot(page, f"heatmap-legend-{width}x{height}")

    # Threshold: fewer cells coloured, the cut marked on the legend.
    shown_all = state["shown"]
    threshold = page.locator("[data-role=overlay-threshold]")
    box = threshold.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    page.wait_for_function(f"() => {VIEWER}.overlayState().threshold > 0.3")
    page.wait_for_function(f"(n) => {VIEWER}.overlayState().shown < n", arg=shown_all)
    expect(legend.locator(".pa-legend-cut")).to_be_visible()
    expect(legend).to_contain_text("showing ≥")

    # Regions of interest: listed, a click jumps there, g goes on to the next.
    page.mouse.click(*center(page, "[data-role=roi] > summary"))
    buttons = page.locator("[data-role=roi-list] button")
    expect(buttons).to_have_count(5)
    assert_clickable(page, "[data-role=roi-list] button", at_least=5)
    buttons.first.click()
    page.wait_for_timeout(900)
    first = page.evaluate(VIEW_STATE, "main")
    region = page.evaluate(f"{VIEWER}.regions()[0]")
    assert abs(first["cx"] * 3072 - (region["x"] + region["width"] / 2)) < 200, (first, region)
    assert 0.5 < first["zoom"] <= 1.01  # zoomed in on the 384 px region, not beyond the scan's resolution
    expect(page.locator("[data-pane=main] .pa-roi-box")).to_be_visible()
    page.mouse.click(osd["x"] + 5, osd["y"] + osd["height"] - 5)
    page.keyboard.press("g")
    page.wait_for_timeout(900)
    second = page.evaluate(VIEW_STATE, "main")
    assert abs(second["cx"] - first["cx"]) + abs(second["cy"] - first["cy"]) > 0.03, (first, second)

    # Digital zoom: 40x on a 20x scan says so, on the button and on the pane.
    assert "pa-digital" in (page.locator("button[data-mag='40']").get_attribute("class") or "")
    assert "pa-digital" not in (page.locator("button[data-mag='20']").get_attribute("class") or "")
    page.mouse.click(*center(page, "button[data-mag='40']"))
    page.wait_for_function(f"() => Math.abs({VIEWER}.magnification() - 40) < 1")
    readout = page.locator("[data-pane=main] .pa-mag-readout")
    expect(readout).to_have_text("40× digital")
    expect(readout).to_have_class("pa-mag-readout pa-digital")
    page.mouse.click(*center(page, "button[data-mag='20']"))
    page.wait_for_function(f"() => Math.abs({VIEWER}.magnification() - 20) < 0.5")
    expect(readout).to_have_text("20×")
    assert not problems, problems


def test_documentation_screenshots(cast, page_for, four_slide_case, centre_heat):
    """docs/screenshots/workspace.png and heatmap-legend.png at 1440x900 (written into the folder
    PATHALIGN_SCREENSHOTS names, to be copied to docs/screenshots/; the test checks the pages either way)."""
    he, ihc = four_slide_case.slides_made[:2]
    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    page = page_for(cast.path1)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"/cases/{four_slide_case.pk}/workspace/?slide={he.pk}")
    page.get_by_role("button", name="Start a blank report").click()  # the report panel as it is at work
    page.wait_for_selector("textarea.report-text")
    page.locator("textarea.report-text").first.fill(
        "Colon, sigmoid, biopsy: tubular adenoma with low-grade dysplasia. Ki-67 confined to the lower crypts.")
    page.wait_for_function(f"() => {VIEWER} && {VIEWER}.element.dataset.state === 'ready'")
    page.evaluate(f"{VIEWER}.compare('{ihc.pk}')")
    page.wait_for_function(f"() => {VIEWER}.paneNames().length === 2")
    wait_loaded(page)
    wait_loaded(page, "compare")
    page.evaluate(f"{VIEWER}.zoomToMagnification(5)")
    page.wait_for_timeout(800)
    wait_loaded(page)
    wait_loaded(page, "compare")
    if folder:
        page.screenshot(path=os.path.join(folder, "workspace.png"))
    page.evaluate(f"{VIEWER}.compare(null)")
    page.evaluate(f"{VIEWER}.addOverlay('centre-heat')")
    page.wait_for_function(f"() => {VIEWER}.overlayState().loaded")
    page.evaluate(f"{VIEWER}.setOverlayThreshold(0.25)")
    page.evaluate(f"{VIEWER}.viewer.panes.main.osd.viewport.goHome(true)")
    page.wait_for_timeout(500)
    wait_loaded(page)
    expect(page.locator("[data-pane=main] .pa-legend")).to_be_visible()
    if folder:
        page.locator(".ws-slides").screenshot(path=os.path.join(folder, "heatmap-legend.png"))
