"""Clinical safety of drafts and of the signed record (issue #15): de-identification, retrieval from the
same specimen family, sign-out gates, the frozen snapshot and its verification, identity locks, the
read-only admin, FHIR versions and Provenance, triage before a case is opened, uncertain picks."""
from __future__ import annotations

import base64
import hashlib

import numpy as np
import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from inference.synthetic.reports import write_report
from tests.conftest import PASSWORD
from tests.model_fixtures import prime_features, tiny_bundle_dir, tiny_model  # noqa: F401
from tests.test_reports_support import drafted_report, fake_slide, signed_report, triage_classification
from webapp import embedded_db
from webapp.audit.models import AuditEvent
from webapp.cases.deid import deidentify, staff_names
from webapp.cases.models import Case, IdentityLocked, Part
from webapp.reports import export, services, snapshot
from webapp.reports.labelsets import ensure_default_label_sets
from webapp.reports.models import Classification, LabelSet, Report, ReportSection
from webapp.reports.text import diagnosis_lines, with_own_header

pytestmark = pytest.mark.django_db

# --- de-identification -------------------------------------------------------------------------------
HOSTILE = [
    # (text, identifiers that must be gone)
    ("Clinical history: 61F, PSN-7777, known BRCA1 carrier. Signed out by Dr Ben Two",
     ["PSN-7777", "Ben Two"]),
    ("Findings called to Dr. Okafor on 4 June 2025 at 415-555-1234.", ["Okafor", "4 June 2025", "555-1234"]),
    ("Seen on 03/04/2025, again 2024-11-02 and on March 5, 2026; prior 7.8.24.",
     ["03/04/2025", "2024-11-02", "March 5, 2026", "7.8.24"]),
    ("MRN 00123456; medical record number: AB12345; ID: 77-1234-5; S26-00042 and H25-123456.",
     ["00123456", "AB12345", "77-1234-5", "S26-00042", "H25-123456"]),
    ("Patient is a 93-year-old man, e-mail jane.doe@hospital.org, see https://emr.example.org/p/1",
     ["93-year-old", "jane.doe@hospital.org", "emr.example.org"]),
    ("Electronically signed by Ana One, MD, FRCPath\nVerified by: Prof. Maria Rossi", ["Ana One", "Maria Rossi"]),
    ("Discussed with Mrs Jane Whitfield and Ms. A. Patel (ward 4).", ["Whitfield", "Patel"]),
    ("Reviewed with ana one and BEN TWO at the tumour board.", ["ana one", "BEN TWO"]),
]


@pytest.mark.parametrize(("text", "gone"), HOSTILE)
def test_deidentify_removes_hostile_identifiers(text, gone):
    cleaned = deidentify(text, ["Ana One", "Ben Two", "Ana", "One", "Ben", "Two"])
    for identifier in gone:
        assert identifier.lower() not in cleaned.lower(), (identifier, cleaned)


def test_deidentify_keeps_the_diagnosis():
    text = "Tubular adenoma with low-grade dysplasia, 0.6 cm. Negative for high-grade dysplasia. Ki-67 30%."
    assert deidentify(text, staff_names()) == text


def test_diagnosis_lines_of_every_house_style():
    """Only final-diagnosis lines, never the history, gross, microscopic or comment, for every template."""
    from inference.synthetic.catalog import DIAGNOSES

    rng = np.random.default_rng(3)
    for index in range(60):
        dx = DIAGNOSES[index % len(DIAGNOSES)]
        case = {"diagnosis": dx.key, "grade_index": 0 if dx.grades else -1, "findings": {}, "organ": dx.organ,
                "site": "sigmoid", "procedure": "biopsy", "part": "C", "age": 61, "sex": "F", "case_id": index,
                "n_fragments": 2}
        text = write_report(case, rng)
        lines = diagnosis_lines(text.report)
        assert text.final_diagnosis.split(";")[0].strip().rstrip(".").lower() in lines.lower(), text.report
        assert text.clinical_history not in lines and "Received in formalin" not in lines
        assert not lines.lstrip().startswith("C.")  # the other case's part header is gone


