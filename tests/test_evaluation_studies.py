"""Building studies: parts by filter or accession list, texts from the reports app, balanced assignment of
distinct raters, one rating per rater and item (database constraints), reproducible seeded order."""
from __future__ import annotations

import random
from collections import Counter
from datetime import date

import pytest
from django.db import IntegrityError, transaction

from inference.demo import DEMO_NAME, DEMO_VERSION
from tests.model_fixtures import bundle_row
from webapp.evaluation import sources, studies
from webapp.evaluation.models import Assignment, Item, Rating
from webapp.evaluation.sources import Candidate

# The app's default demo bundle (its ModelBundle.key, name@version from inference/demo_bundle_v2/bundle.json).
DEMO_KEY = f"{DEMO_NAME}@{DEMO_VERSION}"
AI_KEY = f"ai:qformer:{DEMO_KEY}"
AI_LABEL = f"AI draft: Q-Former decoder (PathAlign-G), {DEMO_KEY}"
SIGNED_TEXT = "Diagnosis:\nA. Colon, sigmoid, biopsy:\n   Tubular adenoma with low-grade dysplasia.\n"
AI_TEXT = "Diagnosis:\nA. Colon, sigmoid, biopsy:\n   Tubular adenoma, no high-grade dysplasia seen.\n"


def make_evaluators(django_user_model, count: int, start: int = 1) -> list:
    return [django_user_model.objects.create_user(username=f"rater{index}", password="x-unused-9", role="evaluator")
            for index in range(start, start + count)]


def make_study(case_factory, evaluators, *, parts: int = 4, per_item: int = 2, seed: int = 7, **extra):
    """A study built from texts given directly (not from the reports app): a signed text and an AI text per
    part. Returns the study."""
    cases = [case_factory(clinical_history=f"History {index}: rectal bleeding.") for index in range(parts)]
    candidates = []
    for case in cases:
        part = case.parts.get()
        candidates.append(Candidate(part, sources.SIGNED, SIGNED_TEXT + f"Note {case.pk}.", {"test": True}))
        candidates.append(Candidate(part, AI_KEY, AI_TEXT + f"Remark {case.pk}.", {"test": True}))
    return studies.build_study(
        name="Test study", parts=[c.part for c in candidates], source_keys=[sources.SIGNED, AI_KEY],
        evaluators=evaluators, raters_per_item=per_item, seed=seed, candidates=candidates,
        labels={AI_KEY: AI_LABEL}, **extra,
    )


def test_the_demo_draft_source_is_named_as_the_app_names_it():
    assert sources.source_label(AI_KEY) == AI_LABEL and AI_KEY.split(":", 2)[2] == DEMO_KEY


@pytest.mark.parametrize(("items", "raters", "per_item"), [(8, 3, 2), (10, 4, 3), (7, 5, 1), (9, 3, 3)])
def test_assign_balanced_distinct_and_even(items, raters, per_item):
    queues = studies.assign_balanced(list(range(items)), list(range(100, 100 + raters)), per_item,
                                     random.Random(1))
    per_item_raters = Counter(item for queue in queues.values() for item in queue)
    assert all(per_item_raters[item] == per_item for item in range(items))
    assert all(len(set(queue)) == len(queue) for queue in queues.values())  # distinct raters per item
    loads = [len(queue) for queue in queues.values()]
    assert max(loads) - min(loads) <= 1 and sum(loads) == items * per_item


def test_assign_refuses_more_raters_than_evaluators():
    with pytest.raises(studies.StudyError):
        studies.assign_balanced([1, 2], [10, 11], 3, random.Random(0))


