"""Statistics for rating studies, as plain functions of plain data (no Django), so tests can check them
against hand-computed values.

Conventions: scores are integers 1-5; "acceptable" means 4-5 (PathAlign: accurate with no clinically
significant error). Undefined figures (too few ratings, no variation) are None rather than NaN, so they
serialise to JSON and render as a dash.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from inference.metrics import generation_report

SCORES = (1, 2, 3, 4, 5)
ACCEPTABLE_MIN = 4


@dataclass(frozen=True)
class RatingRow:
    """One rating: which item, which rater, which source (hidden from raters), the score, the error kind."""

    item: str
    rater: str
    source: str
    score: int
    error_kind: str = ""


def _clean(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def wilson_interval(successes: int, total: int, alpha: float = 0.05) -> dict:
    """Share `successes/total` with its Wilson score interval (statsmodels). Empty: all None."""
    if total <= 0:
        return {"k": successes, "n": total, "share": None, "low": None, "high": None}
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, total, alpha=alpha, method="wilson")
    return {"k": successes, "n": total, "share": successes / total, "low": float(low), "high": float(high)}


def item_acceptable(scores: Sequence[int]) -> bool:
    """An item counts as rated 4-5 when a strict majority of its ratings are 4-5 (a tie counts against:
    with two raters who disagree the item is not called accurate)."""
    good = sum(1 for score in scores if score >= ACCEPTABLE_MIN)
    return good * 2 > len(scores)


def per_source_summary(rows: Iterable[RatingRow]) -> dict[str, dict]:
    """Per source: share of items rated 4-5 (majority of raters) and of ratings 4-5, each with a 95% Wilson
    interval; the score distribution; error kinds; mean score."""
    by_source: dict[str, list[RatingRow]] = defaultdict(list)
    for row in rows:
        by_source[row.source].append(row)
    out = {}
    for source, source_rows in by_source.items():
        by_item: dict[str, list[int]] = defaultdict(list)
        for row in source_rows:
            by_item[row.item].append(row.score)
        scores = [row.score for row in source_rows]
        counts = Counter(scores)
        errors = Counter(row.error_kind for row in source_rows if row.error_kind)
        out[source] = {
            "items": wilson_interval(sum(item_acceptable(s) for s in by_item.values()), len(by_item)),
            "ratings": wilson_interval(sum(1 for s in scores if s >= ACCEPTABLE_MIN), len(scores)),
            "distribution": {score: counts.get(score, 0) for score in SCORES},
            "errors": dict(errors),
            "mean": float(np.mean(scores)) if scores else None,
        }
    return out


def cohen_kappa(a: Sequence[int], b: Sequence[int], weights: str | None = None) -> float | None:
    """Cohen's kappa of two raters over the same items (scikit-learn); weights None or "quadratic"."""
    if len(a) != len(b) or len(a) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant raters: kappa is undefined and sklearn warns
        value = cohen_kappa_score(list(a), list(b), labels=list(SCORES), weights=weights)
    return _clean(value)


def fleiss_kappa(item_scores: Sequence[Sequence[int]], categories: Sequence[int] = SCORES) -> float | None:
    """Fleiss' kappa (statsmodels) over items that each have the same number (>= 2) of ratings; the raters
    need not be the same people. Items with another number of ratings are left out by the caller."""
    if len(item_scores) < 2:
        return None
    sizes = {len(scores) for scores in item_scores}
    if len(sizes) != 1 or sizes.pop() < 2:
        return None
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    index = {category: i for i, category in enumerate(categories)}
    table = np.zeros((len(item_scores), len(categories)), dtype=int)
    for row, scores in enumerate(item_scores):
        for score in scores:
            table[row, index[score]] += 1
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        return _clean(sm_fleiss(table, method="fleiss"))