def test_a_generated_draft_states_its_own_part():
    part = Part(label="C", site="Lung, right upper lobe", procedure="Wedge resection")
    text = with_own_header("A. Lung, left lower lobe, core biopsy:\nAdenocarcinoma, acinar.", part)
    assert text == "C. Lung, right upper lobe, Wedge resection:\nAdenocarcinoma, acinar."


# --- sign-out gates -----------------------------------------------------------------------------------
def test_sign_out_names_what_is_missing(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1, parts=("A", "B"), sites={"B": "Stomach, antrum"})
    report = services.start_report(case, cast.path1)
    part_a = report.sections.get(part__label="A")
    services.save_section(part_a, "Tubular adenoma.", part_a.version, cast.path1)
    classification = triage_classification(report)
    with pytest.raises(services.SignoutRefused) as refused:
        services.sign(report, cast.path1)
    problems = " ".join(refused.value.problems)
    assert "Part B (Stomach, antrum) has no diagnosis." in problems
    assert "Triage" in problems and "not reviewed" in problems
    assert "no slides" in problems
    part_b = report.sections.get(part__label="B")
    services.save_section(part_b, "Chronic gastritis.", part_b.version, cast.path1)
    services.dismiss(classification, cast.path1)
    # Through the page: each problem is shown, nothing is signed, the refusal is audited.
    client = client_for(cast.path1)
    data = {"password": PASSWORD, **{f"section_version_{s.pk}": s.version for s in report.sections.all()}}
    page = client.post(reverse("report_sign", args=[report.pk]), data, follow=True).content.decode()
    assert "no slides" in page and Report.objects.get(pk=report.pk).status == "draft"
    assert AuditEvent.objects.filter(action="report.sign_refused", details__reason="sign-out checks").exists()
    data["no_slides_reason"] = "Consultation on outside report only."
    assert client.post(reverse("report_sign", args=[report.pk]), data).status_code == 302
    signed = Report.objects.get(pk=report.pk)
    assert signed.status == "signed" and signed.snapshot["report"]["no_slides_reason"].startswith("Consultation")
    assert signed.snapshot["classifications"] == []  # dismissed and triage: neither is reported


# --- the signed snapshot --------------------------------------------------------------------------------
def test_the_signed_record_is_frozen_and_identity_locked(cast, case_factory, client_for):
    cast.path1.credentials = "MD, FRCPath"
    cast.path1.save()
    case = case_factory(assigned_to=cast.path1, patient_pseudonym="PSN-AAAA", parts=("A",))
    report = drafted_report(case, cast.path1)
    services.decide(triage_classification(report), "Likely benign", cast.path1)
    report = services.sign(report, cast.path1).report
    assert snapshot.verify(report).ok
    assert report.snapshot["case"]["patient_pseudonym"] == "PSN-AAAA"
    assert report.snapshot["signature"]["printed_name"] == "Ana One"
    assert report.snapshot["signature"]["credentials"] == "MD, FRCPath"
    assert "Ana One, MD, FRCPath" in export.signature_line(report)
    assert report.snapshot_hash == hashlib.sha256(snapshot.canonical(report.snapshot)).hexdigest()

    # The lab admin's edits of identifying fields are refused: in the model, the page and the database.
    case = Case.objects.get(pk=case.pk)
    case.patient_pseudonym = "PSN-BBBB"
    with pytest.raises(IdentityLocked):
        case.save()
    admin = client_for(cast.admin)
    response = admin.post(reverse("case_edit", args=[case.pk]), {
        "accession_number": case.accession_number, "patient_pseudonym": "PSN-BBBB", "priority": "routine",
        "received_date": case.received_date.isoformat(), "clinical_history": ""})
    assert response.status_code == 409 and b"amendment" in response.content
    part = case.parts.get()
    with pytest.raises(DatabaseError, match="only through an amendment"), transaction.atomic():
        Part.objects.filter(pk=part.pk).update(site="Lung")
    with pytest.raises(DatabaseError, match="only through an amendment"), transaction.atomic():
        Case.objects.filter(pk=case.pk).update(patient_pseudonym="PSN-BBBB")
    # The signer renames themself: what was signed still says who signed, and verifies.
    cast.path1.first_name = "Renamed"
    cast.path1.save()
    resource = client_for(cast.path1).get(reverse("report_fhir", args=[report.pk])).json()
    assert resource["performer"][0]["display"] == "Ana One"
    assert resource["subject"]["identifier"]["value"] == "PSN-AAAA"
    printed = client_for(cast.path1).get(reverse("report_print", args=[case.pk])).content.decode()
    assert "Ana One, MD, FRCPath" in printed and "Renamed" not in printed  # print and PDF: the snapshot too
    # A correction goes through an amendment: while one is open the pseudonym may change, and the
    # amendment's snapshot carries the new one; the original's snapshot keeps the old.
    services.start_followup(case, "amendment", cast.path1, reason="Wrong patient pseudonym on accession.")
    Case.objects.filter(pk=case.pk).update(patient_pseudonym="PSN-BBBB")
    amendment = services.open_report(case)
    carried = Classification.objects.get(section__report=amendment)
    assert carried.decision == "pending"  # reviewed again for the amendment
    services.decide(carried, "Likely benign", cast.path1)
    amended = services.sign(amendment, cast.path1).report
    assert amended.snapshot["case"]["patient_pseudonym"] == "PSN-BBBB"
    assert Report.objects.get(pk=report.pk).snapshot["case"]["patient_pseudonym"] == "PSN-AAAA"


