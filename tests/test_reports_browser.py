"""The whole reporting path in Chromium: worklist -> workspace -> draft with AI (a real tiny model; the job
runs in-process) -> edit (autosave) -> confirm a classification -> sign out (a wrong password refused) ->
read-only -> amendment with a reason -> signed."""
from __future__ import annotations

import re

import pytest

from tests.conftest import PASSWORD, wait_for
from tests.model_fixtures import prime_features, tiny_bundle_dir, tiny_model  # noqa: F401
from tests.test_reports_support import add_slide
from webapp.cases.models import CaseStatus
from webapp.jobs.models import Job
from webapp.jobs.runner import execute
from webapp.reports.labelsets import ensure_default_label_sets
from webapp.reports.models import Report, ReportStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def bundle(request):
    return request.getfixturevalue("tiny_model")


def test_draft_edit_classify_sign_amend(cast, case_factory, good_slide, bundle, page_for):
    ensure_default_label_sets()
    case = case_factory(assigned_to=cast.path1, priority="urgent", clinical_history="Polyp at 25 cm.")
    slide = add_slide(case.parts.get(), good_slide, user=cast.admin)
    prime_features(slide, bundle)
    page = page_for(cast.path1)

    page.goto("/worklist/")
    row = page.locator(f"tr[data-accession='{case.accession_number}']")
    assert "Not started" in row.inner_text()
    row.get_by_role("link", name=case.accession_number).click()
    page.wait_for_url(f"**/cases/{case.pk}/workspace/")

    # Draft with AI (the Q-Former decoder is preselected; the LLM option is disabled with its reason).
    assert page.locator("input[name=method][value=llm]").is_disabled()
    page.get_by_role("button", name="Draft with AI").click()
    job = wait_for(lambda: Job.objects.filter(case=case, kind="draft_report").first(), 15, message="a draft job")
    page.wait_for_selector("#draft-job[data-job-state=queued], #draft-job[data-job-state=running]")
    execute(job.pk)  # what the GPU worker would do
    page.wait_for_selector("#draft-job[data-job-state=succeeded]", timeout=20000)  # after the HX-Refresh reload
    report = Report.objects.get(case=case)
    section = report.sections.get()
    textarea = page.locator(f"#text-{section.pk}")
    ai_text = textarea.input_value()
    assert ai_text and ai_text == section.ai_drafts.get().text
    assert page.get_by_text("Similar signed-out cases").count() == 0  # none signed yet
    assert page.locator(".classification").count() == 3
    # The evidence on the slide: the draft made the slide's embedding, and the viewer shows its attention.
    page.wait_for_selector("[data-role=overlay-select] option[value=attention]", state="attached")
    page.wait_for_function(
        "() => { const v = document.querySelector('[data-pa-viewer]').pathAlignViewer;"
        " const s = v && v.overlayState(); return s && s.name === 'attention' && s.loaded; }"
    )

    # Edit in place: autosave after a pause in typing.
    textarea.fill("")
    textarea.type("Tubular adenoma with low-grade dysplasia.", delay=5)
    page.wait_for_selector(f"#save-status-{section.pk}.saved")
    section.refresh_from_db()
    assert section.text == "Tubular adenoma with low-grade dysplasia." and section.version >= 2

    # Confirm the model's triage label.
    triage = page.locator(".classification", has_text="Triage")
    triage.locator("[data-role=confirm]").click()
    page.wait_for_selector(".classification.decision-confirmed")
    assert "Confirmed" in page.locator(".classification.decision-confirmed").inner_text()

    # Sign-out is refused while another AI classification is unreviewed, naming it.
    page.fill("input[name=password]", PASSWORD)
    page.click("[data-role=sign]")
    page.wait_for_selector("text=is not reviewed")
    assert "Organ" in page.locator(".messages, [role=alert], body").first.inner_text()
    assert Report.objects.get(pk=report.pk).status == ReportStatus.DRAFT
    # The pathologist dismisses the two others (not reported).
    for name in ("Organ", "Diagnosis category"):
        page.locator(".classification", has_text=name).locator("[data-role=dismiss]").click()
        page.wait_for_selector(f".classification.decision-dismissed:has-text('{name}')")

    # Sign out: the wrong password is refused, the right one signs.
    page.fill("input[name=password]", "not-my-password")
    page.click("[data-role=sign]")
    page.wait_for_selector("text=Wrong password")
    assert Report.objects.get(pk=report.pk).status == ReportStatus.DRAFT
    page.fill("input[name=password]", PASSWORD)
    page.click("[data-role=sign]")
    page.wait_for_selector(".signed-report")
    assert Report.objects.get(pk=report.pk).status == ReportStatus.SIGNED
    # Read-only now: no editor, the signed text shown, the choice of addendum or amendment offered.
    assert page.locator("textarea.report-text").count() == 0
    assert "Tubular adenoma with low-grade dysplasia." in page.locator("[data-role=signed-text]").inner_text()
    assert page.get_by_text("Signed out", exact=True).count() >= 1

    # Amendment, with its reason, edited and signed in turn.
    page.check("input[name=kind][value=amendment]")
    page.fill("textarea[name=reason]", "Deeper levels show invasive carcinoma.")
    page.get_by_role("button", name="Start").click()
    amendment = wait_for(lambda: Report.objects.filter(case=case, kind="amendment").first(), 10)
    new_section = amendment.sections.get()
    editor = page.locator(f"#text-{new_section.pk}")
    assert editor.input_value() == "Tubular adenoma with low-grade dysplasia."
    editor.fill("Invasive adenocarcinoma arising in a tubular adenoma.")
    editor.press("End")
    page.wait_for_selector(f"#save-status-{new_section.pk}.saved")
    # The triage label that was reported comes back undecided: an amendment reviews it again.
    page.locator(".classification[data-decision=pending] [data-role=confirm]").click()
    page.wait_for_selector(".classification.decision-confirmed")
    page.fill("input[name=password]", PASSWORD)
    page.click("[data-role=sign]")
    page.wait_for_selector(".signed-report[data-kind=amendment]")
    case.refresh_from_db()
    assert case.status == CaseStatus.AMENDED
    text = page.locator("#report-panel").inner_text()
    assert "Deeper levels show invasive carcinoma." in text and "superseded by an amendment" in text
    assert re.search(r"Amended", page.locator("[data-role=case-status]").inner_text())