def test_build_study_items_assignments_and_constraints(cast, case_factory, django_user_model):
    raters = [cast.evaluator, *make_evaluators(django_user_model, 2)]
    study = make_study(case_factory, raters, parts=5, per_item=2)
    assert study.items.count() == 10
    for item in study.items.all():
        assert item.assignments.count() == 2
        assert item.assignments.values("evaluator").distinct().count() == 2
    loads = Counter(study.assignments.values_list("evaluator", flat=True))
    assert max(loads.values()) - min(loads.values()) <= 1
    # Queue positions run 1..n per rater.
    for rater in raters:
        positions = list(studies.queue(study, rater).values_list("position", flat=True))
        assert positions == list(range(1, len(positions) + 1))
    # History is stripped from every text alike and only kept separately when the study shows it.
    assert all("History" not in item.text and item.clinical_history == "" for item in study.items.all())

    assignment = study.assignments.first()
    with pytest.raises(IntegrityError), transaction.atomic():  # the same rater twice on one item
        Assignment.objects.create(study=study, item=assignment.item, evaluator=assignment.evaluator, position=999)
    Rating.objects.create(assignment=assignment, score=5)
    with pytest.raises(IntegrityError), transaction.atomic():  # a second rating of the same assignment
        Rating.objects.create(assignment=assignment, score=4)
    with pytest.raises(IntegrityError), transaction.atomic():  # low score needs an error kind (database)
        Rating.objects.filter(assignment=assignment).update(score=2, error_kind="")
    with pytest.raises(IntegrityError), transaction.atomic():
        Rating.objects.filter(assignment=assignment).update(score=6)


def test_save_rating_rules_and_revision(cast, case_factory):
    study = make_study(case_factory, [cast.evaluator], parts=1, per_item=1)
    assignment = studies.queue(study, cast.evaluator).first()
    with pytest.raises(studies.StudyError, match="kind of error"):
        studies.save_rating(assignment, 3)
    studies.save_rating(assignment, 2, "wrong_diagnosis", "  wrong organ  ")
    studies.save_rating(assignment, 4)  # a revision replaces, never duplicates
    rating = Rating.objects.get(assignment=assignment)
    assert (rating.score, rating.error_kind) == (4, "")
    assert studies.progress(study, cast.evaluator) == {"total": 2, "done": 1, "percent": 50}
    study.status = "closed"
    study.save()
    assignment.refresh_from_db()
    with pytest.raises(studies.StudyError, match="closed"):
        studies.save_rating(assignment, 5)


def test_order_is_seeded_reproducible_and_per_rater(cast, case_factory, django_user_model):
    raters = [cast.evaluator, *make_evaluators(django_user_model, 1)]

    def order(study, rater):
        return [(a.item.part.case.patient_pseudonym, a.item.source_key)
                for a in studies.queue(study, rater).select_related("item__part__case")]

    first = make_study(case_factory, raters, parts=6, per_item=2, seed=11)
    # Rebuild the same study (same parts, same seed): the same order for every rater.
    candidates = [Candidate(item.part, item.source_key, item.text) for item in first.items.order_by("part", "source_key")]
    again = studies.build_study(name="again", parts=[], source_keys=[sources.SIGNED, AI_KEY], evaluators=raters,
                                raters_per_item=2, seed=11, candidates=candidates)
    for rater in raters:
        assert order(first, rater) == order(again, rater)
    # Two raters of the same items see them in different orders.
    assert order(first, raters[0]) != order(first, raters[1])
    # Item ids follow no source: created in a shuffled order, not signed/AI alternating by part.
    keys = list(first.items.order_by("id").values_list("source_key", flat=True))
    assert keys != [sources.SIGNED, AI_KEY] * 6 and keys != [AI_KEY, sources.SIGNED] * 6


def test_select_parts_by_filters_and_accessions(cast, case_factory):
    case_factory(accession_number="S26-00101", parts=("A", "B"), received_date=date(2026, 3, 1),
                 status="signed_out", sites={"B": "Stomach, antrum"})
    case_factory(accession_number="S26-00102", received_date=date(2026, 5, 1), status="signed_out")
    case_factory(accession_number="S26-00103", received_date=date(2026, 3, 2))

    def labels(**selection):
        parts = studies.select_parts(studies.Selection(**selection))
        return [str(part) for part in parts]

    assert labels(site="stomach") == ["S26-00101-B"]
    assert labels(received_from=date(2026, 2, 1), received_to=date(2026, 3, 31)) == [
        "S26-00101-A", "S26-00101-B", "S26-00103-A"]
    assert labels(signed_out_only=True, received_to=date(2026, 3, 31)) == ["S26-00101-A", "S26-00101-B"]
    assert labels(accessions=studies.parse_accessions("s26-00102,  S26-00101-B\nS26-00103")) == [
        "S26-00101-B", "S26-00102-A", "S26-00103-A"]
    assert studies.unknown_accessions(studies.Selection(accessions=["S26-00101-C", "S26-09999", "S26-00102"])) == [
        "S26-00101-C", "S26-09999"]


