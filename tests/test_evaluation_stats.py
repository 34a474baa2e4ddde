"""The study statistics against values computed by hand (the arithmetic is in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from webapp.evaluation import stats


def test_wilson_interval_7_of_9():
    # p = 7/9 = 0.777778, n = 9, z = 1.959964, z^2 = 3.841459, z^2/n = 0.426829
    # centre = (p + z^2/2n) / (1 + z^2/n) = (0.777778 + 0.213414) / 1.426829 = 0.694682
    # half   = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    #        = 1.959964 * sqrt(0.0192044 + 0.0118563) / 1.426829 = 1.959964 * 0.176241 / 1.426829 = 0.242094
    # interval = (0.452589, 0.936776)
    result = stats.wilson_interval(7, 9)
    assert result["share"] == pytest.approx(7 / 9)
    assert result["low"] == pytest.approx(0.452589, abs=1e-5)
    assert result["high"] == pytest.approx(0.936775, abs=1e-5)
    assert stats.wilson_interval(0, 0)["share"] is None


def test_cohen_kappa_two_by_two():
    # 10 items, "4" = acceptable, "2" = not. Both 4: 4 items, both 2: 3, A 4 / B 2: 2, A 2 / B 4: 1.
    # p_o = 7/10 = 0.7; A says 4 for 6/10, B for 5/10; p_e = 0.6*0.5 + 0.4*0.5 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4. With two categories every disagreement has the same weight,
    # so the quadratic-weighted kappa is 0.4 as well.
    a = [4] * 4 + [2] * 3 + [4] * 2 + [2]
    b = [4] * 4 + [2] * 3 + [2] * 2 + [4]
    assert stats.cohen_kappa(a, b) == pytest.approx(0.4)
    assert stats.cohen_kappa(a, b, weights="quadratic") == pytest.approx(0.4)


def test_quadratic_weighted_kappa_three_items():
    # A = [1, 2, 3], B = [1, 3, 3]; weights (i - j)^2.
    # Observed: one disagreement (2 vs 3), weight 1 -> sum w*O = 1.
    # Expected counts E_ij = rowA_i * colB_j / n with rowA = (1,1,1), colB = (1,0,2), n = 3:
    #   every row is (1/3, 0, 2/3); sum w*E = [0 + 0 + 4*2/3] + [1/3 + 0 + 2/3] + [4/3 + 0 + 0] = 8/3 + 1 + 4/3 = 5
    # kappa_w = 1 - 1/5 = 0.8. Unweighted: p_o = 2/3, p_e = 1/9 + 0 + 2/9 = 1/3, kappa = (1/3)/(2/3) = 0.5.
    assert stats.cohen_kappa([1, 2, 3], [1, 3, 3], weights="quadratic") == pytest.approx(0.8)
    assert stats.cohen_kappa([1, 2, 3], [1, 3, 3]) == pytest.approx(0.5)
    assert stats.cohen_kappa([4, 4], [4, 4]) is None  # no variation: undefined, not NaN


# Fleiss (1971) as tabulated on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5 categories.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_textbook_table():
    # Column totals 20, 28, 39, 24, 29 of 140 -> p_j = 0.143, 0.200, 0.279, 0.171, 0.207;
    # P_e = sum p_j^2 = 0.0204 + 0.0400 + 0.0776 + 0.0294 + 0.0429 = 0.2134.
    # P_i = (sum n_ij^2 - 14) / (14 * 13), e.g. subject 1: (196 - 14)/182 = 1.000, subject 2: (4+36+16+4-14)/182 = 0.253;
    # mean of the ten P_i = 0.3780. kappa = (0.3780 - 0.2134) / (1 - 0.2134) = 0.2099 (Wikipedia: 0.210).
    items = [[category + 1 for category, count in enumerate(row) for _ in range(count)] for row in FLEISS_TABLE]
    assert stats.fleiss_kappa(items) == pytest.approx(0.20993, abs=1e-4)
    assert stats.fleiss_kappa([[4, 4], [5]]) is None  # unequal numbers of ratings


def test_krippendorff_alpha_ordinal_small():
    # Two raters, three items: A = (1, 2, 3), B = (1, 2, 2).
    # Coincidences: o_11 = 2, o_22 = 2, o_23 = o_32 = 1; value totals n_1 = 2, n_2 = 3, n_3 = 1, n = 6.
    # Ordinal distance d(c,k) = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2:
    #   d(1,2) = (5 - 2.5)^2 = 6.25, d(2,3) = (4 - 2)^2 = 4, d(1,3) = (6 - 1.5)^2 = 20.25.
    # Observed: sum o*d = 2 * 4 = 8. Expected: sum_{c != k} n_c n_k d = 2*(2*3*6.25 + 2*1*20.25 + 3*1*4) = 180.
    # alpha = 1 - (n - 1) * 8 / 180 = 1 - 40/180 = 0.7778
    alpha = stats.krippendorff_alpha(np.array([[1, 2, 3], [1, 2, 2]], dtype=float))
    assert alpha == pytest.approx(7 / 9)
    # Missing ratings are allowed; a unit rated once adds nothing.
    with_missing = np.array([[1, 2, 3, 5], [1, 2, 2, np.nan]], dtype=float)
    assert stats.krippendorff_alpha(with_missing) == pytest.approx(7 / 9)


def test_item_acceptable_is_strict_majority():
    assert stats.item_acceptable([4, 5])
    assert not stats.item_acceptable([3, 5])  # a tie counts against
    assert stats.item_acceptable([4, 2, 5])


def test_per_source_summary_and_agreement_from_rows():
    rows = []
    for index, (a, b) in enumerate([(5, 5), (4, 3), (2, 2), (5, 4)]):
        rows += [stats.RatingRow(f"i{index}", "ann", "src", a, "" if a > 3 else "missed_finding"),
                 stats.RatingRow(f"i{index}", "bob", "src", b, "" if b > 3 else "other")]
    summary = stats.per_source_summary(rows)["src"]
    # items 4-5 by majority: i0 yes, i1 tie -> no, i2 no, i3 yes -> 2/4; ratings 4-5: 5 of 8
    assert (summary["items"]["k"], summary["items"]["n"]) == (2, 4)
    assert (summary["ratings"]["k"], summary["ratings"]["n"]) == (5, 8)
    assert summary["distribution"] == {1: 0, 2: 2, 3: 1, 4: 2, 5: 3}
    assert summary["errors"] == {"missed_finding": 1, "other": 2}
    result = stats.agreement(rows)
    pair = result["pairs"][0]
    assert pair["raters"] == ["ann", "bob"] and pair["n"] == 4 and pair["exact_agreement"] == 0.5
    assert result["fleiss"]["n"] == 4 and result["fleiss"]["raters_per_item"] == 2
    assert -1 <= result["krippendorff_ordinal"] <= 1


def test_edit_distance_normalised():
    # "kitten" -> "sitting": 3 edits over the longer length 7.
    assert stats.edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert stats.edit_distance("same", "same") == 0.0
    assert math.isclose(stats.edit_distance("", "abc"), 1.0)


def test_text_metrics_identical_texts_score_one():
    text = "Adenocarcinoma of the colon, moderately differentiated. Margins are free of tumour."
    figures = stats.text_metrics({"ai": [(text, text)] * 2})["ai"]
    assert figures["n"] == 2 and figures["edit_distance"] == 0.0
    assert figures["BLEU-4"] == pytest.approx(1.0) and figures["ROUGE-L"] == pytest.approx(1.0)
    assert figures["METEOR"] > 0.9
