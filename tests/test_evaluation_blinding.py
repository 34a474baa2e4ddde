"""Blind studies (issue #17): raters read an instruction, never the study's name or description; the
model's overlays reach them only when the study allows it (checked on the server, not just hidden); the
builder pairs AI and control texts per slide by default, refuses texts that read the same in two arms and
warns when the arms are unbalanced."""
from __future__ import annotations

import json
import re

import pytest
from django.db.models import Count
from django.urls import reverse

from tests.test_evaluation_studies import AI_KEY, AI_LABEL, AI_TEXT, SIGNED_TEXT, make_evaluators, make_study
from webapp.evaluation import sources, studies
from webapp.evaluation.models import DEFAULT_RATER_INSTRUCTION, Study
from webapp.evaluation.sources import Candidate
from webapp.slides.ingest import ingest_slide
from webapp.slides.overlays import register_overlay, unregister_overlay

SECRET_NAME = "Q-Former v3 against signed reports, perturbed stand-in"
SECRET_DESCRIPTION = "The AI arm is a perturbed stand-in with a wrong grade and a wrong diagnosis."
INSTRUCTION = "Rate every text against the slide. Judge clinical accuracy only, not style."


def build(case_factory, evaluators, *, signed: int, ai: int, texts=None, **options) -> Study:
    """`signed` parts with a control text, the first `ai` of them also with an AI text (distinct texts
    unless `texts` gives {(index, key): text})."""
    candidates = []
    for index in range(signed):
        part = case_factory(accession_number=f"S26-0{7000 + index}").parts.get()
        candidates.append(Candidate(part, sources.SIGNED, (texts or {}).get((index, sources.SIGNED),
                                    SIGNED_TEXT + f"Note {index}."), {}))
        if index < ai:
            candidates.append(Candidate(part, AI_KEY, (texts or {}).get((index, AI_KEY),
                                        AI_TEXT + f"Remark {index}."), {}))
    return studies.build_study(
        name="Built", parts=[], source_keys=[sources.SIGNED, AI_KEY], evaluators=evaluators,
        raters_per_item=1, seed=11, candidates=candidates, labels={AI_KEY: AI_LABEL}, **options)


def test_builder_pairs_ai_and_control_per_slide_by_default(cast, case_factory):
    study = build(case_factory, [cast.evaluator], signed=6, ai=3)
    counts = dict(study.items.values_list("source_key").annotate(n=Count("id")))
    assert counts == {sources.SIGNED: 3, AI_KEY: 3}  # only the three slides that have both texts
    per_part = {}
    for part_id, key in study.items.values_list("part_id", "source_key"):
        per_part.setdefault(part_id, set()).add(key)
    assert all(keys == {sources.SIGNED, AI_KEY} for keys in per_part.values()) and len(per_part) == 3
    assert study.paired and study.selection["build"]["unpaired_left_out"] == ["S26-07003-A", "S26-07004-A",
                                                                            "S26-07005-A"]


def test_builder_refuses_texts_duplicated_across_arms(cast, case_factory):
    same = {(0, sources.SIGNED): "Diagnosis:\nTubular adenoma.", (0, AI_KEY): "  DIAGNOSIS:   tubular\tADENOMA. ",
            (1, sources.SIGNED): "Hyperplastic polyp.", (1, AI_KEY): "Hyperplastic polyp."}
    with pytest.raises(studies.StudyError) as refused:
        build(case_factory, [cast.evaluator], signed=3, ai=3, texts=same)
    message = str(refused.value)
    assert "2 texts are the same in two arms" in message and "ignoring case and spacing" in message
    assert "S26-07000-A (Signed-out report (control))" in message and f"S26-07001-A ({AI_LABEL})" in message
    assert not Study.objects.exists()
    # A retrieval draft that copies another case's signed text is a duplicate too.
    Study.objects.all().delete()
    plan = studies.plan_study([
        Candidate(case_factory(accession_number="S26-08000").parts.get(), sources.SIGNED, "Benign skin.", {}),
        Candidate(case_factory(accession_number="S26-08001").parts.get(), AI_KEY, "benign  skin.", {}),
    ], [sources.SIGNED, AI_KEY], paired=False, staff=[])
    assert len(plan.duplicates) == 1 and "S26-08000-A" in plan.duplicate_message()


def test_builder_drops_duplicated_parts_when_asked(cast, case_factory):
    same = {(0, sources.SIGNED): "Tubular adenoma.", (0, AI_KEY): "tubular adenoma."}
    study = build(case_factory, [cast.evaluator], signed=3, ai=3, texts=same, drop_duplicates=True)
    assert study.items.count() == 4
    assert not study.items.filter(part__case__accession_number="S26-07000").exists()


