"""Slide -> features pipeline, corpus feature cache, and a linear probe: built-in encoder vs random features."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from inference.encoders import build_encoder
from inference.features import (
    SlideFeatures,
    extract_corpus_features,
    extract_slide_features,
    load_feature_index,
)
from inference.slides import open_slide, patch_grid


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(2)
    return build_encoder({"kind": "builtin"})


def test_slide_features_match_grid_and_progress(small_corpus, encoder, tmp_path):
    _, records = small_corpus
    path = records[0]["slide_path"]
    calls = []
    sf = extract_slide_features(path, encoder, max_patches=6, batch_size=4, workers=3,
                                progress=lambda d, t: calls.append((d, t)))
    grid = patch_grid(open_slide(path), max_patches=6)
    assert isinstance(sf, SlideFeatures)
    assert sf.features.shape == (len(grid), encoder.dim) and sf.features.dtype == torch.float32
    assert np.array_equal(sf.coords, grid.coords) and sf.coords.dtype == np.int64
    assert sf.patch_size_level0 == 448 and sf.target_mpp == 1.0 and sf.slide_mpp == pytest.approx(0.5)
    assert sf.dimensions == (1536, 1536)
    assert calls and calls[-1] == (len(grid), len(grid))
    assert sf.encode_seconds > 0 and sf.read_seconds > 0 and sf.wall_seconds >= sf.encode_seconds
    # Same features whatever the number of reading threads, and the same as encoding patches directly.
    one = extract_slide_features(path, encoder, max_patches=6, batch_size=6, workers=1)
    assert torch.allclose(one.features, sf.features, atol=1e-4)
    sf.save(tmp_path / "x.safetensors")
    back = SlideFeatures.load(tmp_path / "x.safetensors")
    assert torch.equal(back.features, sf.features) and np.array_equal(back.coords, sf.coords)
    assert back.encoder_spec == encoder.spec and back.dimensions == sf.dimensions


def test_corpus_cache_and_probe(small_corpus, encoder, tmp_path):
    """A logistic-regression probe on patch features separates diagnoses far better with the built-in
    encoder than with a random conv net; train and test patches come from different slides."""
    manifest, records = small_corpus
    out = tmp_path / "feats"
    idx = extract_corpus_features(manifest, encoder, out, max_patches=6, workers=2)
    rows = load_feature_index(out)
    assert idx.exists() and len(rows) == len(records)
    assert all(r["n_patches"] > 0 for r in rows)
    mtimes = {r["features_path"]: __import__("os").stat(r["features_path"]).st_mtime_ns for r in rows}
    extract_corpus_features(manifest, encoder, out, max_patches=6, workers=2)  # cached: nothing rewritten
    assert all(__import__("os").stat(p).st_mtime_ns == t for p, t in mtimes.items())

    rnd = build_encoder({"kind": "random", "seed": 0, "dim": 256})
    rnd_out = tmp_path / "rnd"
    extract_corpus_features(manifest, rnd, rnd_out, max_patches=6, workers=2)

    def dataset(rows_):
        X, y, slide = [], [], []
        for k, r in enumerate(rows_):
            f = SlideFeatures.load(r["features_path"]).features.numpy()
            X.append(f)
            y += [r["diagnosis"]] * len(f)
            slide += [k] * len(f)
        return np.concatenate(X), np.array(y), np.array(slide)

    def probe(rows_):
        X, y, slide = dataset(rows_)
        # Hold out the last slide of each diagnosis.
        last = {}
        for k, r in enumerate(rows_):
            last[r["diagnosis"]] = k
        test = np.isin(slide, list(last.values()))
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        clf.fit(X[~test], y[~test])
        return float((clf.predict(X[test]) == y[test]).mean())

    acc_builtin = probe(rows)
    acc_random = probe(load_feature_index(rnd_out))
    print(f"probe accuracy: built-in {acc_builtin:.2f}, random conv {acc_random:.2f}")
    assert acc_builtin >= 0.6
    assert acc_builtin >= acc_random + 0.15