def test_normalise_for_rating_hides_layout_and_identifiers():
    text = ("History:\n62M, smoker\n\nDiagnosis:\nA. Lung (S26-00042), biopsy:\r\n  Adenocarcinoma.\n\n\n\n"
            "Electronically signed by Dr Lee\n")
    # staff=[]: no user names to look up (the de-identifier also knows every user's name; see test_reports_safety)
    assert sources.normalise_for_rating(text, staff=[]) == "Diagnosis:\nA. Lung ([id]), biopsy:\n  Adenocarcinoma."
    other = "FINAL DIAGNOSIS:\nA. Skin:\n- BCC.\n- Mitoses: moderate.\n\nCLINICAL DATA:\n52M, rule out melanoma\n"
    assert sources.normalise_for_rating(other, staff=[]) == "FINAL DIAGNOSIS:\nA. Skin:\n- BCC.\n- Mitoses: moderate."
    inline = "Clinical information: 61F, dyspepsia\n\nDIAGNOSIS: A. Stomach: adenocarcinoma.\n"
    assert sources.normalise_for_rating(inline, staff=[]) == "DIAGNOSIS: A. Stomach: adenocarcinoma."


def test_sources_from_the_reports_app(cast, case_factory):
    """Candidate texts come from the reporting workflow: the latest AI draft per method and bundle, and the
    text as signed; later edits of a draft never change an item (snapshot)."""
    from webapp.reports.models import AIDraft, Report, ReportSection

    case = case_factory(assigned_to=cast.path1)
    part = case.parts.get()
    report = Report.objects.create(case=case, created_by=cast.path1)
    section = ReportSection.objects.create(report=report, part=part, heading="A.", text="Final: tubular adenoma.")
    AIDraft.objects.create(section=section, method="qformer", bundle=bundle_row("demo@1"), text="Old draft.", job_id=1)
    AIDraft.objects.create(section=section, method="qformer", bundle=bundle_row("demo@1"), text="Draft: tubular adenoma.", job_id=2)
    AIDraft.objects.create(section=section, method="retrieval", bundle=bundle_row("demo@1"), text="Similar: adenoma.", job_id=3)
    parts = type(part).objects.filter(pk=part.pk)
    assert sources.available_sources(parts)[0].parts == 0  # nothing signed yet
    from webapp.reports.services import sign

    sign(report, cast.path1, no_slides_reason="no slide files in this test")
    options = {option.key: option.parts for option in sources.available_sources(parts)}
    assert options == {sources.SIGNED: 1, "ai:qformer:demo@1": 1, "ai:retrieval:demo@1": 1}
    candidates = sources.collect(parts, [sources.SIGNED, "ai:qformer:demo@1"])
    assert {(c.source_key, c.text) for c in candidates} == {
        (sources.SIGNED, "Final: tubular adenoma."), ("ai:qformer:demo@1", "Draft: tubular adenoma.")}
    assert sources.draft_signed_pairs(parts)["ai:qformer:demo@1"] == [("Draft: tubular adenoma.",
                                                                        "Final: tubular adenoma.")]
    study = studies.build_study(name="from reports", parts=parts, source_keys=[sources.SIGNED, "ai:qformer:demo@1"],
                                evaluators=[cast.evaluator], raters_per_item=1, seed=3)
    assert sorted(study.items.values_list("text", flat=True)) == ["Draft: tubular adenoma.", "Final: tubular adenoma."]
    assert study.source_labels()["ai:qformer:demo@1"].startswith("AI draft: Q-Former")
    assert Item.objects.filter(study=study, source_key=sources.SIGNED).get().source_ref["report"] == report.pk