def test_builder_warns_when_arms_are_unbalanced(cast, case_factory, client_for):
    with pytest.raises(studies.UnbalancedArms) as warned:
        build(case_factory, [cast.evaluator], signed=14, ai=2, paired=False)
    assert "Signed-out report (control): 14 items" in str(warned.value)
    assert f"{AI_LABEL}: 2 items" in str(warned.value) and "unbalanced" in str(warned.value)
    assert not Study.objects.exists()


def test_study_form_warns_on_unbalanced_arms_then_builds_when_accepted(cast, case_factory, client_for):
    from tests.model_fixtures import bundle_row
    from webapp.reports.models import AIDraft, Report, ReportSection
    from webapp.reports.services import sign

    for index in range(5):
        case = case_factory(assigned_to=cast.path1, accession_number=f"S26-0910{index}")
        report = Report.objects.create(case=case, created_by=cast.path1)
        section = ReportSection.objects.create(report=report, part=case.parts.get(), text=f"Adenoma {index}.")
        if index == 0:
            AIDraft.objects.create(section=section, method="retrieval", bundle=bundle_row("demo@2"),
                                   text="Polyp.", job_id=1)
        sign(report, cast.path1, no_slides_reason="no slide files in this test")
    client = client_for(cast.admin)
    form = client.get(reverse("evaluation_study_create")).content.decode()
    assert re.search(r'<input type="checkbox" name="paired"[^>]*checked', form)  # paired by default
    assert DEFAULT_RATER_INSTRUCTION[:40] in form and 'name="show_overlays"' in form
    assert 'name="show_annotations"' in form and not re.search(r'name="show_annotations"[^>]*checked', form)
    data = {"name": "Unbalanced", "signed_out_only": "on", "sources": [sources.SIGNED, "ai:retrieval:demo@2"],
            "evaluators": [cast.evaluator.pk], "raters_per_item": "1", "seed": "5",
            "rater_instruction": INSTRUCTION}
    preview = client.get(reverse("evaluation_study_preview"), {**data}).content.decode()
    assert "Signed-out report (control): 5 items" in preview and "unbalanced" in preview
    paired_preview = client.get(reverse("evaluation_study_preview"), {**data, "paired": "on"}).content.decode()
    assert "paired per slide" in paired_preview and "4 parts left out" in paired_preview
    warned = client.post(reverse("evaluation_study_create"), data)
    page = warned.content.decode()
    assert warned.status_code == 200 and "The arms are unbalanced" in page and 'name="accept_unbalanced"' in page
    assert not Study.objects.filter(name="Unbalanced").exists()
    built = client.post(reverse("evaluation_study_create"), {**data, "accept_unbalanced": "on"})
    assert built.status_code == 302
    study = Study.objects.get(name="Unbalanced")
    assert study.items.count() == 6 and study.rater_instruction == INSTRUCTION and not study.show_overlays
    assert not study.show_annotations  # off unless the lab admin ticks it
    results = client.get(reverse("evaluation_results", args=[study.pk])).content.decode()
    assert "Built with unbalanced arms" in results and "Signed-out report (control) 5" in results
    paired = client.post(reverse("evaluation_study_create"),
                         {**data, "name": "Paired", "paired": "on", "show_annotations": "on"})
    assert paired.status_code == 302 and Study.objects.get(name="Paired").items.count() == 2
    assert Study.objects.get(name="Paired").show_annotations


@pytest.fixture
def blind_study(cast, case_factory, django_user_model, good_slide):
    second = make_evaluators(django_user_model, 1)[0]
    study = make_study(case_factory, [cast.evaluator, second], parts=2, per_item=2)
    Study.objects.filter(pk=study.pk).update(name=SECRET_NAME, description=SECRET_DESCRIPTION,
                                             rater_instruction=INSTRUCTION)
    for item in study.items.all():
        if not item.part.slides.exists():
            ingest_slide(good_slide, part=item.part, original_filename="x.svs", block_label="1", move=False)
        study.items.filter(pk=item.pk).update(slide=item.part.slides.get())
    study.refresh_from_db()
    return study


@pytest.fixture
def heatmap():
    """A real overlay provider in the viewer's registry (as analysis registers "attention")."""
    register_overlay("testheat", lambda slide: {"patch_size": 256, "coords": [[0, 0], [256, 0]],
                                                "values": [0.1, 0.9], "label": "Attention (test)"})
    yield "testheat"
    unregister_overlay("testheat")


