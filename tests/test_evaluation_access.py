"""Who may do what in rating studies, and blinding: nothing an evaluator can reach names a text's source,
the item, the case or the patient."""
from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from tests.model_fixtures import bundle_row
from tests.test_evaluation_studies import AI_KEY, AI_LABEL, DEMO_KEY, make_evaluators, make_study
from webapp.evaluation import sources, studies
from webapp.evaluation.models import Rating
from webapp.slides.ingest import ingest_slide

# Anything that would tell a rater where a text came from (or whose it is).
SOURCE_MARKERS = [AI_KEY, AI_LABEL, DEMO_KEY, "ai:", "qformer", "q-former", "pathalign-g", "pathalign-r",
                  "pathalign-demo", "retrieval", "language model", "bundle", "demo@1", "(control)", "source_key", "AI draft", "signed-out report", "signed_report"]


@pytest.fixture
def world(cast, case_factory, django_user_model, good_slide):
    second = make_evaluators(django_user_model, 1)[0]
    study = make_study(case_factory, [cast.evaluator, second], parts=3, per_item=2)
    item = study.items.first()
    ingest_slide(good_slide, part=item.part, original_filename="S26-secret.svs", block_label="1", move=False)
    study.items.filter(part=item.part).update(slide=item.part.slides.get())
    stranger_case = case_factory(assigned_to=cast.path1)
    stranger_slide = ingest_slide(good_slide, part=stranger_case.parts.get(), original_filename="x.svs", move=False)
    return {"study": study, "second": second, "stranger_slide": stranger_slide}


def forbidden_strings(study) -> list[str]:
    out = []
    for item in study.items.select_related("case"):
        out += [str(item.public_id), item.case.accession_number, item.case.patient_pseudonym,
                item.case.clinical_history, item.source_key]
    return out


def assert_blind(study, text: str, where: str) -> None:
    lowered = text.lower()
    for marker in SOURCE_MARKERS + forbidden_strings(study):
        assert marker.lower() not in lowered, f"{where} reveals {marker!r}"


def test_evaluator_pages_reveal_no_source_or_identity(cast, world, client_for):
    study = world["study"]
    client = client_for(cast.evaluator)
    pages = [reverse("home"), reverse("evaluation_studies"), reverse("evaluation_queue", args=[study.pk])]
    total = studies.progress(study, cast.evaluator)["total"]
    pages += [reverse("evaluation_rate", args=[study.pk, position]) for position in range(1, total + 1)]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_blind(study, response.content.decode(), url)
        assert_blind(study, " ".join(f"{k}: {v}" for k, v in response.items()), f"headers of {url}")
    # The redirects a rater follows and the error page of a refused rating are blind too.
    resume = client.get(reverse("evaluation_continue", args=[study.pk]))
    assert resume.status_code == 302 and re.fullmatch(rf"/evaluation/studies/{study.pk}/rate/\d+/", resume["Location"])
    refused = client.post(reverse("evaluation_rate", args=[study.pk, 1]), {"score": "2", "go": "next"})
    assert refused.status_code == 400 and "choose the kind of error" in refused.content.decode()
    assert_blind(study, refused.content.decode(), "refused rating")
    saved = client.post(reverse("evaluation_rate", args=[study.pk, 1]), {"score": "5", "go": "next"})
    assert saved.status_code == 302
    assert_blind(study, saved["Location"], "redirect after saving")


def test_deidentified_slide_only_for_assigned_items(cast, world, client_for):
    study = world["study"]
    client = client_for(cast.evaluator)
    with_slide = studies.queue(study, cast.evaluator).filter(item__slide__isnull=False).first()
    slide = with_slide.item.slide
    meta_url = reverse("slide_viewer_meta", args=[slide.pk])
    assert client.get(meta_url).status_code == 404  # nothing before the item is opened
    page = client.get(reverse("evaluation_rate", args=[study.pk, with_slide.position]))
    assert 'data-deidentified="1"' in page.content.decode()
    meta = client.get(meta_url)
    assert meta.status_code == 200
    data = meta.json()
    assert data["deidentified"] is True and data["associated"] == []
    assert_blind(study, json.dumps(data), "slide metadata")
    assert "S26-secret" not in json.dumps(data)
    # A slide of a case outside the rater's items stays hidden, and so does the case.
    assert client.get(reverse("slide_viewer_meta", args=[world["stranger_slide"].pk])).status_code == 404
    assert client.get(reverse("case_detail", args=[with_slide.item.case_id])).status_code == 404


def test_rater_pages_access(cast, world, client_for, django_user_model):
    study = world["study"]
    rate = reverse("evaluation_rate", args=[study.pk, 1])
    queue = reverse("evaluation_queue", args=[study.pk])
    outsider_rater = make_evaluators(django_user_model, 1, start=50)[0]
    assert client_for(cast.evaluator).get(rate).status_code == 200
    assert client_for(world["second"]).get(rate).status_code == 200  # their own item 1
    assert client_for(outsider_rater).get(rate).status_code == 404  # an evaluator not in this study
    assert client_for(outsider_rater).get(queue).status_code == 404
    assert client_for(outsider_rater).post(rate, {"score": "5"}).status_code == 404
    beyond = studies.progress(study, cast.evaluator)["total"] + 1
    assert client_for(cast.evaluator).get(reverse("evaluation_rate", args=[study.pk, beyond])).status_code == 404
    for user in (cast.admin, cast.path1, cast.outsider):
        assert client_for(user).get(rate).status_code in (403, 404)
        assert client_for(user).get(queue).status_code in (403, 404)
    anonymous = client_for(None).get(rate)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    assert client_for(cast.path1).get(reverse("evaluation_studies")).status_code == 403
    listing = client_for(outsider_rater).get(reverse("evaluation_studies")).content.decode()
    assert study.name not in listing


