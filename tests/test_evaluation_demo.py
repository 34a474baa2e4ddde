"""The demo study: built from the synthetic corpus (signed text + a perturbed stand-in, labelled as such),
simulated ratings, half of the evaluator's queue left to do, idempotent; the results page draws charts."""
from __future__ import annotations

from django.urls import reverse

from tests.model_fixtures import bundle_row
from webapp.demo import DemoContext
from webapp.evaluation import demo, sources, studies
from webapp.evaluation.models import Rating, Study

REPORTS = [
    ("History:\n60M\n\nDiagnosis:\nA. Colon, sigmoid, biopsy:\n   Tubular adenoma with low-grade dysplasia.\n"
     "   Mitoses: low.\n   Negative for carcinoma.\n", "Tubular adenoma", "colon_tubular_adenoma"),
    ("FINAL DIAGNOSIS:\nA. Lung, biopsy:\n  - Lung adenocarcinoma.\n  - Moderately differentiated (G2).\n",
     "Lung adenocarcinoma", "lung_adenocarcinoma"),
    ("DIAGNOSIS: A. Skin, back: Benign melanocytic nevus.\n", "Benign melanocytic nevus", "skin_nevus"),
]


def test_demo_study_seeded_once_with_charts(cast, case_factory, client_for):
    cases = [case_factory() for _ in range(5)]
    order = [0, 1, 0, 2, 1]  # so each perturbation (by index: reword, grade, drop, invent, diagnosis) applies
    manifest = [{"report": REPORTS[j][0], "labels": {"diagnosis_display": REPORTS[j][1], "diagnosis": REPORTS[j][2]}}
                for j in order]
    logs = []
    context = DemoContext(users={"eval_kim": cast.evaluator, "labadmin": cast.admin}, cases=cases, manifest=manifest,
                          log=logs.append)
    demo.seed(context)
    demo.seed(context)  # idempotent
    study = Study.objects.get()
    assert study.name == demo.STANDIN_NAME and "perturbation" in study.description
    assert study.items.count() == 10 and study.source_labels()[demo.STANDIN_KEY] == demo.STANDIN_LABEL
    progress = studies.progress(study, cast.evaluator)
    assert progress["total"] == 10 and progress["done"] == 5
    assert Rating.objects.filter(assignment__evaluator__username=demo.SIM_USERNAME).count() == 10
    assert not study.evaluators.get(username=demo.SIM_USERNAME).has_usable_password()
    kinds = {item.source_ref["demo"] for item in study.items.filter(source_key=demo.STANDIN_KEY)}
    assert {"wrong_grade", "dropped_finding", "invented_finding", "wrong_diagnosis"} <= kinds
    page = client_for(cast.admin).get(reverse("evaluation_results", args=[study.pk])).content.decode()
    assert page.count("<svg") >= 3 and demo.STANDIN_LABEL in page and "Fleiss" in page
    # The rater continues where the demo left off.
    resume = client_for(cast.evaluator).get(reverse("evaluation_continue", args=[study.pk]))
    assert resume["Location"].endswith("/rate/6/")


def test_demo_switches_to_real_drafts_when_they_exist(cast, case_factory):
    from webapp.reports.models import AIDraft, Report, ReportSection
    from webapp.reports.services import sign

    cases = []
    for index in range(3):
        case = case_factory(assigned_to=cast.path1)
        report = Report.objects.create(case=case, created_by=cast.path1)
        section = ReportSection.objects.create(report=report, part=case.parts.get(), text=f"Tubular adenoma {index}.")
        AIDraft.objects.create(section=section, method="qformer", bundle=bundle_row("demo@1"), text=f"Tubular adenoma, {index}.",
                               job_id=index)
        sign(report, cast.path1, no_slides_reason="no slide files in this test")
        cases.append(case)
    context = DemoContext(users={"eval_kim": cast.evaluator}, cases=cases, manifest=[], log=lambda *_: None)
    demo.seed(context)
    demo.seed(context)
    study = Study.objects.get()
    assert study.name == demo.REAL_NAME
    assert set(study.source_labels()) == {"signed_report", "ai:qformer:demo@1"}
    assert Rating.objects.filter(assignment__study=study).count() == 9  # eval_sim 6, eval_kim half of 6


def test_demo_stand_in_never_repeats_the_control_text(cast, case_factory):
    """make run's seed must not stop on the builder's duplicate-text rule: a report that no perturbation
    can change (no phrase to reword, no grade, one finding, one diagnosis) still gets a stand-in that differs."""
    cases = [case_factory() for _ in range(5)]
    skin = REPORTS[2]
    manifest = [{"report": skin[0], "labels": {"diagnosis_display": skin[1], "diagnosis": skin[2]}} for _ in cases]
    context = DemoContext(users={"eval_kim": cast.evaluator, "labadmin": cast.admin}, cases=cases, manifest=manifest,
                          log=lambda *_: None)
    demo.seed(context)
    study = Study.objects.get()
    texts = {(item.part_id, item.source_key): item.text for item in study.items.all()}
    for case in cases:
        part = case.parts.get()
        assert texts[(part.pk, demo.STANDIN_KEY)] != texts[(part.pk, sources.SIGNED)]
    assert study.rater_instruction  # raters read an instruction, never the name or description