@pytest.mark.django_db(transaction=True)
def test_tampering_planted_by_raw_sql_is_detected_on_every_read(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    report = services.sign(drafted_report(case, cast.path1), cast.path1).report
    client = client_for(cast.path1)
    assert client.get(reverse("report_pdf", args=[case.pk])).status_code == 200
    # Somebody with the owner's rights switches the guard off and rewrites the signed text.
    url = embedded_db.url(connection.settings_dict["NAME"], "pathalign_owner")
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("ALTER TABLE reports_reportsection DISABLE TRIGGER reports_section_guard")
        owner.execute("ALTER TABLE reports_reportsection DISABLE TRIGGER reports_section_version")
        try:
            owner.execute("UPDATE reports_reportsection SET text = 'Benign.' WHERE report_id = %s", [report.pk])
        finally:
            owner.execute("ALTER TABLE reports_reportsection ENABLE TRIGGER reports_section_guard")
            owner.execute("ALTER TABLE reports_reportsection ENABLE TRIGGER reports_section_version")
    result = snapshot.verify(Report.objects.get(pk=report.pk))
    assert not result.ok and "differ from the text that was signed" in " ".join(result.problems)
    page = client.get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert 'data-role="integrity-failure"' in page
    for name, args in (("report_pdf", [case.pk]), ("report_fhir", [report.pk]), ("case_fhir", [case.pk]),
                       ("report_version_pdf", [report.pk])):
        response = client.get(reverse(name, args=args))
        assert response.status_code == 409 and b"integrity check" in response.content, name
    assert "Integrity check failed" in client.get(reverse("report_print", args=[case.pk])).content.decode()
    assert AuditEvent.objects.filter(action="report.integrity_failure", object_id=str(report.pk)).count() >= 5


def test_a_section_text_cannot_change_without_a_new_version(cast, case_factory):
    report = drafted_report(case_factory(assigned_to=cast.path1), cast.path1)
    section = report.sections.get()
    with pytest.raises(DatabaseError, match="new version"), transaction.atomic():
        ReportSection.objects.filter(pk=section.pk).update(text="Silently changed.")
    assert ReportSection.objects.get(pk=section.pk).text == section.text


def test_the_admin_shows_reports_read_only_and_audits_access(cast, case_factory, client_for, django_user_model):
    root = django_user_model.objects.create_superuser("root", password=PASSWORD, role="lab_admin")
    report = drafted_report(case_factory(assigned_to=cast.path1), cast.path1)
    section = report.sections.get()
    client = client_for(root)
    change = reverse("admin:reports_reportsection_change", args=[section.pk])
    page = client.get(change)
    assert page.status_code == 200 and b'name="text"' not in page.content  # shown, not editable
    response = client.post(change, {"text": "Edited in the admin.", "heading": section.heading})
    assert response.status_code == 403
    assert ReportSection.objects.get(pk=section.pk).text == section.text
    assert client.get(reverse("admin:reports_report_change", args=[report.pk])).status_code == 200
    before = AuditEvent.objects.count()
    events = list(AuditEvent.objects.values_list("pk", flat=True))
    client.post(reverse("admin:audit_auditevent_changelist"), {"action": "delete_selected", "_selected_action": events})
    assert AuditEvent.objects.count() > before  # nothing deleted, and the attempt itself is logged
    assert AuditEvent.objects.filter(action="admin.view").count() >= 2
    assert AuditEvent.objects.filter(action="admin.request", details__status=403).exists()
    # A change the admin does allow (a label set) is audited with what changed.
    ensure_default_label_sets()
    label_set = LabelSet.objects.get(name="Organ")
    url = reverse("admin:reports_labelset_change", args=[label_set.pk])
    form = {"name": "Organ", "description": "changed", "order": 0, "confidence_threshold": 0.7, "active": "on",
            "labels-TOTAL_FORMS": 0, "labels-INITIAL_FORMS": 0, "labels-MIN_NUM_FORMS": 0,
            "labels-MAX_NUM_FORMS": 1000}
    assert client.post(url, form).status_code == 302
    assert AuditEvent.objects.filter(action="admin.change", object_id=str(label_set.pk)).exists()


# --- amendments, addenda and FHIR ------------------------------------------------------------------------
def test_fhir_versions_provenance_and_carried_addenda(cast, case_factory, client_for, settings):
    settings.PUBLIC_BASE_URL = "https://pathology.example.org"
    case = case_factory(assigned_to=cast.path1)
    original = signed_report(case, cast.path1, text="Tubular adenoma.")
    addendum = services.start_followup(case, "addendum", cast.path1)
    section = addendum.sections.get()
    services.save_section(section, "MMR immunohistochemistry: retained.", section.version, cast.path1)
    addendum = services.sign(addendum, cast.path1).report
    amendment = services.start_followup(case, "amendment", cast.path1, reason="Deeper levels show invasion.")
    # The amendment carries the addendum forward: a receiver keeping only the latest report keeps it.
    assert "MMR immunohistochemistry: retained." in amendment.full_text()
    first = amendment.sections.order_by("order").first()
    services.save_section(first, "Invasive adenocarcinoma.", first.version, cast.path1)
    amendment = services.sign(amendment, cast.path1).report

    client = client_for(cast.path1)
    current = client.get(reverse("case_fhir", args=[case.pk])).json()
    assert current["status"] == "amended" and current["meta"]["versionId"] == "3"
    assert "MMR immunohistochemistry: retained." in current["conclusion"]
    assert "Invasive adenocarcinoma." in current["conclusion"] and len(current["specimen"]) == 1
    # Identifiers name the case's report (its accession), never another report.
    assert current["identifier"] == [{"system": "https://pathology.example.org/fhir/accession",
                                      "value": case.accession_number}]
    versions = [client.get(reverse("report_fhir", args=[r.pk])).json() for r in (original, addendum, amendment)]
    assert [(v["status"], v["meta"]["versionId"]) for v in versions] == [("final", "1"), ("appended", "2"),
                                                                          ("amended", "3")]
    assert len({v["id"] for v in versions}) == 1
    # Each version's PDF: its own URL under the public base URL, with that PDF's SHA-1.
    for report, resource in zip((original, addendum, amendment), versions, strict=True):
        pdf_form = next(f for f in resource["presentedForm"] if f["contentType"] == "application/pdf")
        assert pdf_form["url"] == f"https://pathology.example.org/reports/{report.pk}/report.pdf"
        pdf = client.get(reverse("report_version_pdf", args=[report.pk])).content
        assert pdf_form["hash"] == base64.b64encode(hashlib.sha1(pdf).digest()).decode()  # noqa: S324
    history = client.get(reverse("case_fhir_history", args=[case.pk])).json()
    assert history["type"] == "history"
    provenances = [e["resource"] for e in history["entry"] if e["resource"]["resourceType"] == "Provenance"]
    latest = next(p for p in provenances if p["target"][0]["reference"].endswith("/_history/3"))
    assert latest["entity"][0] == {"role": "revision",
                                   "what": {"reference": f"DiagnosticReport/{current['id']}/_history/2"}}
    assert latest["signature"][0]["type"][0]["code"] == "1.2.840.10065.1.12.1.1"
    assert amendment.snapshot_hash in base64.b64decode(latest["signature"][0]["data"]).decode()
    # Print: the current report first, under AMENDED, the history below.
    html = client.get(reverse("report_print", args=[case.pk])).content.decode()
    assert html.index("AMENDED") < html.index("Invasive adenocarcinoma.") < html.index("Tubular adenoma.")
    assert html.index("superseded by a later amendment") > html.index("Invasive adenocarcinoma.")
    assert export.version_pdf(export.version_of(original)) == export.version_pdf(export.version_of(original))


def test_triage_never_prints_and_only_confirmed_labels_are_coded(cast, case_factory, client_for):
    ensure_default_label_sets()
    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1)
    section = report.sections.get()
    triage = triage_classification(report)
    services.decide(triage, "Likely malignant", cast.path1)
    category = LabelSet.objects.get(name="Diagnosis category")
    pending = Classification.objects.create(section=section, label_set=category, scores={"Precancerous": 0.9},
                                            model_label="Precancerous", model_confidence=0.9)
    services.dismiss(pending, cast.path1)
    report = services.sign(report, cast.path1).report
    client = client_for(cast.path1)
    html = client.get(reverse("report_print", args=[case.pk])).content.decode()
    assert "Likely malignant" not in html and "Precancerous" not in html
    assert "conclusionCode" not in client.get(reverse("report_fhir", args=[report.pk])).json()