@pytest.mark.parametrize("name,args", [
    ("evaluation_results", []), ("evaluation_results_live", []), ("evaluation_export", ["json"]),
    ("evaluation_export", ["ratings.csv"]), ("evaluation_export", ["summary.csv"]),
    ("evaluation_export", ["agreement.csv"]),
])
def test_results_and_exports_for_lab_admins_only(cast, world, client_for, name, args):
    url = reverse(name, args=[world["study"].pk, *args])
    assert client_for(cast.admin).get(url).status_code == 200
    for user in (cast.evaluator, world["second"], cast.path1, cast.outsider):
        response = client_for(user).get(url)
        assert response.status_code == 403
        assert_blind(world["study"], response.content.decode(), f"{name} refused")
    assert client_for(None).get(url).status_code == 302


def test_admin_creates_study_through_the_form(cast, case_factory, client_for, django_user_model):
    from webapp.reports.models import AIDraft, Report, ReportSection
    from webapp.reports.services import sign

    second = make_evaluators(django_user_model, 1)[0]
    for index in range(3):
        case = case_factory(assigned_to=cast.path1, accession_number=f"S26-0090{index}")
        report = Report.objects.create(case=case, created_by=cast.path1)
        section = ReportSection.objects.create(report=report, part=case.parts.get(), text=f"Adenoma {index}.")
        AIDraft.objects.create(section=section, method="retrieval", bundle=bundle_row("demo@2"), text=f"Polyp {index}.", job_id=index)
        sign(report, cast.path1, no_slides_reason="no slide files in this test")
    client = client_for(cast.admin)
    form = client.get(reverse("evaluation_study_create")).content.decode()
    assert "ai:retrieval:demo@2" in form and "Closest signed-out reports" in form
    preview = client.get(reverse("evaluation_study_preview"), {"signed_out_only": "on", "site": "sigmoid"})
    assert "3 parts" in preview.content.decode()
    data = {"name": "Retrieval vs signed", "signed_out_only": "on", "accessions": "S26-00900 S26-00901-A",
            "sources": [sources.SIGNED, "ai:retrieval:demo@2"], "evaluators": [cast.evaluator.pk, second.pk],
            "raters_per_item": "2", "seed": "5"}
    too_many = client.post(reverse("evaluation_study_create"), {**data, "raters_per_item": "3"})
    assert too_many.status_code == 200 and "At most 2" in too_many.content.decode()
    unknown = client.post(reverse("evaluation_study_create"), {**data, "accessions": "S26-07777"})
    assert "Not found: S26-07777" in unknown.content.decode()
    response = client.post(reverse("evaluation_study_create"), data)
    assert response.status_code == 302
    from webapp.evaluation.models import Study

    study = Study.objects.get(name="Retrieval vs signed")
    assert study.items.count() == 4 and study.assignments.count() == 8 and study.seed == 5
    assert client_for(cast.evaluator).post(reverse("evaluation_study_create"), data).status_code == 403


def test_results_exports_and_closing(cast, world, client_for):
    study = world["study"]
    for rater in (cast.evaluator, world["second"]):
        for assignment in studies.queue(study, rater):
            good = assignment.item.source_key == sources.SIGNED
            studies.save_rating(assignment, 5 if good else 3, "" if good else "missed_finding",
                                "=HYPERLINK(1)" if not good else "")
    client = client_for(cast.admin)
    page = client.get(reverse("evaluation_results", args=[study.pk])).content.decode()
    assert AI_LABEL in page and "Signed-out report (control)" in page and "<svg" in page
    assert "100.0%" in page  # every signed text rated 5
    live = client.get(reverse("evaluation_results_live", args=[study.pk]), HTTP_HX_REQUEST="true")
    assert "Fleiss" in live.content.decode() and "<html" not in live.content.decode()
    data = json.loads(client.get(reverse("evaluation_export", args=[study.pk, "json"])).content)
    by_key = {row["key"]: row for row in data["per_source"]}
    assert by_key[sources.SIGNED]["items"]["k"] == 3 and by_key[AI_KEY]["items"]["k"] == 0
    # Wilson interval for 3/3: (0.4385, 1.0)
    assert by_key[sources.SIGNED]["items"]["low"] == pytest.approx(0.43850, abs=1e-4)
    assert by_key[AI_KEY]["errors"] == {"missed_finding": 6}
    assert data["text_metrics"][0]["key"] == AI_KEY and 0 < data["text_metrics"][0]["ROUGE-L"] < 1
    assert len(data["ratings"]) == 12
    ratings_csv = client.get(reverse("evaluation_export", args=[study.pk, "ratings.csv"])).content.decode()
    assert ratings_csv.splitlines()[0].startswith("study,item,accession") and AI_KEY in ratings_csv
    assert "'=HYPERLINK(1)" in ratings_csv  # a comment cannot run as a spreadsheet formula
    summary_csv = client.get(reverse("evaluation_export", args=[study.pk, "summary.csv"])).content.decode()
    assert len(summary_csv.strip().splitlines()) == 3
    agreement_csv = client.get(reverse("evaluation_export", args=[study.pk, "agreement.csv"])).content.decode()
    assert "krippendorff_alpha_ordinal" in agreement_csv and "fleiss_kappa" in agreement_csv
    assert client.get(reverse("evaluation_export", args=[study.pk, "xml"])).status_code == 404
    # Closing freezes ratings.
    client.post(reverse("evaluation_study_status", args=[study.pk]))
    study.refresh_from_db()
    assert not study.is_open
    response = client_for(cast.evaluator).post(reverse("evaluation_rate", args=[study.pk, 1]), {"score": "1"})
    assert response.status_code == 403
    assert Rating.objects.filter(assignment__study=study, score=1).count() == 0
