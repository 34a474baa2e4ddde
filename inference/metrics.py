"""Evaluation metrics: retrieval, label-match retrieval (PathAlign's Acc@1 / MVAcc@5), classification,
generation (BLEU-4, METEOR, ROUGE-L) and "correct diagnosis stated in the draft".

Conventions: similarity matrices are [queries, candidates] with larger = more similar. Every figure is in
[0, 1] (BLEU is sacrebleu's corpus BLEU-4 divided by 100).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------------------
# Retrieval


def _ranking(sim: np.ndarray) -> np.ndarray:
    """Candidate indices per query, best first (stable for ties: lower index first)."""
    return np.argsort(-np.asarray(sim, dtype=np.float64), axis=1, kind="stable")


def recall_at_k(
    sim: np.ndarray, ks: Iterable[int] = (1, 5, 10), targets: Sequence[int] | None = None
) -> dict:
    """Fraction of queries whose paired candidate is in the top k. Default pairing: query i <-> candidate i.

    Returns {"R@1": .., "R@5": .., ...}.
    """
    sim = np.asarray(sim)
    targets = np.arange(sim.shape[0]) if targets is None else np.asarray(targets)
    ranking = _ranking(sim)
    rank_of_target = np.argmax(ranking == targets[:, None], axis=1)  # 0 = best
    return {f"R@{k}": float(np.mean(rank_of_target < k)) for k in ks}


def label_match_accuracy(sim: np.ndarray, query_labels: Sequence, candidate_labels: Sequence) -> float:
    """Acc@1: the top candidate's label equals the query's label."""
    top = _ranking(sim)[:, 0]
    cand = np.asarray(candidate_labels, dtype=object)
    return float(np.mean([cand[t] == q for t, q in zip(top, query_labels, strict=True)]))


def majority_vote(labels: Sequence) -> Any:
    """Most common label; a tie goes to the tied label that appears first (i.e. the best-ranked)."""
    counts = Counter(labels)
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)


def majority_vote_accuracy(
    sim: np.ndarray, query_labels: Sequence, candidate_labels: Sequence, k: int = 5
) -> float:
    """MVAcc@k: the majority label among the top-k candidates equals the query's label."""
    ranking = _ranking(sim)[:, :k]
    cand = np.asarray(candidate_labels, dtype=object)
    votes = [majority_vote(list(cand[row])) for row in ranking]
    return float(np.mean([v == q for v, q in zip(votes, query_labels, strict=True)]))


def retrieval_report(sim_i2t: np.ndarray, labels: Sequence, k_vote: int = 5) -> dict[str, float]:
    """Paired retrieval in both directions + label-match figures, for a square slide x text matrix."""
    sim_i2t = np.asarray(sim_i2t)
    out: dict[str, float] = {}
    for direction, sim in (("i2t", sim_i2t), ("t2i", sim_i2t.T)):
        for key, value in recall_at_k(sim).items():
            out[f"{direction}_{key}"] = value
        out[f"{direction}_Acc@1"] = label_match_accuracy(sim, labels, labels)
        out[f"{direction}_MVAcc@{k_vote}"] = majority_vote_accuracy(sim, labels, labels, k_vote)
    return out


# ----------------------------------------------------------------------------------------------------------
# Classification


def accuracy(predicted: Sequence, truth: Sequence) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)])) if len(truth) else 0.0


def macro_f1(predicted: Sequence, truth: Sequence) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(list(truth), list(predicted), average="macro", zero_division=0))


def linear_probe(
    train_x: np.ndarray,
    train_y: Sequence,
    test_x: np.ndarray,
    test_y: Sequence,
    c: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Logistic regression on frozen (standardised) features: accuracy and macro-F1 on the test set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    clf.fit(np.asarray(train_x), list(train_y))
    pred = clf.predict(np.asarray(test_x))
    return {"accuracy": accuracy(pred, list(test_y)), "macro_f1": macro_f1(pred, list(test_y))}


# ----------------------------------------------------------------------------------------------------------
# Generation


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu, 13a tokenisation, lower-cased), in [0, 1]."""
    import sacrebleu

    score = sacrebleu.corpus_bleu(list(hypotheses), [list(references)], lowercase=True).score
    return min(1.0, float(score) / 100.0)  # sacrebleu can overshoot 100 by float rounding


class _NoWordNet:
    """A WordNet stand-in with no synsets: METEOR then matches exact words and Porter stems only.

    NLTK's METEOR asks WordNet for synonyms; the WordNet corpus is a separate download that must not
    happen at run time. Without synonym matching scores are slightly lower than with WordNet, equally for
    every system compared in the same run.
    """

    @staticmethod
    def synsets(*_args: Any, **_kwargs: Any) -> list:
        return []


def meteor(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean sentence METEOR (NLTK; exact + stem matching, no WordNet synonyms), in [0, 1]."""
    from nltk.translate.meteor_score import meteor_score

    scores = [
        meteor_score([_words(r)], _words(h), wordnet=_NoWordNet())
        for h, r in zip(hypotheses, references, strict=True)
    ]
    return float(np.mean(scores)) if scores else 0.0


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", text.lower())


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, Porter stemming), in [0, 1]."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references, strict=True)]
    return float(np.mean(scores)) if scores else 0.0