def krippendorff_alpha(matrix: np.ndarray, level: str = "ordinal") -> float | None:
    """Krippendorff's alpha (the `krippendorff` package) of a raters x items matrix, NaN = not rated.
    Handles any number of raters per item and missing ratings."""
    matrix = np.asarray(matrix, dtype=float)
    pairable = np.sum(~np.isnan(matrix), axis=0) >= 2
    if matrix.size == 0 or pairable.sum() < 1:
        return None
    values = matrix[:, pairable]
    if len(np.unique(values[~np.isnan(values)])) < 2:
        return None  # one value only: no disagreement to expect, alpha is undefined
    import krippendorff

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        return _clean(krippendorff.alpha(reliability_data=values, level_of_measurement=level,
                                         value_domain=list(SCORES)))


def agreement(rows: Iterable[RatingRow]) -> dict:
    """Inter-rater agreement over all items of a study (sources pooled; per source where asked).

    - pairs: Cohen's kappa (unweighted and quadratic-weighted) for every pair of raters, on the items both
      rated, plus the same for the 4-5 vs 1-3 split;
    - Fleiss' kappa over the items with the modal number of ratings (5 categories, and the binary split);
    - Krippendorff's alpha (ordinal) over everything, missing ratings allowed.
    """
    rows = list(rows)
    scores: dict[str, dict[str, int]] = defaultdict(dict)  # item -> rater -> score
    for row in rows:
        scores[row.item][row.rater] = row.score
    raters = sorted({row.rater for row in rows})
    items = sorted(scores)

    pairs = []
    for first, second in combinations(raters, 2):
        shared = [item for item in items if first in scores[item] and second in scores[item]]
        a = [scores[item][first] for item in shared]
        b = [scores[item][second] for item in shared]
        pairs.append({
            "raters": [first, second],
            "n": len(shared),
            "kappa": cohen_kappa(a, b),
            "kappa_quadratic": cohen_kappa(a, b, weights="quadratic"),
            "kappa_acceptable": cohen_kappa([_binary(s) for s in a], [_binary(s) for s in b]),
            "exact_agreement": (sum(x == y for x, y in zip(a, b, strict=True)) / len(a)) if a else None,
        })

    sizes = Counter(len(by_rater) for by_rater in scores.values() if len(by_rater) >= 2)
    modal = max(sizes, key=lambda size: (sizes[size], size)) if sizes else 0
    fleiss_items = [list(by_rater.values()) for by_rater in scores.values() if len(by_rater) == modal]
    matrix = np.full((len(raters), len(items)), np.nan)
    for column, item in enumerate(items):
        for row_index, rater in enumerate(raters):
            if rater in scores[item]:
                matrix[row_index, column] = scores[item][rater]
    return {
        "raters": raters,
        "items": len(items),
        "pairs": pairs,
        "fleiss": {
            "raters_per_item": modal,
            "n": len(fleiss_items),
            "kappa": fleiss_kappa(fleiss_items),
            "kappa_acceptable": fleiss_kappa([[_binary(s) for s in scores_] for scores_ in fleiss_items],
                                             categories=(1, 5)),
        },
        "krippendorff_ordinal": krippendorff_alpha(matrix),
    }


def _binary(score: int) -> int:
    # Cohen's kappa is given labels 1..5; map the split onto 1 (1-3) and 5 (4-5) so those labels fit.
    return 5 if score >= ACCEPTABLE_MIN else 1


def edit_distance(a: str, b: str) -> float:
    """Normalised Levenshtein distance (rapidfuzz): 0 = identical, 1 = nothing in common."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(a or "", b or ""))


def text_metrics(pairs: dict[str, list[tuple[str, str]]]) -> dict[str, dict]:
    """Per source: BLEU-4, METEOR, ROUGE-L (inference.metrics) and mean normalised edit distance of its
    texts (hypotheses) against the signed-out texts of the same parts (references)."""
    out = {}
    for source, source_pairs in pairs.items():
        if not source_pairs:
            continue
        hypotheses = [h for h, _ in source_pairs]
        references = [r for _, r in source_pairs]
        figures = generation_report(hypotheses, references)
        distances = [edit_distance(h, r) for h, r in source_pairs]
        out[source] = {
            "n": len(source_pairs),
            **{name: float(value) for name, value in figures.items()},
            "edit_distance": float(np.mean(distances)),
        }
    return out
