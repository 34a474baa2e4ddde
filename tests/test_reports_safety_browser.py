"""Issue #15 end to end in Chromium, on a two-part case (colon biopsy + stomach biopsy) with a real tiny
model: the retrieval draft for the colon part holds only colon diagnosis lines from colon cases (never the
lung case, never another patient's history, gross or names); sign-out with the empty stomach part is refused
with the part named; reviewing the classifications and writing part B lets it sign; the lab admin's later
edit of the pseudonym is refused; the PDF and FHIR show the signed snapshot and verify; an amendment turns
the FHIR status to "amended" and prints under an AMENDED banner first."""
from __future__ import annotations

import pytest
from django.urls import reverse

from tests.conftest import PASSWORD, wait_for
from tests.model_fixtures import prime_features, tiny_bundle_dir, tiny_model  # noqa: F401
from tests.test_reports_support import fake_slide, signed_report
from webapp.cases.models import Case
from webapp.jobs.models import Job
from webapp.jobs.runner import execute
from webapp.reports import snapshot
from webapp.reports.labelsets import ensure_default_label_sets
from webapp.reports.models import Report, ReportStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

COLON_ARCHIVE = ("CLINICAL HISTORY: 61F, PSN-7777, known BRCA1 carrier.\n\n"
                 "FINAL DIAGNOSIS:\nA. Colon, ascending, biopsy:\n- Tubular adenoma with low-grade dysplasia.\n"
                 "- Negative for high-grade dysplasia.\n\n"
                 "GROSS DESCRIPTION: Received in formalin labeled with the patient's name, 3 fragments.\n\n"
                 "COMMENT: Findings called to Dr. Okafor on 4 June 2025.")
LUNG_ARCHIVE = ("FINAL DIAGNOSIS:\nA. Lung, left upper lobe, wedge resection: Adenocarcinoma, acinar pattern.\n\n"
                "COMMENT: The tumor cells are positive for TTF-1.")


@pytest.fixture
def bundle(request):
    return request.getfixturevalue("tiny_model")


def archive_case(case_factory, user, bundle, site: str, text: str, seed: int) -> Case:
    case = case_factory(assigned_to=user, sites={"A": site})
    prime_features(fake_slide(case.parts.get()), bundle, seed=seed)
    signed_report(case, user, text=text)  # report_signed -> the embed job, run here as the worker would
    for job in Job.objects.filter(case=case, kind="embed_report"):
        execute(job.pk)
    return case