def generation_report(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    return {
        "BLEU-4": bleu4(hypotheses, references),
        "METEOR": meteor(hypotheses, references),
        "ROUGE-L": rouge_l(hypotheses, references),
    }


# ----------------------------------------------------------------------------------------------------------
# Diagnosis stated in a draft


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def diagnoses_stated(text: str, names: dict[str, Sequence[str]]) -> set[str]:
    """Which diagnoses a text names. ``names``: diagnosis key -> every phrasing (display name, synonyms).

    Matching is on whole words, case- and punctuation-insensitive. A match inside a longer match of another
    diagnosis does not count ("invasive adenocarcinoma" inside "invasive adenocarcinoma of the lung").
    """
    t = _norm(text)
    spans: list[tuple[int, int, str]] = []
    for key, phrasings in names.items():
        for name in phrasings:
            n = _norm(name)
            start = t.find(n)
            while start >= 0:
                spans.append((start, start + len(n), key))
                start = t.find(n, start + 1)
    stated = set()
    for s, e, key in spans:
        inside_other = any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) and k2 != key for s2, e2, k2 in spans)
        if not inside_other:
            stated.add(key)
    return stated


def diagnosis_correct(text: str, truth: str, names: dict[str, Sequence[str]]) -> bool:
    """The draft names the true diagnosis and no other one."""
    return diagnoses_stated(text, names) == {truth}


def diagnosis_stated_rate(
    texts: Sequence[str], truths: Sequence[str], names: dict[str, Sequence[str]]
) -> float:
    return float(np.mean([diagnosis_correct(t, y, names) for t, y in zip(texts, truths, strict=True)]))


# ----------------------------------------------------------------------------------------------------------
# Slide-level benchmark (corpus v2): balanced accuracy, AUC, attention localisation, streaming moments


def balanced_accuracy(predicted: Sequence, truth: Sequence) -> float:
    """Mean per-class recall over the classes present in ``truth`` (nan when empty)."""
    truth, predicted = list(truth), list(predicted)
    if not truth:
        return float("nan")
    recalls = []
    for c in sorted(set(truth), key=str):
        idx = [i for i, t in enumerate(truth) if t == c]
        recalls.append(np.mean([predicted[i] == c for i in idx]))
    return float(np.mean(recalls))


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC (ties count half; Mann-Whitney); nan unless both classes are present."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def localisation_auc(attention: Sequence[np.ndarray], lesion_fraction: Sequence[np.ndarray],
                     positive: float = 0.25) -> dict[str, float]:
    """Attention localisation against lesion masks, per slide with lesion patches.

    A patch is positive when at least ``positive`` of it lies in the lesion mask, negative when none of it
    does; patches in between are left out. Returns the mean per-slide AUC (``mean_auc``), the pooled AUC of
    per-slide attention ranks (``pooled_auc``: attention as a percentile within its slide) and
    ``n_slides``."""
    aucs, ranks, labels = [], [], []
    for a, frac in zip(attention, lesion_fraction, strict=True):
        a, frac = np.asarray(a, np.float64), np.asarray(frac, np.float64)
        keep = (frac >= positive) | (frac <= 0)
        y = frac[keep] >= positive
        if y.sum() == 0 or (~y).sum() == 0:
            continue
        aucs.append(roc_auc(a[keep], y))
        from scipy.stats import rankdata

        ranks.append(rankdata(a)[keep] / len(a))
        labels.append(y)
    if not aucs:
        return {"mean_auc": float("nan"), "pooled_auc": float("nan"), "n_slides": 0}
    return {"mean_auc": float(np.mean(aucs)),
            "pooled_auc": roc_auc(np.concatenate(ranks), np.concatenate(labels)), "n_slides": len(aucs)}


class RunningMoments:
    """Exact mean and variance per feature over batches of rows (Chan et al.'s parallel update), so that
    feature statistics come from one streaming pass over per-slide files."""

    def __init__(self) -> None:
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, x: np.ndarray) -> RunningMoments:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) == 0:
            return self
        nb, mb = len(x), x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self._mean is None:
            self.n, self._mean, self._m2 = nb, mb, m2b
            return self
        n = self.n + nb
        delta = mb - self._mean
        self._mean = self._mean + delta * nb / n
        self._m2 = self._m2 + m2b + delta**2 * self.n * nb / n
        self.n = n
        return self

    @property
    def mean(self) -> np.ndarray:
        return np.zeros(0) if self._mean is None else self._mean

    @property
    def var(self) -> np.ndarray:
        return np.zeros(0) if self._m2 is None else self._m2 / max(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)
