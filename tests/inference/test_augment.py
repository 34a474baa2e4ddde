"""Scanner jitter (inference/augment.py): deterministic per patch, a real change of stain and optics, a
jittered encoder whose features are labelled as such, and a training view of a corpus that never holds
held-out slides."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference import demo_v2
from inference.augment import JitteredEncoder, ScannerJitter, build_training_encoder
from inference.encoders import build_encoder
from inference.evaluate import extract_v2_features
from inference.features import load_feature_index, read_meta
from inference.synthetic import corpus_v2 as c2

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _patch(seed: int = 0) -> np.ndarray:
    return c2.render_generic("stroma", 224, 224, 1.0, np.random.default_rng(seed))


def test_jitter_is_deterministic_per_patch_and_seed():
    patch = _patch()
    a, b = ScannerJitter(seed=1), ScannerJitter(seed=1)
    assert np.array_equal(a.apply(patch), b.apply(patch.copy()))
    assert a.profile_for(patch) != ScannerJitter(seed=2).profile_for(patch)
    assert a.profile_for(patch) != a.profile_for(_patch(seed=1))  # another patch, another draw


def test_jitter_draws_within_its_ranges_and_changes_stain_and_sharpness():
    jitter = ScannerJitter(seed=3)
    rng = np.random.default_rng(0)
    profiles = [jitter.draw(rng) for _ in range(200)]
    assert all(abs(p.h_rotation_deg) <= 15 and 0.8 <= p.h_scale <= 1.3 and 0.8 <= p.gamma <= 1.3
               and 0 <= p.blur_sigma_px <= 1.6 and 55 <= p.jpeg_quality <= 92 for p in profiles)
    assert max(p.h_rotation_deg for p in profiles) > 10 and min(p.h_rotation_deg for p in profiles) < -10

    patch = _patch()
    out = jitter.apply(patch)
    assert out.shape == patch.shape and out.dtype == np.uint8
    # Re-stained: the mean colour moves; re-scanned: the pixels are not the same.
    assert np.abs(out.astype(float) - patch).mean() > 2.0
    sharp = ScannerJitter(seed=3, rotation_deg=0, scale=(1, 1), gamma=(1, 1), blur_sigma_px=(0, 0),
                          jpeg_quality=(95, 95)).apply(patch)
    blurred = ScannerJitter(seed=3, rotation_deg=0, scale=(1, 1), gamma=(1, 1), blur_sigma_px=(1.6, 1.6),
                            jpeg_quality=(95, 95)).apply(patch)
    grad = lambda im: np.abs(np.diff(im.astype(float).mean(2), axis=1)).mean()  # noqa: E731
    assert grad(blurred) < 0.8 * grad(sharp)


def test_jittered_encoder_labels_its_features_and_rebuilds_from_its_spec():
    plain = build_encoder({"kind": "builtin"})
    jittered = JitteredEncoder(plain, ScannerJitter(seed=4))
    assert jittered.spec["augmentation"]["seed"] == 4 and jittered.dim == plain.dim
    patches = np.stack([_patch(s) for s in range(3)])
    f_plain, f_jit = plain.encode(patches), jittered.encode(patches)
    assert f_jit.shape == f_plain.shape and not torch.allclose(f_jit, f_plain)
    again = build_training_encoder(jittered.spec)
    assert isinstance(again, JitteredEncoder) and again.spec == jittered.spec
    assert torch.equal(again.encode(patches), f_jit)
    assert not isinstance(build_training_encoder({"kind": "builtin"}), JitteredEncoder)


def test_augmented_view_holds_training_slides_only_and_its_features_are_jittered(tmp_path, monkeypatch):
    monkeypatch.setattr(c2, "N_VARIANTS", 1)
    cfg = demo_v2.preset("tiny", cases=6, seed=5, size=1024, mpp=1.0, organs=("lung",), multi_share=0.0,
                         workers=1, device="cpu")
    source = tmp_path / "build" / "corpus"
    demo_v2.build_corpus(cfg, source, log=lambda m: None)
    recs = c2.load_manifest(source)
    train = [r for r in recs if r["split"] == "train"]
    assert train and len(train) < len(recs)  # held-out slides exist and must stay out

    view = tmp_path / "aug" / "corpus"
    info = demo_v2.build_augmented_corpus(source, view, ("train",))
    assert info["slides"] == len(train)
    got = c2.load_manifest(view)
    assert [r["slide_id"] for r in got] == [r["slide_id"] for r in train]
    assert all(r["split"] == "train" and r["slide_path"] == s["slide_path"] for r, s in zip(got, train, strict=True))
    assert json.loads((view / "corpus.json").read_text())["view_of"] == str(source.resolve())

    jitter = ScannerJitter(seed=7)
    demo_v2.build_features(cfg, view, view / demo_v2.FEATURES, log=lambda m: None, augmentation=jitter.to_dict())
    plain_dir = tmp_path / "plain"
    extract_v2_features(source, build_encoder({"kind": "builtin"}), plain_dir, workers=1, log=lambda m: None)
    rows = load_feature_index(view / demo_v2.FEATURES)
    assert [r["split"] for r in rows] == ["train"] * len(train)
    for row in rows:
        meta = read_meta(view / demo_v2.FEATURES / row["features"])
        assert meta.encoder_spec["augmentation"]["seed"] == 7
        plain = read_meta(plain_dir / row["features"])
        assert plain.n_patches == meta.n_patches and "augmentation" not in plain.encoder_spec
