"""make run's demo cases: corpus v2 parts (one to five slides each, focal lesions first on the worklists),
every slide of at least 10 mm of field in the real configuration. Seeded here at a small size, for real:
rendered slide files, ingested through the same code as an upload, in the test database."""
from __future__ import annotations

import openslide
import pytest

from webapp import demo
from webapp.cases.models import Case


def test_the_real_demo_slides_cover_at_least_10_mm():
    width, height = demo.DEMO_CORPUS["size"]
    assert width * demo.DEMO_CORPUS["mpp"] >= 10_000  # um: the minimum field
    assert height * demo.DEMO_CORPUS["mpp"] >= 4_000


@pytest.fixture
def small_demo(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    monkeypatch.setattr(demo, "DEMO_CORPUS", {**demo.DEMO_CORPUS, "size": (1600, 1000)})
    monkeypatch.setattr(demo, "DEMO_CASES", 1)
    monkeypatch.setattr(demo, "ARCHIVE_CASES", 1)
    monkeypatch.setattr(demo, "OPEN_FOCAL_CASES", 1)


def test_demo_cases_are_corpus_v2_parts_with_focal_lesions_first(db, small_demo):
    context = demo.DemoContext(log=lambda message: None)
    demo.seed_users(context)
    demo.seed_cases(context)
    parts = demo.demo_parts()
    open_parts, archive_parts = demo.open_and_archive(parts)
    assert len(parts) == 2 and len(context.cases) == 1 and len(context.archive) == 1
    # Seed 2026 draws a prostate part of one slide, then a lung part of four with a focal lesion on one:
    # the focal part comes first on the worklists, although the corpus has it second.
    assert [p[0]["organ"] for p in parts] == ["prostate", "lung"] and len(parts[1]) == 4
    assert {r["stratum"] for r in open_parts[0]} & set(demo.FOCAL) and open_parts[0][0]["organ"] == "lung"
    assert {p[0]["organ"] for p in parts} <= set(demo.DEMO_CORPUS["organs"])
    # Every part's slides were ingested into one Part, blocks numbered in slide order, files as rendered.
    cases = context.cases + [case for case, _ in context.archive]
    for case, records in zip(cases, open_parts + archive_parts, strict=True):
        slides = list(case.parts.get().slides.order_by("block_label"))
        assert [s.block_label for s in slides] == [str(i) for i in range(1, len(records) + 1)]
        for slide, record in zip(slides, records, strict=True):
            with openslide.OpenSlide(str(slide.path)) as osr:
                assert osr.dimensions == (1600, 1000) and float(osr.properties["openslide.mpp-x"]) == 1.0
            assert slide.original_filename == record["slide"].split("/")[-1]
    assert context.manifest == [p[0] for p in open_parts + archive_parts]  # one record per case, in order
    # Idempotent: a second seed changes nothing.
    again = demo.DemoContext(log=lambda message: None)
    demo.seed_users(again)
    demo.seed_cases(again)
    assert Case.objects.count() == 2 and [c.pk for c in again.cases] == [c.pk for c in context.cases]


def test_the_default_demo_bundle_drafts_demo_sized_slides_without_the_range_warning(
        db, cast, case_factory, client_for, settings, tmp_path):
    """`make run`'s model on `make run`'s slides: the default demo bundle (the v2 one shipped in
    inference/demo_bundle_v2, whichever version) drafts a part of a demo-sized slide (corpus v2, 10 mm: up to
    ~1,200 tissue patches) with no "far larger than any this model was trained on" warning, because its
    bundle.json records whole training slides and the web app keeps that record; the v1 bundle (9-patch
    fields) on the same kind of slide still gets the warning."""
    import shutil

    from django.urls import reverse

    from inference.demo import DEMO_NAME, SHIPPED_V1, ensure_demo_bundle
    from tests.model_fixtures import prime_features
    from tests.test_reports_support import fake_slide
    from webapp.analysis import pipeline, runtime
    from webapp.jobs.models import Job, JobState
    from webapp.jobs.runner import execute
    from webapp.reports import services
    from webapp.reports.drafting import RANGE_FACTOR
    from webapp.reports.models import AIDraft

    settings.VAR_DIR = tmp_path / "var"
    settings.DRAFT_NUM_BEAMS = 1
    settings.DRAFT_MAX_NEW_TOKENS = 24
    runtime.forget_models()
    client = client_for(cast.path1)

    def draft_of_a_demo_sized_slide(bundle, patches: int = 1200) -> AIDraft:
        case = case_factory(assigned_to=cast.path1)
        prime_features(fake_slide(case.parts.get()), bundle, n=patches, dim=bundle.dims["feature"])
        response = client.post(reverse("report_draft", args=[case.pk]), {"method": "qformer"},
                               HTTP_HX_REQUEST="true")
        assert response.status_code == 200, response.content
        job = execute(Job.objects.filter(case=case, kind="draft_report").latest("created_at").pk)
        assert job.state == JobState.SUCCEEDED, job.error
        return AIDraft.objects.get(section=services.open_report(case).sections.get())

    try:
        v2 = pipeline.register_bundle(ensure_demo_bundle(tmp_path / "models" / "demo", log=lambda m: None),
                                      activate=True)
        assert v2.name == DEMO_NAME
        # The range check reads bundle.json's training.patches_per_slide, as the ModelBundle row keeps it:
        # a v2 bundle records it (were it missing, the check would be silently off, not passed).
        largest = (v2.training.get("patches_per_slide") or {}).get("max")
        assert largest and RANGE_FACTOR * largest >= 1200, v2.training
        ai = draft_of_a_demo_sized_slide(v2)
        assert ai.text.strip() and ai.bundle_id == v2.pk
        assert not any("far larger" in w for w in ai.warnings), ai.warnings

        v1_dir = tmp_path / "models" / "demo-v1"
        shutil.copytree(SHIPPED_V1, v1_dir)
        v1 = pipeline.register_bundle(v1_dir, activate=True)
        ai = draft_of_a_demo_sized_slide(v1)
        assert any(f"(1,200 tissue patches) is far larger than any this model ({v1.key}) was trained on" in w
                   for w in ai.warnings), ai.warnings
    finally:
        runtime.forget_models()