# --- triage and uncertainty ------------------------------------------------------------------------------
def test_triage_is_on_the_worklist_before_the_case_is_opened(cast, case_factory, client_for, request):
    from webapp.analysis import pipeline
    from webapp.reports.models import Label, SlideTriage

    bundle = request.getfixturevalue("tiny_model")

    alert_set = LabelSet.objects.create(name="Triage", is_triage=True, confidence_threshold=0.0)
    for name in ("Likely malignant", "Needs a second look"):  # every label alerts: the call always flags
        Label.objects.create(label_set=alert_set, name=name, alert=True, prompts=[name.lower()])
    quiet = case_factory(assigned_to=cast.path1)
    flagged = case_factory(assigned_to=cast.path1)
    slide = fake_slide(flagged.parts.get())
    prime_features(slide, bundle, seed=4)
    slide.path.parent.mkdir(parents=True, exist_ok=True)
    slide.path.touch()  # embed_slide checks the file is in the store; the features are primed
    pipeline.embed_slide(slide, bundle, lambda fraction, message: None)
    call = SlideTriage.objects.get(slide=slide)
    assert call.alert and call.case_id == flagged.pk and not Report.objects.filter(case=flagged).exists()
    page = client_for(cast.path1).get(reverse("worklist")).content.decode()
    assert f"AI: {call.label}" in page
    assert page.index(flagged.accession_number) < page.index(quiet.accession_number)


