"""AI drafts with a real (tiny) model, run in-process: Q-Former decoder, retrieval, classifications,
text embeddings at sign-out, evidence filtered by access, and the worklist's triage order."""
from __future__ import annotations

import pytest
from django.urls import reverse

from tests.conftest import PASSWORD
from tests.model_fixtures import prime_features, tiny_bundle_dir, tiny_model  # noqa: F401
from tests.test_reports_support import drafted_report, fake_slide, signed_report, triage_classification
from webapp.jobs.models import Job, JobState
from webapp.jobs.runner import execute
from webapp.reports import services
from webapp.reports.drafting import method_options
from webapp.reports.labelsets import ensure_default_label_sets
from webapp.reports.models import AIDraft, Classification, ReportLocked, ReportTextEmbedding

pytestmark = pytest.mark.django_db


@pytest.fixture
def bundle(request):
    """The tiny model, registered and active (tests.model_fixtures.tiny_model)."""
    return request.getfixturevalue("tiny_model")


def case_with_slide(case_factory, user, bundle, seed=0):
    case = case_factory(assigned_to=user)
    slide = fake_slide(case.parts.get())
    prime_features(slide, bundle, seed=seed)
    return case


def draft(client, case, method):
    response = client.post(reverse("report_draft", args=[case.pk]), {"method": method}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200, response.content
    job = Job.objects.filter(case=case, kind="draft_report").latest("created_at")
    assert b"every 1s" in response.content  # the fragment polls the job
    execute(job.pk)
    job.refresh_from_db()
    return job


def test_qformer_draft_fills_the_section_and_classifies(cast, case_factory, client_for, bundle):
    ensure_default_label_sets()
    case = case_with_slide(case_factory, cast.path1, bundle)
    client = client_for(cast.path1)
    job = draft(client, case, "qformer")
    assert job.state == JobState.SUCCEEDED, job.error
    section = services.open_report(case).sections.get()
    ai = AIDraft.objects.get(section=section)
    assert ai.text and section.text == ai.text and ai.method == "qformer" and ai.bundle.key == "tiny-report@tiny-1"
    assert section.versions.get(number=section.version).source == "ai"
    assert ai.slides and len(ai.slides[0]["patches"]) == 5  # most-attended patches, for the heatmap
    classifications = list(Classification.objects.filter(section=section))
    assert len(classifications) == 3
    for c in classifications:
        assert sum(c.scores.values()) == pytest.approx(1, abs=1e-3)
        assert c.model_confidence == max(c.scores.values()) and c.decision == "pending"
    status = client.get(reverse("report_draft_status", args=[case.pk, job.pk]), HTTP_HX_REQUEST="true")
    assert status["HX-Refresh"] == "true"
    page = client.get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert "AI draft: Q-Former decoder" in page and "Triage" in page

    # The pathologist edits, then overrides a classification: who, bundle and confidence are stored.
    services.save_section(section, ai.text + " Edited.", section.version, cast.path1)
    triage = next(c for c in classifications if c.label_set.is_triage)
    other = next(label for label in triage.scores if label != triage.model_label)
    url = reverse("report_classification_decide", args=[section.report_id, triage.pk])
    assert client.post(url, {"label": other}, HTTP_HX_REQUEST="true").status_code == 200
    triage.refresh_from_db()
    assert triage.decision == "overridden" and triage.decided_by == cast.path1 and triage.decided_label == other
    assert triage.alert == (other == "Likely malignant")
    assert client.post(url, {"label": "not a label"}).status_code == 400
    assert services.edit_distance(ai.text, ai.text + " Edited.") > 0


def test_a_slide_far_larger_than_the_models_training_slides_flags_the_draft(cast, case_factory, client_for,
                                                                             bundle):
    """A model trained on small fields (the v1 demo bundle: at most 9 tissue patches a slide) reading a 10 mm
    slide: the draft says so, as unsafe until edited; a slide within range gets no such warning."""
    bundle.training = {"slides": 448, "patches_per_slide": {"min": 1, "mean": 5.3, "max": 9}}
    bundle.save(update_fields=["training"])
    case = case_factory(assigned_to=cast.path1)
    prime_features(fake_slide(case.parts.get()), bundle, n=600)
    client = client_for(cast.path1)
    assert draft(client, case, "qformer").state == JobState.SUCCEEDED
    ai = AIDraft.objects.get(section=services.open_report(case).sections.get())
    assert any("A-1 (600 tissue patches) is far larger than any this model (tiny-report@tiny-1) was trained on "
               "(at most 9" in w for w in ai.warnings), ai.warnings
    page = client.get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert "Unsafe AI draft: Slide A-1 (600 tissue patches)" in page

    small = case_factory(assigned_to=cast.path1)
    prime_features(fake_slide(small.parts.get()), bundle, n=30)  # within 4 x the largest training slide
    assert draft(client, small, "qformer").state == JobState.SUCCEEDED
    ai = AIDraft.objects.get(section=services.open_report(small).sections.get())
    assert not any("far larger" in w for w in ai.warnings)


def test_retrieval_draft_uses_the_closest_signed_report(
    cast, case_factory, client_for, bundle, django_capture_on_commit_callbacks
):
    earlier = case_with_slide(case_factory, cast.path1, bundle, seed=1)
    with django_capture_on_commit_callbacks(execute=True):
        signed_report(earlier, cast.path1, text=f"{earlier.accession_number}: tubular adenoma, low grade.")
    job = Job.objects.get(kind="embed_report", case=earlier)
    execute(job.pk)
    assert ReportTextEmbedding.objects.filter(section__report__case=earlier).count() == 1

    # dr_two's case: the evidence is dr_one's case, shown anonymised, without its accession number.
    case = case_with_slide(case_factory, cast.path2, bundle, seed=2)
    assert {o.value: o.available for o in method_options()} == {"qformer": True, "retrieval": True, "llm": False}
    client = client_for(cast.path2)
    job = draft(client, case, "retrieval")
    assert job.state == JobState.SUCCEEDED, job.error
    section = services.open_report(case).sections.get()
    # The closest report's diagnosis lines under this part's own header, without the other case's
    # accession number.
    assert section.text == "A. Colon, sigmoid, Biopsy:\n[id]: tubular adenoma, low grade."
    assert earlier.accession_number not in section.text
    evidence = AIDraft.objects.get(section=section).evidence
    assert evidence[0]["case"] == earlier.pk and "[id]" in evidence[0]["snippet"]
    assert "accession" not in evidence[0]
    page = client.get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert "Another signed-out case" in page and reverse("report_workspace", args=[earlier.pk]) not in page
    page = client_for(cast.admin).get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert reverse("report_workspace", args=[earlier.pk]) in page  # the lab admin may open it


def test_unavailable_method_is_refused_with_its_reason(cast, case_factory, client_for, bundle):
    case = case_with_slide(case_factory, cast.path1, bundle)
    options = {o.value: o for o in method_options()}
    assert not options["llm"].available and "bridge" in options["llm"].reason
    assert not options["retrieval"].available and "signed-out" in options["retrieval"].reason
    response = client_for(cast.path1).post(reverse("report_draft", args=[case.pk]), {"method": "llm"})
    assert response.status_code == 400 and b"bridge" in response.content
    page = client_for(cast.path1).get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert 'value="llm"\n      disabled' in page or 'value="llm" disabled' in page.replace("\n      ", " ")


def test_draft_job_fails_clearly_without_a_model(cast, case_factory):
    case = case_factory(assigned_to=cast.path1)
    report = services.start_report(case, cast.path1)
    from webapp.reports.drafting import queue_draft

    job = queue_draft(report, "qformer", cast.path1)
    with pytest.raises(Exception, match="No model bundle"):
        execute(job.pk)
    assert Job.objects.get(pk=job.pk).state == JobState.FAILED


def test_worklist_triage_order_filters_and_columns(cast, case_factory, client_for):
    from datetime import date, timedelta

    today = date.today()
    routine_old = case_factory(assigned_to=cast.path1, received_date=today - timedelta(days=9))
    routine_flagged = case_factory(assigned_to=cast.path1, received_date=today - timedelta(days=1))
    urgent = case_factory(assigned_to=cast.path1, priority="urgent", received_date=today)
    stat = case_factory(assigned_to=cast.path1, priority="stat", received_date=today)
    case_factory(assigned_to=cast.path2)  # not mine
    done = case_factory(assigned_to=cast.path1)
    signed_report(done, cast.path1)
    triage_classification(services.start_report(routine_flagged, cast.path1))
    client = client_for(cast.path1)
    page = client.get(reverse("worklist")).content.decode()
    order = [c.accession_number for c in (stat, urgent, routine_flagged, routine_old)]
    positions = [page.index(a) for a in order]
    assert positions == sorted(positions) and done.accession_number not in page
    assert "AI: Likely malignant" in page and "Draft" in page and "Not started" in page
    rows = client.get(reverse("worklist"), {"sort": "age", "show": "all"}, HTTP_HX_REQUEST="true").content.decode()
    assert rows.lstrip().startswith("<table") and done.accession_number in rows
    assert rows.index(routine_old.accession_number) < rows.index(stat.accession_number)
    flagged = client.get(reverse("worklist"), {"flagged": "on"}, HTTP_HX_REQUEST="true").content.decode()
    assert routine_flagged.accession_number in flagged and stat.accession_number not in flagged
    signed = client.get(reverse("worklist"), {"show": "signed"}, HTTP_HX_REQUEST="true").content.decode()
    assert done.accession_number in signed and "Signed out" in signed


def test_exports(cast, case_factory, client_for):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    case = case_factory(assigned_to=cast.path1, parts=("A", "B"))
    report = drafted_report(case, cast.path1)
    services.decide(triage_classification(report), "Likely malignant", cast.path1)  # reviewed: may sign
    report = services.sign(report, cast.path1).report
    with pytest.raises(ReportLocked):
        triage_classification(report)  # nothing is added to a signed report
    client = client_for(cast.path1)
    resource = client.get(reverse("report_fhir", args=[report.pk])).json()
    DiagnosticReport.model_validate(resource)
    assert resource["status"] == "final" and resource["subject"]["identifier"]["value"] == case.patient_pseudonym
    assert resource["performer"][0]["display"] == "Ana One" and resource["issued"]
    assert "Tubular adenoma" in resource["conclusion"] and len(resource["specimen"]) == 2
    assert resource["presentedForm"][0]["contentType"].startswith("text/plain")
    assert "conclusionCode" not in resource  # triage is a worklist aid: never a coded conclusion
    pdf = client.get(reverse("report_pdf", args=[case.pk]))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    html = client.get(reverse("report_print", args=[case.pk])).content.decode()
    assert "Electronically signed by Ana One" in html and "report-print.css" in html


def test_labelset_admin_page(cast, client_for):
    admin = client_for(cast.admin)
    assert client_for(cast.path1).get(reverse("labelset_list")).status_code == 403
    admin.post(reverse("labelset_list"), {"action": "defaults"})
    assert admin.get(reverse("labelset_list")).status_code == 200
    data = {"name": "Margin", "description": "", "active": "on", "order": 5,
            "labels-TOTAL_FORMS": 2, "labels-INITIAL_FORMS": 0,
            "labels-0-name": "Involved", "labels-0-prompts": "tumor at the margin\ninked margin involved",
            "labels-0-order": 0, "labels-1-name": "Clear", "labels-1-prompts": "margins free of tumor",
            "labels-1-order": 1}
    assert admin.post(reverse("labelset_create"), data).status_code == 302
    from webapp.reports.models import LabelSet

    margin = LabelSet.objects.get(name="Margin")
    assert margin.label_prompts() == {"Involved": ["tumor at the margin", "inked margin involved"],
                                      "Clear": ["margins free of tumor"]}


def test_wrong_password_never_signs_even_via_htmx(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = services.start_report(case, cast.path1)
    response = client_for(cast.path1).post(reverse("report_sign", args=[report.pk]), {"password": PASSWORD[:-1]},
                                           HTTP_HX_REQUEST="true")
    assert response.status_code == 303  # back to the workspace with the message, unsigned
    report.refresh_from_db()
    assert report.status == "draft"


def test_retrieved_text_drops_the_other_patients_history_and_signature():
    from webapp.reports.text import without_case_specifics

    other = ("DIAGNOSIS: A. Stomach, biopsy: chronic gastritis.\n\nClinical information: 36F, reflux\n"
             "symptoms not responding to PPI\n\nComment: H. pylori organisms are identified.\n"
             "Electronically signed out by Dr X, S26-00042")
    text = without_case_specifics(other)
    assert "chronic gastritis" in text and "H. pylori" in text
    assert "36F" not in text and "PPI" not in text and "signed out" not in text and "S26-00042" not in text


@pytest.mark.parametrize(("text", "benign", "malignant"), [
    ("A. Colon, sigmoid, biopsy:\nColonic mucosa with no diagnostic abnormality.", True, False),
    ("Prostatic tissue, negative for carcinoma.", True, False),
    ("Benign lung tissue.", True, False),
    ("Adenocarcinoma, colorectal, poorly differentiated (G3). Focus up to 0.8 mm.", False, True),
    ("Squamous carcinoma of lung; margins negative.", False, True),
    ("Tubular adenoma with high-grade dysplasia.", False, False),
    ("Carcinoma in a background of benign mucosa.", False, True),
])
def test_what_a_draft_says_about_malignancy(text, benign, malignant):
    from webapp.reports.text import names_malignancy, reads_benign

    assert reads_benign(text) is benign and names_malignancy(text) is malignant


def test_a_draft_that_contradicts_the_triage_classification_is_flagged():
    from webapp.reports.drafting import classification_warnings
    from webapp.reports.models import LabelSet

    ensure_default_label_sets()
    sets = list(LabelSet.objects.prefetch_related("labels"))
    triage = next(s for s in sets if s.is_triage)
    organ = next(s for s in sets if not s.is_triage)
    malignant = {triage.pk: {"Likely malignant": 0.91, "Likely benign": 0.09}, organ.pk: {"Colon": 1.0}}
    benign = {triage.pk: {"Likely malignant": 0.12, "Likely benign": 0.88}}
    normal_text = "A. Colon, sigmoid, biopsy:\nColonic mucosa with no diagnostic abnormality."
    cancer_text = "A. Colon, sigmoid, biopsy:\nAdenocarcinoma, colorectal, moderately differentiated (G2)."
    [warning] = classification_warnings(normal_text, sets, malignant)
    assert "reads as benign" in warning and "Likely malignant (91%)" in warning
    [warning] = classification_warnings(cancer_text, sets, benign)
    assert "names a malignancy" in warning and "Likely benign (88%)" in warning
    assert classification_warnings(cancer_text, sets, malignant) == []  # they agree
    assert classification_warnings(normal_text, sets, benign) == []
    unsure = {triage.pk: {"Likely malignant": 0.45, "Likely benign": 0.55}}
    assert classification_warnings(cancer_text, sets, unsure) == [
        "The draft names a malignancy, but the model's triage classification of this part is Likely benign (55%). "
        "Read the slides before using the text."]
    assert classification_warnings(normal_text, sets, {}) == []  # no triage scores: nothing to compare
