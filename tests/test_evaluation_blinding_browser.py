"""In Chromium at 1440x900: a rater's page shows the rater instruction, never the study's name or
description; no overlay control can be used and the overlay is not served to the rater even when asked for
directly; a study that allows overlays offers them."""
from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from tests.test_evaluation_blinding import INSTRUCTION, SECRET_DESCRIPTION, SECRET_NAME, blind_study, heatmap  # noqa: F401
from webapp.evaluation.models import Study

pytestmark = pytest.mark.browser

LOADED = """() => { const el = document.querySelector('[data-pa-viewer]'); const v = el && el.pathAlignViewer;
  const item = v && v.panes.main.osd.world.getItemAt(0);
  return !!(item && item.getFullyLoaded()); }"""


def test_rater_page_is_blind_to_study_and_model(cast, blind_study, heatmap, page_for):  # noqa: F811
    page = page_for(cast.evaluator)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"/evaluation/studies/{blind_study.pk}/continue/")
    expect(page.get_by_test_id("position")).to_have_text("1")
    expect(page.get_by_test_id("instruction")).to_contain_text(INSTRUCTION)
    expect(page.get_by_test_id("instruction")).to_be_visible()
    body = page.locator("body").inner_text() + page.title()
    for secret in (SECRET_NAME, SECRET_DESCRIPTION):
        assert secret not in body
    assert SECRET_NAME not in page.content() and SECRET_DESCRIPTION not in page.content()
    page.wait_for_function(LOADED, timeout=20000)  # the slide itself is shown

    # No overlay control a rater could use: not shown, and with nothing to choose.
    controls = page.locator("[data-role=overlay-controls]")
    expect(controls).to_be_hidden()
    expect(page.locator("[data-role=overlay-select] option")).to_have_count(0)
    expect(page.locator("[data-role=overlay-toggle]")).to_be_disabled()
    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    if folder:
        page.screenshot(path=f"{folder}/rating.png")
    page.locator("[data-pa-viewer] .pa-osd").first.click()
    page.keyboard.press("o")  # the viewer's overlay key does nothing either
    assert page.evaluate("() => document.querySelector('[data-pa-viewer]').pathAlignViewer"
                         ".panes.main.overlay.name") is None

    # Asked for directly with the rater's own session, the server serves no overlay.
    slide_id = page.locator("[data-pa-viewer]").get_attribute("data-slide")
    listing = page.request.get(f"/slides/{slide_id}/overlays/")
    assert listing.status == 200 and listing.json() == {"overlays": []}
    assert page.request.get(f"/slides/{slide_id}/overlays/{heatmap}.json").status == 404

    # A study that allows overlays offers its raters the control and the layer.
    Study.objects.filter(pk=blind_study.pk).update(show_overlays=True)
    page.reload()
    expect(page.locator("[data-role=overlay-controls]")).to_be_visible()
    expect(page.locator("[data-role=overlay-select] option")).to_have_count(1)
    assert page.request.get(f"/slides/{slide_id}/overlays/{heatmap}.json").status == 200


def test_study_builder_previews_pairs_and_warns_live(cast, case_factory, page_for):
    from tests.model_fixtures import bundle_row
    from webapp.evaluation import sources
    from webapp.reports.models import AIDraft, Report, ReportSection
    from webapp.reports.services import sign

    for index in range(3):
        case = case_factory(assigned_to=cast.path1, accession_number=f"S26-0910{index}")
        report = Report.objects.create(case=case, created_by=cast.path1)
        section = ReportSection.objects.create(report=report, part=case.parts.get(), text=f"Adenoma {index}.")
        if index < 2:
            AIDraft.objects.create(section=section, method="retrieval", bundle=bundle_row("demo@2"),
                                   text=f"Polyp {index}.", job_id=index)
        sign(report, cast.path1, no_slides_reason="no slide files in this test")
    page = page_for(cast.admin)
    page.goto("/evaluation/studies/new/")
    expect(page.locator("input[name=paired]")).to_be_checked()  # paired by default
    page.check(f"input[name=sources][value='{sources.SIGNED}']")
    page.check("input[name=sources][value='ai:retrieval:demo@2']")
    expect(page.get_by_test_id("plan")).to_contain_text("Signed-out report (control): 2 items", timeout=20000)
    expect(page.get_by_test_id("plan")).to_contain_text("1 part left out")
    page.uncheck("input[name=paired]")  # 3 control texts against 2 AI texts
    expect(page.locator("#ev-preview")).to_contain_text("The arms are unbalanced")