def test_a_pick_below_the_threshold_is_shown_as_uncertain(cast, case_factory, client_for):
    ensure_default_label_sets()
    report = drafted_report(case_factory(assigned_to=cast.path1), cast.path1)
    organ = LabelSet.objects.get(name="Organ")
    scores = {label.name: 0.8 / 5 for label in organ.labels.all()} | {"Stomach": 0.25}
    item = Classification.objects.create(section=report.sections.get(), label_set=organ, scores=scores,
                                         model_label="Stomach", model_confidence=0.25)
    assert item.uncertain
    page = client_for(cast.path1).get(reverse("report_workspace", args=[report.case_id])).content.decode()
    assert 'data-role="uncertain"' in page and "below the 60% threshold" in page


# --- generated drafts ------------------------------------------------------------------------------------
def test_a_draft_naming_another_organ_or_side_is_flagged(cast, case_factory):
    from webapp.reports.drafting import draft_warnings

    case = case_factory(sites={"A": "Lung, right upper lobe"})
    part = case.parts.get()
    assert part.organ == "lung"
    assert draft_warnings(with_own_header("Adenocarcinoma, acinar.", part), part) == []
    warnings = draft_warnings(with_own_header("Colonic mucosa; left lower lobe nodule.", part), part)
    assert any("names colon" in w for w in warnings) and any("says left" in w for w in warnings)


