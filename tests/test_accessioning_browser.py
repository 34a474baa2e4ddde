"""In a real browser: a lab admin logs in, accessions a case with a part, uploads a slide, sees its thumbnail."""
import re

import pytest
from playwright.sync_api import expect

from webapp.cases.models import Case
from webapp.slides.models import Slide

pytestmark = pytest.mark.browser


def test_lab_admin_accessions_case_and_uploads_slide(cast, page_for, good_slide, text_as_svs):
    page = page_for(cast.admin)
    expect(page).to_have_url(re.compile(r"/cases/$"))
    page.click("text=Accession a case")
    page.fill("input[name=accession_number]", "S26-00042")
    page.fill("input[name=patient_pseudonym]", "PSN-0042")
    page.fill("textarea[name=clinical_history]", "63-year-old with rectal bleeding.")
    page.select_option("select[name=priority]", "urgent")
    page.click("button:has-text('Save')")
    expect(page.locator("h1")).to_contain_text("S26-00042")

    # Add part A through the htmx form; the page refreshes with the new part.
    page.fill("#part-form input[name=site]", "Colon, sigmoid")
    page.fill("#part-form input[name=procedure]", "Biopsy")
    page.click("#part-form button[type=submit]")
    expect(page.locator("#part-A h2")).to_contain_text("Colon, sigmoid")

    # A text file posing as a slide is refused with a message, and nothing is stored.
    form = page.locator("#part-A form.upload-form")
    form.locator("input[type=file]").set_input_files(str(text_as_svs))
    form.locator("button[type=submit]").click()
    expect(form.locator(".upload-status")).to_contain_text("not a whole-slide image format")
    assert Slide.objects.count() == 0

    form.locator("input[type=file]").set_input_files(str(good_slide))
    form.locator("input[name=block_label]").fill("1")
    form.locator("button[type=submit]").click()
    thumbnail = page.locator("#part-A .slide-thumb img")
    expect(thumbnail).to_be_visible(timeout=30000)
    # The thumbnail really decoded in the browser (not a broken image).
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())
    slide = Slide.objects.get()
    assert slide.part.case == Case.objects.get(accession_number="S26-00042")
    assert slide.block_label == "1" and slide.width == 3072