def test_raters_read_the_instruction_never_the_name_or_description(cast, blind_study, client_for):
    client = client_for(cast.evaluator)
    pages = [reverse("home"), reverse("evaluation_studies"), reverse("evaluation_queue", args=[blind_study.pk]),
             reverse("evaluation_rate", args=[blind_study.pk, 1]), reverse("evaluation_rate", args=[blind_study.pk, 2])]
    for url in pages:
        page = client.get(url).content.decode()
        for secret in (SECRET_NAME, SECRET_DESCRIPTION, "perturbed", "stand-in", "Q-Former"):
            assert secret.lower() not in page.lower(), f"{url} shows {secret!r}"
    for url in pages[1:]:
        assert INSTRUCTION in client.get(url).content.decode(), url
    admin_page = client_for(cast.admin).get(reverse("evaluation_results", args=[blind_study.pk])).content.decode()
    assert SECRET_NAME in admin_page and INSTRUCTION in admin_page


def test_overlays_reach_raters_only_when_the_study_allows(cast, blind_study, heatmap, client_for):
    item = blind_study.items.first()
    slide = item.slide
    position = blind_study.assignments.get(evaluator=cast.evaluator, item=item).position
    rater = client_for(cast.evaluator)
    page = rater.get(reverse("evaluation_rate", args=[blind_study.pk, position])).content.decode()
    assert "ev-no-overlays" in page  # the control is not offered
    listed = rater.get(reverse("slide_overlays", args=[slide.pk]))
    assert listed.status_code == 200 and listed.json() == {"overlays": []}
    assert rater.get(reverse("slide_overlay", args=[slide.pk, heatmap])).status_code == 404
    # The assigned pathologist (full access) still sees it.
    slide.part.case.assigned_to = cast.path1
    slide.part.case.save(update_fields=["assigned_to"])
    full = client_for(cast.path1).get(reverse("slide_overlays", args=[slide.pk])).json()["overlays"]
    assert [o["name"] for o in full] == [heatmap]
    # A study that allows overlays serves them to its raters (checked afresh: no stale grant).
    Study.objects.filter(pk=blind_study.pk).update(show_overlays=True)
    assert [o["name"] for o in rater.get(reverse("slide_overlays", args=[slide.pk])).json()["overlays"]] == [heatmap]
    assert rater.get(reverse("slide_overlay", args=[slide.pk, heatmap])).json()["values"] == [0.1, 0.9]
    page = rater.get(reverse("evaluation_rate", args=[blind_study.pk, position])).content.decode()
    assert "ev-no-overlays" not in page
    Study.objects.filter(pk=blind_study.pk).update(show_overlays=False)
    assert rater.get(reverse("slide_overlays", args=[slide.pk])).json() == {"overlays": []}


def test_a_raters_paired_texts_are_never_back_to_back(cast, case_factory):
    study = build(case_factory, [cast.evaluator], signed=8, ai=8)
    parts = [a.item.part_id for a in study.assignments.filter(evaluator=cast.evaluator)
             .select_related("item").order_by("position")]
    assert len(parts) == 16 and len(set(parts)) == 8
    gaps = [j - i for i in range(len(parts)) for j in range(i + 1, len(parts)) if parts[i] == parts[j]]
    assert min(gaps) > studies.WASHOUT  # at least three other texts between the two texts of a slide
    # The rule itself, on a queue that starts with both texts of one slide.
    assert studies.spaced_out([1, 2, 3, 4, 5, 6], {1: "a", 2: "a", 3: "b", 4: "b", 5: "c", 6: "c"}, gap=2) == \
        [1, 3, 5, 2, 4, 6]


# --- the shared annotation layer (issue #17: "evaluators see none unless the study says so") -------------
SHARED_COMMENT = "Seen by Dr Ana One for MRN 4471; compare S26-00042"
PRIVATE_COMMENT = "my own note: probably the AI arm"
RECT = {"type": "Polygon", "coordinates": [[[100, 200], [2100, 200], [2100, 1200], [100, 1200], [100, 200]]]}


def annotate(slide, owner, layer: str, comment: str):
    from webapp.slides import annotations as rules

    return rules.create(slide, owner, {"kind": "rectangle", "geometry": RECT, "layer": layer, "comment": comment})


def rater_writes(client, slide, annotation) -> list[int]:
    """Every way a rater could change the slide's annotations: create, update, delete, import, and the
    HTTP verbs the API does not offer (PUT, DELETE)."""
    listing = reverse("slide_annotations", args=[slide.pk])
    one = reverse("slide_annotation", args=[slide.pk, annotation.pk])
    body = json.dumps({"kind": "rectangle", "geometry": RECT, "layer": "shared", "comment": "rater"})
    geojson = json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": RECT, "properties": {"objectType": "annotation"}}]})
    return [
        client.post(listing, data=body, content_type="application/json").status_code,
        client.post(one, data=json.dumps({"comment": "changed"}), content_type="application/json").status_code,
        client.post(reverse("slide_annotation_delete", args=[slide.pk, annotation.pk])).status_code,
        client.post(reverse("slide_annotations_import", args=[slide.pk]), data=geojson,
                    content_type="application/geo+json").status_code,
        client.put(one, data=json.dumps({"comment": "changed"}), content_type="application/json").status_code,
        client.delete(one).status_code,
        client.put(listing, data=body, content_type="application/json").status_code,
    ]