def test_redrafting_over_ones_own_text_asks_first(cast, case_factory, client_for, request):
    from webapp.jobs.models import Job

    bundle = request.getfixturevalue("tiny_model")
    case = case_factory(assigned_to=cast.path1)
    prime_features(fake_slide(case.parts.get()), bundle, seed=5)
    report = services.start_report(case, cast.path1)
    section = report.sections.get()
    services.save_section(section, "My own careful wording.", section.version, cast.path1)
    client = client_for(cast.path1)
    url = reverse("report_draft", args=[case.pk])
    asked = client.post(url, {"method": "qformer"}, HTTP_HX_REQUEST="true")
    assert asked.status_code == 409 and b'data-role="redraft-confirm"' in asked.content and b"part A" in asked.content
    assert not Job.objects.filter(case=case, kind="draft_report").exists()  # nothing queued yet
    confirmed = client.post(url, {"method": "qformer", "replace_edited": "1"}, HTTP_HX_REQUEST="true")
    assert confirmed.status_code == 200 and Job.objects.filter(case=case, kind="draft_report").count() == 1
    from webapp.jobs.runner import execute

    execute(Job.objects.get(case=case, kind="draft_report").pk)
    section.refresh_from_db()
    assert section.text != "My own careful wording."
    assert section.versions.filter(text="My own careful wording.").exists()  # the replaced text is in history


def test_thresholds_are_calibrated_from_signed_out_decisions(cast, case_factory, client_for):
    from tests.model_fixtures import bundle_row
    from webapp.reports import calibration

    # The model's picks: right at high confidence, wrong at low (what the lab's decisions say).
    decisions = [(0.9, True)] * 20 + [(0.7, True)] * 9 + [(0.7, False)] * 1 + [(0.4, True)] * 5 + [(0.4, False)] * 5
    result = calibration.threshold_for(decisions)
    assert result.threshold == 0.7 and result.accuracy_above == pytest.approx(29 / 30)
    assert result.share_above == pytest.approx(30 / 40)
    assert calibration.threshold_for(decisions[:10]).threshold is None  # too few decisions: no change

    # Through the page, over real signed rows of the active bundle.
    bundle = bundle_row("calib@1")
    from webapp.analysis.pipeline import activate_bundle

    activate_bundle(bundle)
    ensure_default_label_sets()
    organ = LabelSet.objects.get(name="Organ")
    for confidence, right in decisions:
        case = case_factory(assigned_to=cast.path1)
        report = drafted_report(case, cast.path1)
        item = Classification.objects.create(section=report.sections.get(), label_set=organ, bundle=bundle,
                                             scores={"Colon": confidence, "Lung": 1 - confidence},
                                             model_label="Colon", model_confidence=confidence)
        services.decide(item, "Colon" if right else "Lung", cast.path1)
        services.sign(report, cast.path1)
    response = client_for(cast.admin).post(reverse("labelset_list"), {"action": "calibrate"}, follow=True)
    organ.refresh_from_db()
    assert organ.confidence_threshold == 0.7 and organ.calibration["decisions"] == 40
    assert "right 97% of the time (40 decisions)" in response.content.decode()
    assert AuditEvent.objects.filter(action="labelset.calibrate", object_id=str(organ.pk)).exists()


def test_deploy_check_wants_the_public_base_url(db):
    """FHIR names each version's PDF by URL: production must say where the app is reached."""
    import os
    import secrets

    from django.conf import settings

    from tests.test_trust_settings import _manage

    url = (embedded_db.url(connection.settings_dict["NAME"], embedded_db.APP_ROLE) if settings.EMBEDDED_DATABASE
           else os.environ["DATABASE_URL"])
    result = _manage("check", "--deploy", DATABASE_URL=url, DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
                     DJANGO_ALLOWED_HOSTS="pathalign.example.org")
    assert "pathalign.W101" in result.stdout + result.stderr


