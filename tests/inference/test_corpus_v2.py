"""Synthetic WSI corpus v2: determinism, lesion-mask geometry, OpenSlide, splits, reports and prompts.

Fixture sizes are small (2,048 px at 1 um/px, one atlas variant per tissue type): the geometry and the
file format are what is tested; the full-size corpus is the benchmark's (docs/model.md, "Benchmark v2").
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from inference.synthetic import corpus_v2 as c2
from inference.synthetic.lesions import stratum_of
from inference.synthetic.scanners import HELD_OUT_PROFILE
from inference.synthetic.templates_v2 import (
    HELD_OUT_TEMPLATES,
    TEMPLATES,
    ZERO_SHOT_PROMPTS,
    prompt_overlaps_reports,
    write_part_report,
)

SIZE = 2048
MPP = 1.0


@pytest.fixture(autouse=True)
def _one_variant(monkeypatch):
    monkeypatch.setattr(c2, "N_VARIANTS", 1)


def _focal_part(seed: int = 7) -> dict:
    part = c2.plan_parts(1, seed, ["colon"], multi_share=0.0, size=(SIZE, SIZE), mpp=MPP)[0]
    part.update(has_lesion=True, lesion_diagnosis="colon_adenocarcinoma", grade_index=2, profile="site-b")
    part["slides"][0].update(diagnosis="colon_adenocarcinoma", planned_stratum="1-5%", target_share=0.03,
                             n_foci=2, n_types=2)
    return part


@pytest.fixture(scope="module")
def focal(tmp_path_factory):
    """One part, one slide with two foci covering ~3% of the tissue; (records, out dir)."""
    c2._ATLAS.clear()
    out = tmp_path_factory.mktemp("v2")
    old = c2.N_VARIANTS
    c2.N_VARIANTS = 1
    try:
        recs = c2._part_job((_focal_part(), str(out)))
    finally:
        c2.N_VARIANTS = old
    return recs, out


def test_same_seed_same_bytes(focal, tmp_path):
    recs, out = focal
    c2._ATLAS.clear()  # nothing cached: the second rendering starts from the seed alone
    again = c2._part_job((_focal_part(), str(tmp_path)))
    assert again == recs
    for name in (recs[0]["slide"], recs[0]["mask"], recs[0]["sidecar"]):
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_lesion_mask_geometry(focal):
    recs, out = focal
    rec = recs[0]
    side = json.loads((out / rec["sidecar"]).read_text())
    mask = np.asarray(Image.open(out / rec["mask"]))
    ds = side["mask_downsample"]
    tissue, lesion = mask >= 1, mask == 2
    share = lesion.sum() / tissue.sum()
    assert 0.01 <= share <= 0.05 and rec["stratum"] == "1-5%" == stratum_of(rec["lesion_share"])
    assert share == pytest.approx(rec["lesion_share"], rel=1e-6)
    assert len(side["foci"]) == 2
    for focus in side["foci"]:  # every focus lies on tissue, inside the slide
        x0, y0, x1, y1 = focus["box"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        pts = np.asarray(focus["polygon"], float)
        cy, cx = int(pts[:, 1].mean() / ds), int(pts[:, 0].mean() / ds)
        assert tissue[cy, cx]
        assert focus["area_px"] > 0
    # The mask aligns with the painted lesion: malignant glands are more hematoxylin-dense than the
    # benign background, inside the mask and not outside it.
    with openslide.OpenSlide(str(out / rec["slide"])) as s:
        rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"), np.float32)
    od = -np.log((rgb + 1) / 256)
    big = np.kron(mask, np.ones((ds, ds), np.uint8))[:SIZE, :SIZE]
    inner = np.asarray(Image.fromarray((big == 2).astype(np.uint8)).filter(
        __import__("PIL.ImageFilter", fromlist=["MinFilter"]).MinFilter(9))) > 0  # away from the border
    outside = big == 1
    h_in, h_out = od[inner].mean(0), od[outside].mean(0)
    assert np.abs(h_in - h_out).max() > 0.03
    glass = big == 0
    assert od[glass].mean() < 0.15 < od[outside].mean()


def test_openslide_reads_mpp_size_and_pyramid(focal):
    recs, out = focal
    with openslide.OpenSlide(str(out / recs[0]["slide"])) as s:
        assert s.dimensions == (SIZE, SIZE)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert s.level_count >= 2 and s.level_downsamples[1] == pytest.approx(4.0)
        assert {"label", "macro", "thumbnail"} <= set(s.associated_images)
        assert s.properties["aperio.ScanScope ID"] == "SYNTH-B7"


def test_plan_splits_profiles_templates_and_strata():
    parts = c2.plan_parts(60, seed=3, size=(20000, 20000), mpp=0.5)
    splits = {p["split"] for p in parts}
    assert splits == {"train", "val", "test", "new-site"}
    for p in parts:
        held = p["profile"] == HELD_OUT_PROFILE.name
        assert held == (p["split"] == "new-site")  # the new site is never in train/val/test
        assert (p["template"] in HELD_OUT_TEMPLATES) == (p["split"] in ("test", "new-site"))
        assert 1 <= len(p["slides"]) <= 5
        for s in p["slides"]:
            assert 2 <= s["n_types"] <= 4
            if s["planned_stratum"] in ("<1%", "1-5%"):
                assert 1 <= s["n_foci"] <= 5 and 0.001 <= s["target_share"] <= 0.05
    strata = {s["planned_stratum"] for p in parts for s in p["slides"]}
    assert strata == {"<1%", "1-5%", "diffuse", "normal"}
    # Parts where the finding is on one slide only exist.
    assert any(sum(s["planned_stratum"] != "normal" for s in p["slides"]) == 1 and len(p["slides"]) > 1
               for p in parts)
    assert c2.plan_parts(60, seed=3) == c2.plan_parts(60, seed=3)


def test_reports_state_grade_margin_and_site_and_prompts_differ():
    rng = np.random.default_rng(0)
    reports = []
    from inference.synthetic.catalog import DIAGNOSIS_BY_KEY

    for key in c2.v2_diagnoses():
        organ = key.split("_")[0]
        for t in TEMPLATES:
            for grade in range(len(DIAGNOSIS_BY_KEY[key].grades)) or [-1]:
                part = {"organ": organ, "part": "B", "site": "right upper lobe", "procedure": "lobectomy",
                        "diagnosis": key, "grade_index": grade, "has_lesion": True,
                        "slides": [{"diagnosis": key, "lesion_share": 0.02}, {"diagnosis": "x", "lesion_share": 0}],
                        "extent": "focal, 1 focus, up to 0.4 mm",
                        "margin": {"involved": False, "distance_mm": 2.5}}
                text, final = write_part_report(part, t, rng)
                assert "right upper lobe" in text.lower() and final.split(",")[0].lower() in text.lower()
                reports.append(text)
    assert prompt_overlaps_reports(reports) == []
    assert set(ZERO_SHOT_PROMPTS) >= set(c2.v2_diagnoses())
    text, _ = write_part_report({"organ": "colon", "part": "A", "site": "sigmoid", "procedure": "resection",
                                 "diagnosis": "colon_adenocarcinoma", "grade_index": 2, "has_lesion": True,
                                 "slides": [{"diagnosis": "colon_adenocarcinoma", "lesion_share": 0.02}],
                                 "margin": {"involved": True, "distance_mm": 0.0}}, "classic", rng)
    assert "(G3)" in text and "inked margin" in text and "marked nuclear atypia" in text


def test_cli_writes_manifest_masks_and_sidecars(tmp_path):
    rc = c2.main(["--out", str(tmp_path), "--cases", "1", "--seed", "11", "--size", "1024", "--mpp", "1.0",
                  "--organs", "lung", "--multi-share", "0", "--workers", "1"])
    assert rc == 0
    recs = c2.load_manifest(tmp_path)
    assert recs and all(Path(r["slide_path"]).is_file() and Path(r["mask_path"]).is_file() for r in recs)
    assert {"split", "stratum", "lesion_share", "report", "part_diagnosis", "profile", "labels"} <= set(recs[0])
    assert json.loads((tmp_path / "corpus.json").read_text())["corpus_version"] == 2


def test_patch_lesion_fraction():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:4, 2:4] = 2
    frac = c2.patch_lesion_fraction(mask, 10, np.array([[20, 20], [0, 0], [20, 20]]), 20)
    np.testing.assert_allclose(frac, [1.0, 0.0, 1.0])
    frac = c2.patch_lesion_fraction(mask, 10, np.array([[10, 10]]), 20)
    np.testing.assert_allclose(frac, [0.25])
