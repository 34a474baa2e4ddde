"""The synthetic corpus: determinism, slides OpenSlide reads with MPP, reports, labels and splits."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import openslide
import pytest

from inference.synthetic import corpus as corpus_mod
from inference.synthetic.catalog import CATEGORIES, DIAGNOSES, LABEL_NAMES, ORGANS
from inference.synthetic.corpus import generate_corpus, load_manifest, plan_cases, render_case


def test_catalog_has_organs_and_diagnoses():
    assert len(DIAGNOSES) >= 12
    assert len({d.organ for d in DIAGNOSES}) >= 6
    assert set(ORGANS) >= {"colon", "prostate", "breast", "lung", "skin", "stomach"}
    for d in DIAGNOSES:
        assert d.category in CATEGORIES
        assert d.synonyms and d.display
        assert len(d.grades) == len(d.grade_phrases)
    assert len({d.key for d in DIAGNOSES}) == len(DIAGNOSES)


def test_plan_is_deterministic_balanced_and_split():
    a, b = plan_cases(64, seed=5), plan_cases(64, seed=5)
    assert a == b
    assert plan_cases(64, seed=6) != a
    counts = Counter(c["diagnosis"] for c in a)
    assert max(counts.values()) - min(counts.values()) <= 1
    splits = Counter(c["split"] for c in plan_cases(320, seed=1))
    assert splits["train"] > splits["val"] > 0 and splits["test"] > 0
    assert abs(splits["test"] / 320 - 0.15) < 0.05


def test_render_is_deterministic_by_seed():
    case = plan_cases(3, seed=11)[2]
    a = render_case(case, (512, 384))
    b = render_case(case, (512, 384))
    assert a.shape == (384, 512, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    other = render_case(plan_cases(3, seed=12)[2] | {"diagnosis": case["diagnosis"], "organ": case["organ"]},
                        (512, 384))
    assert not np.array_equal(a, other)


def test_generate_writes_slides_openslide_reads(tmp_path):
    manifest = generate_corpus(tmp_path / "c", n_cases=4, seed=2, size=768, workers=1)
    records = load_manifest(manifest)
    assert len(records) == 4
    again = generate_corpus(tmp_path / "d", n_cases=4, seed=2, size=768, workers=1)
    strip = [{k: v for k, v in r.items() if k != "slide_path"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "slide_path"} for r in load_manifest(again)]
    for rec in records:
        slide = openslide.OpenSlide(rec["slide_path"])
        assert slide.dimensions == (768, 768)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        assert {"label", "macro"} <= set(slide.associated_images)
        region = np.asarray(slide.read_region((0, 0), 0, (768, 768)))[..., :3]
        assert region.min() < 200  # there is stained tissue
        assert (region.min(-1) > 230).mean() > 0.15  # and glass around it
        slide.close()
        # Same pixels as rendering the case again (JPEG aside).
    assert (tmp_path / "c" / "manifest.jsonl").read_text().count("\n") == 4


def test_manifest_records_and_reports(small_corpus):
    _, records = small_corpus
    for rec in records:
        for key in ("slide", "report", "labels", "split", "case_id", "part", "organ", "diagnosis",
                    "clinical_history"):
            assert key in rec
        assert set(rec["labels"]) == set(LABEL_NAMES)
        assert rec["labels"]["diagnosis"] == rec["diagnosis"]
        assert rec["split"] in ("train", "val", "test")
        json.dumps(rec)
        # The part label, organ and a name of the diagnosis are in the report text.
        report = rec["report"]
        assert f"{rec['part']}. " in report
        assert ORGANS[rec["organ"]].display.lower() in report.lower()
        dx = corpus_mod.DIAGNOSIS_BY_KEY[rec["diagnosis"]]
        assert any(n.lower() in report.lower() for n in dx.names), report
    # Reports vary (house styles, synonyms, optional sections) and carry non-visible history.
    assert len({r["report"].split("\n")[0] for r in records}) >= 3
    assert sum(r["clinical_history"] in r["report"] for r in records) >= len(records) * 0.9
    assert all(r["clinical_history"] for r in records)


def test_cli(tmp_path):
    assert corpus_mod.main(["--out", str(tmp_path / "cli"), "--cases", "2", "--seed", "1", "--size", "512"]) == 0
    assert len(load_manifest(tmp_path / "cli")) == 2


def test_unknown_diagnosis_rejected():
    with pytest.raises(ValueError, match="unknown"):
        plan_cases(2, diagnoses=["colon_nonsense"])
