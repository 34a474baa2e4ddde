"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from inference.metrics import (
    bleu4,
    diagnoses_stated,
    diagnosis_correct,
    diagnosis_stated_rate,
    label_match_accuracy,
    linear_probe,
    majority_vote,
    majority_vote_accuracy,
    meteor,
    recall_at_k,
    retrieval_report,
    rouge_l,
)

SIM = np.array(
    [
        [0.9, 0.1, 0.5],  # query 0: ranking 0, 2, 1 -> its pair is rank 0
        [0.8, 0.2, 0.7],  # query 1: ranking 0, 2, 1 -> rank 2
        [0.1, 0.9, 0.3],  # query 2: ranking 1, 2, 0 -> rank 1
    ]
)


def test_recall_at_k():
    assert recall_at_k(SIM, ks=(1, 2, 3)) == {
        "R@1": pytest.approx(1 / 3),
        "R@2": pytest.approx(2 / 3),
        "R@3": 1.0,
    }
    assert recall_at_k(SIM, ks=(1,), targets=[2, 0, 1]) == {"R@1": pytest.approx(2 / 3)}


def test_label_match_and_majority_vote():
    labels = ["a", "b", "a"]
    # tops: 0 (a) for q0 'a' ok; 0 (a) for q1 'b' wrong; 1 (b) for q2 'a' wrong
    assert label_match_accuracy(SIM, labels, labels) == pytest.approx(1 / 3)
    # top-3 = all candidates: majority 'a' for everyone -> q0, q2 right
    assert majority_vote_accuracy(SIM, labels, labels, k=3) == pytest.approx(2 / 3)
    assert majority_vote(["b", "a", "a", "b", "c"]) == "b"  # tie -> the better-ranked label
    rep = retrieval_report(SIM, labels, k_vote=3)
    assert rep["i2t_R@1"] == pytest.approx(1 / 3) and rep["t2i_Acc@1"] == pytest.approx(
        label_match_accuracy(SIM.T, labels, labels)
    )


def test_generation_metrics_by_hand():
    assert bleu4(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert bleu4(["a b c d"], ["w x y z"]) == pytest.approx(0.0)
    # ROUGE-L: LCS("a b c d", "a c d e") = 3 -> P = R = 3/4
    assert rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)
    # METEOR on identical 4-word sentences: F = 1, one chunk -> penalty 0.5 * (1/4)^3
    assert meteor(["w x y z"], ["w x y z"]) == pytest.approx(1 - 0.5 * (1 / 4) ** 3)
    assert meteor(["glands glands"], ["gland"]) > 0  # stems match without WordNet


def test_linear_probe_separable():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(-3, 1, (20, 4)), rng.normal(3, 1, (20, 4))]
    y = ["a"] * 20 + ["b"] * 20
    assert linear_probe(x[::2], y[::2], x[1::2], y[1::2])["accuracy"] == 1.0


NAMES = {
    "colon_ca": ["Invasive adenocarcinoma", "Adenocarcinoma of the colon"],
    "lung_ca": ["Lung adenocarcinoma", "Invasive adenocarcinoma of the lung"],
    "adenoma": ["Tubular adenoma", "Tubular adenoma with low-grade dysplasia"],
}


def test_diagnosis_stated():
    assert diagnoses_stated("A. Colon: invasive adenocarcinoma, G2.", NAMES) == {"colon_ca"}
    assert diagnoses_stated("Invasive adenocarcinoma of the lung.", NAMES) == {"lung_ca"}
    assert diagnoses_stated("tubular adenoma with low - grade dysplasia", NAMES) == {"adenoma"}
    assert diagnoses_stated("no tumour", NAMES) == set()
    assert diagnosis_correct("Tubular adenoma.", "adenoma", NAMES)
    assert not diagnosis_correct("Tubular adenoma; invasive adenocarcinoma.", "adenoma", NAMES)
    assert (
        diagnosis_stated_rate(["tubular adenoma", "lung adenocarcinoma"], ["adenoma", "colon_ca"], NAMES)
        == 0.5
    )


def test_v2_draft_scoring_knows_the_synonyms_the_v2_reports_use():
    from inference import metrics
    from inference.evaluate import diagnosis_names

    names = diagnosis_names(["lung_normal", "lung_adenocarcinoma"], synonyms=True)
    assert "Benign lung tissue" in names["lung_normal"]
    assert metrics.diagnosis_correct("Benign lung tissue.", "lung_normal", names)
    assert metrics.diagnosis_correct("Adenocarcinoma of lung, acinar.", "lung_adenocarcinoma", names)
    plain = diagnosis_names(["lung_normal", "lung_adenocarcinoma"])  # v1 prompts and scoring: unchanged
    assert "Benign lung tissue" not in plain["lung_normal"]