def test_rater_sees_the_shared_annotation_layer_read_only_with_slide_info_folded(cast, blind_study, page_for):  # noqa: F811
    """A study that shows raters the shared layer: the rater's viewer draws it, lists it as by "pathologist"
    without comments, offers no tool, import or export; the slide information starts folded."""
    from tests.test_evaluation_blinding import PRIVATE_COMMENT, SHARED_COMMENT, annotate

    Study.objects.filter(pk=blind_study.pk).update(show_annotations=True)
    assignment = blind_study.assignments.filter(evaluator=cast.evaluator).order_by("position").first()
    slide = assignment.item.slide
    annotate(slide, cast.path1, "shared", SHARED_COMMENT)
    annotate(slide, cast.path1, "personal", PRIVATE_COMMENT)
    page = page_for(cast.evaluator)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"/evaluation/studies/{blind_study.pk}/rate/{assignment.position}/")
    page.wait_for_function(LOADED, timeout=20000)
    panel = page.locator("[data-pa-annotations]")
    expect(panel).to_have_attribute("data-state", "ready")

    # The slide information starts folded: the slide takes the viewer's width.
    viewer = page.locator("[data-pa-viewer]")
    expect(viewer).to_have_class(re.compile(r"\bpa-info-folded\b"))
    expect(page.locator("[data-action=info]")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("[data-pa-viewer] .pa-meta")).to_be_hidden()

    # Read-only: no drawing tool, no import or export, nothing to edit.
    for selector in ("[data-ann-tool]", "[data-ann-role=import]", "[data-ann-role=export]",
                     "[data-ann-role=layer]", "[data-ann-role=delete]", "[data-ann-show=personal]"):
        expect(page.locator(selector)).to_have_count(0)
    # The shared annotation is drawn on the slide; the personal one is not.
    expect(page.locator(".a9s-annotationlayer .a9s-annotation")).to_have_count(1)
    expect(panel.locator("[data-ann-role=count]")).to_have_text("1")
    panel.locator("[data-ann-role=list-toggle]").click()
    entries = panel.locator(".pa-ann-items .pa-ann-item")
    expect(entries).to_have_count(1)
    expect(entries.first).to_contain_text("pathologist")
    entries.first.click()  # jumps to it and shows what it is, without edit controls
    form = panel.locator("[data-ann-role=form]")
    expect(form).to_be_visible()
    expect(panel.locator("[data-ann-role=form-title]")).to_have_text("Rectangle by pathologist")
    expect(form.locator("select[name=label]")).to_be_disabled()
    expect(form.locator("[type=submit]")).to_have_count(0)
    text = panel.inner_text() + page.content()
    for secret in ("dr_one", "Ana One", SHARED_COMMENT, PRIVATE_COMMENT):
        assert secret not in text, secret
    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    page.screenshot(path=f"{folder}/rating-annotations.png" if folder else "/tmp/studyann-rating.png")
    # The rater's own session cannot write, whatever the page offers.
    token = page.evaluate("() => JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken']")
    refused = page.request.post(f"/slides/{slide.pk}/annotations/", headers={"X-CSRFToken": token},
                                data={"kind": "point", "geometry": {"type": "Point", "coordinates": [5, 5]},
                                      "layer": "shared"})
    assert refused.status == 403