def test_wrong_signing_passwords_count_towards_the_lockout(cast, case_factory, client_for, settings):
    report = drafted_report(case_factory(assigned_to=cast.path1), cast.path1)
    client = client_for(cast.path1)
    url = reverse("report_sign", args=[report.pk])
    versions = {f"section_version_{s.pk}": s.version for s in report.sections.all()}
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert client.post(url, {"password": "guess-guess-1", **versions}).status_code in (303, 403, 429)
    # Locked now: the right password is refused too, and nothing is signed.
    assert client.post(url, {"password": PASSWORD, **versions}).status_code in (303, 403, 429)
    assert Report.objects.get(pk=report.pk).status == "draft"
    assert AuditEvent.objects.filter(action="login_locked_out", username="dr_one").exists()


# --- audit of #15 (verify): what the tests above did not pin down ------------------------------------------
def test_evidence_from_a_case_the_viewer_may_not_open_carries_no_identifier_and_no_link(
        cast, case_factory, client_for, request, django_capture_on_commit_callbacks):
    """The identifiers sit inside the diagnosis lines themselves (where 'diagnosis lines only' does not help):
    the draft, the stored evidence and the page of a pathologist who may not open that case hold none."""
    from webapp.jobs.models import Job
    from webapp.jobs.runner import execute
    from webapp.reports.models import AIDraft

    bundle = request.getfixturevalue("tiny_model")
    earlier = case_factory(assigned_to=cast.path1, patient_pseudonym="PSN-7777")
    prime_features(fake_slide(earlier.parts.get()), bundle, seed=1)
    leaky = (f"Tubular adenoma, low grade ({earlier.accession_number}, PSN-7777, MRN 00123456), discussed with "
             "Dr. Okafor on 4 June 2025 and with Ana One.")
    with django_capture_on_commit_callbacks(execute=True):
        signed_report(earlier, cast.path1, text=leaky)
    execute(Job.objects.get(kind="embed_report", case=earlier).pk)

    case = case_factory(assigned_to=cast.path2)
    prime_features(fake_slide(case.parts.get()), bundle, seed=2)
    client = client_for(cast.path2)
    assert client.post(reverse("report_draft", args=[case.pk]), {"method": "retrieval"},
                       HTTP_HX_REQUEST="true").status_code == 200
    execute(Job.objects.filter(case=case, kind="draft_report").latest("created_at").pk)
    section = services.open_report(case).sections.get()
    evidence = AIDraft.objects.get(section=section).evidence
    page = client.get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert client.get(reverse("case_detail", args=[earlier.pk])).status_code == 404  # may not open it
    shown = [section.text, str(evidence), page]
    assert "Tubular adenoma, low grade" in section.text and "Tubular adenoma, low grade" in page
    for text in shown:
        for identifier in (earlier.accession_number, "PSN-7777", "00123456", "Okafor", "4 June 2025", "Ana One"):
            assert identifier not in text, (identifier, text[:300])
    for name in ("report_workspace", "case_detail"):
        assert reverse(name, args=[earlier.pk]) not in page


def test_a_flagged_draft_is_shown_as_unsafe_in_the_workspace(cast, case_factory, client_for):
    from webapp.reports.drafting import draft_warnings
    from webapp.reports.models import AIDraft

    case = case_factory(assigned_to=cast.path1, sites={"A": "Lung, right upper lobe"})
    report = services.start_report(case, cast.path1)
    section = report.sections.get()
    text = with_own_header("Colonic mucosa with tubular adenoma.", section.part)
    services.save_section(section, text, section.version, cast.path1)
    AIDraft.objects.create(section=section, method="retrieval", text=text,
                           warnings=draft_warnings(text, section.part))
    page = client_for(cast.path1).get(reverse("report_workspace", args=[case.pk])).content.decode()
    assert 'data-role="draft-warning"' in page and "Unsafe AI draft" in page and "names colon" in page


def test_the_worklist_shows_the_models_suggestion_and_the_decision_apart(cast, case_factory, client_for):
    """After an override and sign-out the AI column still shows the model's own suggestion (never the
    pathologist's decision labelled 'AI'); the decision has its own column."""
    import re

    case = case_factory(assigned_to=cast.path1)
    report = drafted_report(case, cast.path1)
    services.decide(triage_classification(report, "Likely malignant", 0.8), "Likely benign", cast.path1)
    services.sign(report, cast.path1)
    rows = client_for(cast.path1).get(reverse("worklist"), {"show": "signed"}, HTTP_HX_REQUEST="true")
    row = re.search(rf"<tr[^>]*>(?:(?!</tr>).)*{case.accession_number}(?:(?!</tr>).)*</tr>",
                    rows.content.decode(), re.S).group(0)
    assert re.search(r'data-role="ai-suggestion"[^>]*>AI: Likely malignant 80%', row), row
    assert re.search(r'data-role="decision">Likely benign<', row), row
    assert "AI: Likely benign" not in row


