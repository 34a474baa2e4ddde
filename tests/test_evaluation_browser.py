"""In Chromium: an evaluator rates with the keyboard (4, n), the next item appears, progress advances,
a low rating asks for the kind of error, and after a reload the queue resumes at the first unrated item."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.test_evaluation_studies import make_study
from webapp.evaluation import studies
from webapp.evaluation.models import Rating
from webapp.slides.ingest import ingest_slide

pytestmark = pytest.mark.browser


@pytest.fixture
def study(cast, case_factory, good_slide):
    study = make_study(case_factory, [cast.evaluator], parts=2, per_item=1)
    for item in study.items.all():
        if not item.part.slides.exists():
            ingest_slide(good_slide, part=item.part, original_filename="x.svs", block_label="1", move=False)
        study.items.filter(pk=item.pk).update(slide=item.part.slides.get())
    return study


def test_evaluator_rates_with_the_keyboard_and_resumes(cast, study, page_for):
    page = page_for(cast.evaluator)
    page.goto(f"/evaluation/studies/{study.pk}/continue/")
    expect(page.get_by_test_id("position")).to_have_text("1")
    expect(page.locator("[data-pa-viewer]")).to_be_visible()  # the de-identified slide is shown
    expect(page.get_by_test_id("progress")).to_have_text("0 of 4 rated")
    first_text = page.get_by_test_id("text").inner_text()

    page.keyboard.press("4")
    expect(page.locator("input[name=score][value='4']")).to_be_checked()
    page.keyboard.press("n")
    expect(page.get_by_test_id("position")).to_have_text("2")
    expect(page.get_by_test_id("progress")).to_have_text("1 of 4 rated")
    assert page.get_by_test_id("text").inner_text() != first_text

    # A low rating needs the kind of error before it is saved.
    page.keyboard.press("2")
    page.keyboard.press("n")
    expect(page.locator(".ev-client-error")).to_be_visible()
    expect(page.get_by_test_id("position")).to_have_text("2")
    page.keyboard.press("m")  # missed finding
    expect(page.locator("input[name=error_kind][value=missed_finding]")).to_be_checked()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("position")).to_have_text("3")
    expect(page.get_by_test_id("progress")).to_have_text("2 of 4 rated")

    # Resume: after a reload and from the queue, the first unrated item comes back.
    page.reload()
    expect(page.get_by_test_id("position")).to_have_text("3")
    page.goto(f"/evaluation/studies/{study.pk}/queue/")
    page.get_by_role("link", name="Continue").click()
    expect(page).to_have_url(re.compile(rf"/evaluation/studies/{study.pk}/rate/3/$"))
    expect(page.get_by_role("complementary", name="Keyboard shortcuts")).to_contain_text("save and next")

    # Keys typed in the slide viewer belong to the viewer (5 = 40x there); on the text they rate again.
    page.locator("[data-pa-viewer] .pa-osd").first.click()
    page.keyboard.press("5")
    expect(page.locator("input[name=score][value='5']")).not_to_be_checked()
    page.get_by_test_id("text").click()
    page.keyboard.press("5")
    expect(page.locator("input[name=score][value='5']")).to_be_checked()

    ratings = {a.position: (a.rating.score, a.rating.error_kind)
               for a in studies.queue(study, cast.evaluator).filter(rating__isnull=False).select_related("rating")}
    assert ratings == {1: (4, ""), 2: (2, "missed_finding")}
    assert Rating.objects.count() == 2


def test_admin_sees_a_live_preview_of_the_selection(cast, case_factory, page_for):
    case_factory(accession_number="S26-00201", status="signed_out")
    case_factory(accession_number="S26-00202")
    page = page_for(cast.admin)
    page.goto("/evaluation/studies/new/")
    expect(page.locator("#ev-preview")).to_contain_text("1 part in 1 case")  # signed-out only by default
    page.uncheck("input[name=signed_out_only]")
    expect(page.locator("#ev-preview")).to_contain_text("2 parts in 2 cases")
    page.fill("input[name=site]", "stomach")
    expect(page.locator("#ev-preview")).to_contain_text("0 parts")
