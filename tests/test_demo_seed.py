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