def test_confirmed_labels_are_coded_with_snomed_ct_and_every_version_names_its_specimens(
        cast, case_factory, client_for):
    ensure_default_label_sets()
    case = case_factory(assigned_to=cast.path1, parts=("A", "B"))
    report = drafted_report(case, cast.path1)
    organ = LabelSet.objects.get(name="Organ")
    colon = organ.labels.get(name="Colon")
    assert colon.code_system == "http://snomed.info/sct" and colon.code
    item = Classification.objects.create(section=report.sections.get(part__label="A"), label_set=organ,
                                         scores={"Colon": 0.9, "Lung": 0.1}, model_label="Colon",
                                         model_confidence=0.9)
    services.decide(item, "Colon", cast.path1)
    report = services.sign(report, cast.path1).report
    addendum = services.start_followup(case, "addendum", cast.path1)
    section = addendum.sections.get()
    services.save_section(section, "MMR immunohistochemistry: retained.", section.version, cast.path1)
    addendum = services.sign(addendum, cast.path1).report
    client = client_for(cast.path1)
    for signed in (report, addendum):
        resource = client.get(reverse("report_fhir", args=[signed.pk])).json()
        assert resource["conclusionCode"] == [{"coding": [{"system": "http://snomed.info/sct", "code": colon.code,
                                                           "display": "Colon"}], "text": "A Organ: Colon"}]
        assert [s["reference"] for s in resource["specimen"]] == ["#part-A", "#part-B"]
        contained = {c["id"]: c for c in resource["contained"] if c["resourceType"] == "Specimen"}
        assert contained["part-A"]["collection"]["bodySite"]["text"] == "Colon, sigmoid"


def test_specimen_rules_are_edited_by_a_lab_admin_and_reclassify_parts(cast, case_factory, client_for):
    """The organ/procedure mapping that retrieval filters by is the lab's to edit (a page for lab admins),
    and every part follows an edit at once; edits are audited."""
    from webapp.cases.models import SpecimenRule

    case = case_factory(assigned_to=cast.path1, sites={"A": "Ileum, terminal"})
    part = case.parts.get()
    assert part.organ == ""
    url = reverse("specimen_rules")
    admin = client_for(cast.admin)
    page = admin.get(url)
    assert page.status_code == 200 and b"sigmoid" in page.content and b"Ileum, terminal" in page.content
    assert client_for(cast.path1).get(url).status_code == 403
    assert client_for(cast.path1).post(url, {"action": "add", "field": "site", "contains": "ileum",
                                             "family": "colon"}).status_code == 403
    response = admin.post(url, {"action": "add", "field": "site", "contains": "ileum", "family": "Colon",
                                "order": 5})
    assert response.status_code == 302
    part.refresh_from_db()
    assert part.organ == "colon"  # families are lower case, as the defaults
    rule = SpecimenRule.objects.get(field="site", contains="ileum")
    assert AuditEvent.objects.filter(action="specimen_rule.add", object_id=str(rule.pk),
                                     after__family="colon").exists()
    # A duplicate or an empty rule is refused with a message, nothing changes.
    again = admin.post(url, {"action": "add", "field": "site", "contains": "Ileum", "family": "stomach"})
    assert again.status_code == 200 and b"already" in again.content
    assert admin.post(url, {"action": "add", "field": "site", "contains": "", "family": ""}).status_code == 200
    assert SpecimenRule.objects.filter(contains__iexact="ileum").count() == 1
    assert admin.post(url, {"action": "delete", "rule": rule.pk}).status_code == 302
    part.refresh_from_db()
    assert part.organ == "" and not SpecimenRule.objects.filter(pk=rule.pk).exists()
    assert AuditEvent.objects.filter(action="specimen_rule.delete", object_id=str(rule.pk)).exists()