def test_two_part_case_safety_path(cast, case_factory, bundle, page_for):
    ensure_default_label_sets()
    archive_case(case_factory, cast.path2, bundle, "Colon, ascending", COLON_ARCHIVE, seed=1)
    archive_case(case_factory, cast.path2, bundle, "Lung, left upper lobe", LUNG_ARCHIVE, seed=2)
    case = case_factory(assigned_to=cast.path1, parts=("A", "B"), sites={"B": "Stomach, antrum"},
                        patient_pseudonym="PSN-AAAA")
    for seed, part in enumerate(case.parts.order_by("label"), start=3):
        prime_features(fake_slide(part), bundle, seed=seed)

    page = page_for(cast.path1)
    page.goto(reverse("report_workspace", args=[case.pk]))
    page.check("input[name=method][value=retrieval]")
    page.get_by_role("button", name="Draft with AI").click()
    job = wait_for(lambda: Job.objects.filter(case=case, kind="draft_report").first(), 15, message="a draft job")
    execute(job.pk)
    page.wait_for_selector("#draft-job[data-job-state=succeeded]", timeout=20000)
    report = Report.objects.get(case=case, status=ReportStatus.DRAFT)
    part_a = report.sections.get(part__label="A")
    part_b = report.sections.get(part__label="B")
    text_a = page.locator(f"#text-{part_a.pk}").input_value()
    assert text_a.startswith("A. Colon, sigmoid, Biopsy:") and "Tubular adenoma with low-grade dysplasia" in text_a
    for leaked in ("Lung", "Adenocarcinoma", "TTF-1", "PSN-7777", "61F", "BRCA1", "formalin", "Okafor", "2025"):
        assert leaked not in text_a, leaked
    assert page.locator(f"#text-{part_b.pk}").input_value() == ""
    assert "Part B: no signed-out stomach biopsy report" in page.locator("[data-role=not-drafted]").inner_text()
    evidence = page.locator(f"#section-{part_a.pk} .evidence").inner_text()
    assert "Another signed-out case" in evidence and "PSN-7777" not in evidence and "Lung" not in evidence
    page.screenshot(path="/tmp/safety-workspace-draft.png", full_page=True)

    # Sign-out with part B empty and the AI classifications unreviewed: refused, each problem named.
    page.fill("input[name=password]", PASSWORD)
    page.click("[data-role=sign]")
    page.wait_for_selector("text=Part B (Stomach, antrum) has no diagnosis.")
    assert page.get_by_text("is not reviewed").count() >= 1
    assert Report.objects.get(pk=report.pk).status == ReportStatus.DRAFT

    # Write part B, review every classification, sign.
    editor = page.locator(f"#text-{part_b.pk}")
    editor.fill("B. Stomach, antrum, Biopsy:\nChronic active gastritis.")
    editor.press("End")
    page.wait_for_selector(f"#save-status-{part_b.pk}.saved")
    pending = page.locator(".classification[data-decision=pending]")
    for _ in range(pending.count()):
        before = pending.count()
        pending.first.locator("[data-role=confirm]").click()
        page.wait_for_function("n => document.querySelectorAll('.classification[data-decision=pending]').length < n",
                               arg=before)
    assert pending.count() == 0
    page.fill("input[name=password]", PASSWORD)
    page.click("[data-role=sign]")
    page.wait_for_selector(".signed-report")
    original = Report.objects.get(pk=report.pk)
    assert original.status == ReportStatus.SIGNED and snapshot.verify(original).ok

    # The lab admin cannot re-attribute the signed report to another patient.
    admin = page_for(cast.admin)
    admin.goto(reverse("case_edit", args=[case.pk]))
    admin.fill("input[name=patient_pseudonym]", "PSN-BBBB")
    admin.get_by_role("button", name="Save").click()
    admin.wait_for_selector("text=its identifying fields are part of the signed record")
    assert Case.objects.get(pk=case.pk).patient_pseudonym == "PSN-AAAA"

    # PDF and FHIR: the signed snapshot, verified.
    fhir = page.request.get(reverse("case_fhir", args=[case.pk])).json()
    assert fhir["status"] == "final" and fhir["subject"]["identifier"]["value"] == "PSN-AAAA"
    assert fhir["performer"][0]["display"] == "Ana One"
    pdf = page.request.get(reverse("report_pdf", args=[case.pk]))
    assert pdf.status == 200 and pdf.body().startswith(b"%PDF")

    # An amendment: FHIR says "amended", the print shows the AMENDED report first.
    page.check("input[name=kind][value=amendment]")
    page.fill("textarea[name=reason]", "Deeper levels show high-grade dysplasia.")
    page.get_by_role("button", name="Start").click()
    amendment = wait_for(lambda: Report.objects.filter(case=case, kind="amendment").first(), 10)
    section = amendment.sections.get(part__label="A")
    editor = page.locator(f"#text-{section.pk}")
    editor.fill("A. Colon, sigmoid, Biopsy:\nTubular adenoma with high-grade dysplasia.")
    editor.press("End")
    page.wait_for_selector(f"#save-status-{section.pk}.saved")
    # The amendment carries the classifications over undecided: the pathologist reviews them again.
    assert pending.count() == 3  # every one was confirmed above
    for _ in range(pending.count()):
        before = pending.count()
        pending.first.locator("[data-role=confirm]").click()
        page.wait_for_function("n => document.querySelectorAll('.classification[data-decision=pending]').length < n",
                               arg=before)
    page.fill("input[name=password]", PASSWORD)
    page.click("[data-role=sign]")
    page.wait_for_selector(".signed-report[data-kind=amendment]")
    fhir = page.request.get(reverse("case_fhir", args=[case.pk])).json()
    assert fhir["status"] == "amended" and fhir["meta"]["versionId"] == "2"
    first = page.request.get(reverse("report_fhir", args=[original.pk])).json()
    assert first["status"] == "final" and first["meta"]["versionId"] == "1" and first["id"] == fhir["id"]
    page.goto(reverse("report_print", args=[case.pk]))
    blocks = page.locator("section.report")
    assert blocks.first.locator("[data-role=banner]").inner_text() == "AMENDED"
    assert "high-grade dysplasia" in blocks.first.inner_text()
    assert "superseded" in blocks.nth(1).inner_text() and "low-grade dysplasia" in blocks.nth(1).inner_text()
    page.screenshot(path="/tmp/safety-print-amended.png", full_page=True)