def test_raters_see_the_shared_annotation_layer_only_when_the_study_allows(cast, blind_study, client_for):
    from webapp.audit.models import AuditEvent
    from webapp.slides.models import Annotation

    item = blind_study.items.first()
    slide = item.slide
    position = blind_study.assignments.get(evaluator=cast.evaluator, item=item).position
    shared = annotate(slide, cast.path1, "shared", SHARED_COMMENT)
    private = annotate(slide, cast.path1, "personal", PRIVATE_COMMENT)
    rater = client_for(cast.evaluator)
    rate_url = reverse("evaluation_rate", args=[blind_study.pk, position])
    listing = reverse("slide_annotations", args=[slide.pk])
    one = reverse("slide_annotation", args=[slide.pk, shared.pk])
    export = reverse("slide_annotations_export", args=[slide.pk])

    # Off (the default): no annotation panel, and the API answers as if the slide were not there.
    page = rater.get(rate_url).content.decode()  # the page gives the session its de-identified grant
    assert "data-pa-annotations" not in page and "data-ann-tool" not in page
    assert rater.get(reverse("slide_viewer_meta", args=[slide.pk])).status_code == 200  # the slide is shown
    assert [rater.get(url).status_code for url in (listing, one, export)] == [404, 404, 404]
    assert rater_writes(rater, slide, shared) == [404, 404, 404, 404, 405, 405, 405]

    # On: the shared layer, read-only, with no author, comment or time; never a personal annotation.
    Study.objects.filter(pk=blind_study.pk).update(show_annotations=True)
    page = rater.get(rate_url).content.decode()
    assert 'data-pa-annotations' in page and 'data-readonly="1"' in page
    for tool in ("data-ann-tool", 'data-ann-role="import"', 'data-ann-role="export"', 'data-ann-role="layer"',
                 'data-ann-role="delete"', 'maxlength="2000"', "annotation-labels"):
        assert tool not in page, tool
    response = rater.get(listing)
    assert response.status_code == 200
    data = response.json()
    assert data["can_edit"] is False and data["deidentified"] is True and data["user"] == ""
    assert [a["id"] for a in data["annotations"]] == [str(shared.pk)]
    seen = data["annotations"][0]
    assert seen["owner_name"] == "pathologist" and seen["owner"] == "" and seen["comment"] == ""
    assert seen["created_at"] is None and seen["can_edit"] is False and seen["area_mm2"] == pytest.approx(0.5)
    text = response.content.decode()
    for secret in ("dr_one", "Ana", "MRN", "4471", PRIVATE_COMMENT, str(private.pk)):
        assert secret not in text, secret
    detail = rater.get(one)
    assert detail.status_code == 200 and detail.json()["comment"] == "" and "dr_one" not in detail.content.decode()
    assert rater.get(reverse("slide_annotation", args=[slide.pk, private.pk])).status_code == 404
    assert rater.get(export).status_code == 403  # authors and comments: not for raters
    assert rater_writes(rater, slide, shared) == [403, 403, 403, 403, 405, 405, 405]

    # Nothing changed and nothing was written in the rater's name.
    assert Annotation.objects.count() == 2 and not Annotation.objects.filter(owner=cast.evaluator).exists()
    assert Annotation.objects.get(pk=shared.pk).comment == SHARED_COMMENT
    assert Annotation.objects.alive().count() == 2
    assert not AuditEvent.objects.filter(action__startswith="annotation_", user=cast.evaluator).exists()

    # The study is asked afresh on every request: switched off, or closed, the layer is gone at once.
    Study.objects.filter(pk=blind_study.pk).update(show_annotations=False)
    assert rater.get(listing).status_code == 404
    Study.objects.filter(pk=blind_study.pk).update(show_annotations=True, status="closed")
    assert rater.get(listing).status_code == 404
    # Another evaluator of no study with this slide gets nothing either.
    other = client_for(cast.outsider)
    assert other.get(listing).status_code == 404
    # The assigned pathologist still reads both of their layers, comments and names included.
    slide.part.case.assigned_to = cast.path1
    slide.part.case.save(update_fields=["assigned_to"])
    own = client_for(cast.path1).get(listing).json()["annotations"]
    assert {a["comment"] for a in own} == {SHARED_COMMENT, PRIVATE_COMMENT}


def test_rating_page_folds_the_slide_information_by_default(cast, blind_study, client_for):
    page = client_for(cast.evaluator).get(reverse("evaluation_rate", args=[blind_study.pk, 1])).content.decode()
    assert 'data-info="folded"' in page and 'data-info-key="rating"' in page
