"""Gated-attention MIL and mean-pool baselines, streaming feature statistics, benchmark metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference import metrics
from inference.mil import FeatureBag, MeanPoolLogReg, MILBaseline, streaming_feature_stats

DIM = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bag(rng: np.random.Generator, n: int, k_lesion: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bag on a mixed benign background (three tissue types in bag-specific proportions) with k lesion
    instances; returns (features [n, DIM], lesion flags [n])."""
    props = rng.dirichlet([1.0, 1.0, 1.0])
    kinds = rng.choice(3, size=n, p=props)
    x = centres[kinds] + rng.normal(0, 1.0, (n, DIM))
    x += rng.normal(0, 0.4, DIM)  # a slide-wide offset (staining, thickness) in every feature
    flags = np.zeros(n, bool)
    if k_lesion:
        idx = rng.choice(n, k_lesion, replace=False)
        x[idx] = centres[kinds[idx]] + rng.normal(0, 1.0, (k_lesion, DIM))
        x[idx, 12:] += 6.0  # the lesion: a shift in a few features
        flags[idx] = True
    return x.astype(np.float32), flags


def _bags(seed: int, n_bags: int, n: int, k: int) -> tuple[list[FeatureBag], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 2.5, (3, DIM)).astype(np.float32)
    centres[:, 12:] /= 2.5  # the tissue types differ a little in the lesion's features too
    bags, flags = [], []
    for i in range(n_bags):
        pos = i % 2
        x, f = _bag(rng, n, k if pos else 0, centres)
        bags.append(FeatureBag(None, pos, pos, array=x))
        flags.append(f)
    return bags, flags


def test_attention_ranks_planted_lesion_patches_highest():
    train, _ = _bags(0, 40, 100, 5)
    mil = MILBaseline(n_classes=2, hidden=32, attn=16, epochs=10, seed=0, max_instances=100).fit(train)
    test, flags = _bags(1, 10, 100, 5)
    out = mil.predict(test)
    for a, f, b in zip(out.attention, flags, test, strict=True):
        if b.malignant:
            top = np.argsort(-a)[: f.sum()]
            assert set(top.tolist()) == set(np.nonzero(f)[0].tolist())
    loc = metrics.localisation_auc(out.attention, [f.astype(float) for f in flags])
    assert loc["n_slides"] == 5 and loc["mean_auc"] > 0.99


def test_mil_beats_mean_pool_on_one_percent_bags():
    train, _ = _bags(2, 60, 200, 2)  # 1% lesion
    test, _ = _bags(3, 40, 200, 2)
    mil = MILBaseline(n_classes=2, hidden=32, attn=16, epochs=15, seed=0, max_instances=200).fit(train)
    mp = MeanPoolLogReg().fit(train)
    y = [b.malignant for b in test]
    auc_mil = metrics.roc_auc(mil.predict(test).malignant_prob, y)
    auc_mp = metrics.roc_auc(mp.predict(test, 2)[0], y)
    assert auc_mil > 0.95
    assert auc_mp < 0.8
    assert auc_mil > auc_mp + 0.15


def test_streaming_feature_stats_equal_in_memory(tmp_path):
    from inference.features import SlideFeatures

    rng = np.random.default_rng(5)
    arrays = [rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 2), (int(n), 7)).astype(np.float32)
              for n in (1, 13, 250, 40)]
    bags = []
    for i, a in enumerate(arrays):
        sf = SlideFeatures(torch.from_numpy(a), np.zeros((len(a), 2), np.int64), 448, 224, 1.0, 0.5, (100, 100))
        path = sf.save(tmp_path / f"s{i}.safetensors")
        bags.append(FeatureBag(str(path), 0, 0))
    mean, std, n = streaming_feature_stats(bags)
    full = np.concatenate(arrays).astype(np.float64)
    assert n == len(full)
    np.testing.assert_allclose(mean, full.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(std, full.std(0), rtol=1e-10, atol=1e-10)
    # Any split into chunks gives the same answer.
    rm = metrics.RunningMoments()
    for chunk in np.array_split(full, [3, 4, 100, 101, 200]):
        rm.update(chunk)
    np.testing.assert_allclose(rm.var, full.var(0), rtol=1e-10)


def test_benchmark_metrics_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(0, 1, 200) + y + np.round(rng.normal(0, 1, 200))  # with ties
    assert metrics.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))
    t = rng.choice(["a", "b", "c"], 100, p=[0.7, 0.2, 0.1])
    p = np.where(rng.random(100) < 0.6, t, "a")
    assert metrics.balanced_accuracy(p, t) == pytest.approx(balanced_accuracy_score(t, p))
    # Localisation: ambiguous patches (0 < fraction < 0.25) are left out.
    loc = metrics.localisation_auc([np.array([0.5, 0.1, 0.3, 0.1])], [np.array([1.0, 0.0, 0.1, 0.0])])
    assert loc["mean_auc"] == 1.0 and loc["n_slides"] == 1


def test_mean_pool_predicts_an_empty_set():
    train, _ = _bags(4, 6, 20, 2)
    mal, dia = MeanPoolLogReg().fit(train).predict([], 2)
    assert mal.shape == (0,) and dia.shape == (0, 2)
