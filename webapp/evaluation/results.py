"""A study's results for lab admins: per-source accuracy with Wilson intervals, distributions, agreement,
automatic text metrics and edit distances. One dict feeds the page, the JSON export and the CSV export.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict

from django.db.models import Count

from webapp.cases.models import Part

from . import sources, stats
from .models import Assignment, ErrorKind, Item, Rating, Study

SCORE_COLOURS = {1: "#b42318", 2: "#e07a3f", 3: "#e9c46a", 4: "#7fb77e", 5: "#1f7a4d"}
ERROR_LABELS = dict(ErrorKind.choices)


def rating_rows(study: Study) -> list[stats.RatingRow]:
    ratings = Rating.objects.filter(assignment__study=study).values_list(
        "assignment__item__public_id", "assignment__evaluator__username", "assignment__item__source_key",
        "score", "error_kind",
    )
    return [stats.RatingRow(str(item), rater, source, score, error) for item, rater, source, score, error in ratings]


def _pairs_from_items(study: Study) -> dict[str, list[tuple[str, str]]]:
    """{source: [(its text, the signed-out text of the same part)]} from the study's own snapshots."""
    by_part: dict[int, dict[str, str]] = defaultdict(dict)
    for part_id, key, text in study.items.values_list("part_id", "source_key", "text"):
        by_part[part_id][key] = text
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for texts in by_part.values():
        reference = texts.get(sources.SIGNED)
        if reference is None:
            continue
        for key, text in texts.items():
            if key != sources.SIGNED:
                pairs[key].append((text, reference))
    return dict(pairs)


def text_metrics(study: Study) -> dict:
    """BLEU-4 / METEOR / ROUGE-L / edit distance of each non-control source against the signed-out text,
    on the rated snapshots. Items never change, so the figures are computed once and kept on the study."""
    if study.text_metrics is None:
        study.text_metrics = stats.text_metrics(_pairs_from_items(study))
        Study.objects.filter(pk=study.pk).update(text_metrics=study.text_metrics)
    return study.text_metrics


def workflow_edit_distance(study: Study) -> dict:
    """From the reporting workflow: how far pathologists moved from each AI draft to what they signed,
    on the study's parts (normalised Levenshtein: 0 kept as is, 1 rewritten)."""
    pairs = sources.draft_signed_pairs(Part.objects.filter(pk__in=study.items.values("part_id")))
    out = {}
    for key, source_pairs in pairs.items():
        distances = sorted(stats.edit_distance(draft, signed) for draft, signed in source_pairs)
        out[key] = {
            "label": sources.source_label(key),
            "n": len(distances),
            "mean": sum(distances) / len(distances),
            "median": distances[len(distances) // 2] if len(distances) % 2 else
            (distances[len(distances) // 2 - 1] + distances[len(distances) // 2]) / 2,
            "unchanged": sum(1 for d in distances if d == 0),
        }
    return out


def progress_by_rater(study: Study) -> list[dict]:
    rows = (
        Assignment.objects.filter(study=study).values("evaluator__username")
        .annotate(total=Count("id"), done=Count("rating")).order_by("evaluator__username")
    )
    return [{"rater": row["evaluator__username"], "total": row["total"], "done": row["done"]} for row in rows]


def live_results(study: Study) -> dict:
    """What changes as ratings arrive: summaries per source, agreement, progress (cheap enough to poll)."""
    rows = rating_rows(study)
    summary = stats.per_source_summary(rows)
    labels = study.source_labels()
    item_counts = dict(study.items.values_list("source_key").annotate(n=Count("id")))
    per_source = []
    for key in [source["key"] for source in study.sources] + sorted(set(summary) - set(labels)):
        entry = summary.get(key) or {  # a source nobody has rated yet
            "items": stats.wilson_interval(0, 0), "ratings": stats.wilson_interval(0, 0),
            "distribution": {s: 0 for s in stats.SCORES}, "errors": {}, "mean": None,
        }
        per_source.append({"key": key, "label": labels.get(key, key), "item_count": item_counts.get(key, 0),
                           **entry})
    progress = progress_by_rater(study)
    return {
        "per_source": per_source,
        "agreement": stats.agreement(rows),
        "progress": progress,
        "ratings_done": sum(p["done"] for p in progress),
        "ratings_total": sum(p["total"] for p in progress),
    }


def full_results(study: Study) -> dict:
    labels = study.source_labels()
    metrics = text_metrics(study)
    return {
        "study": {
            "id": study.pk, "name": study.name, "description": study.description, "status": study.status,
            "raters_per_item": study.raters_per_item, "seed": study.seed,
            "include_clinical_history": study.include_clinical_history, "selection": study.selection,
            "sources": study.sources, "created_at": study.created_at.isoformat(),
            "items": study.items.count(),
        },
        **live_results(study),
        "text_metrics": [{"key": key, "label": labels.get(key, key), **figures} for key, figures in metrics.items()],
        "workflow_edit_distance": [{"key": key, **figures} for key, figures in workflow_edit_distance(study).items()],
    }


# --- charts: geometry for server-side SVG (no chart library, nothing to run in the browser) -----------
# Each source's label sits on its own line above its bar, so long source names never clip.
CHART_WIDTH = 520
LEFT = 8
ROW = 46


def distribution_chart(per_source: list[dict]) -> dict:
    """One 100% stacked bar per source, a segment per score 1-5."""
    bar_width = CHART_WIDTH - 2 * LEFT
    rows = []
    for index, source in enumerate(per_source):
        total = sum(source["distribution"].values())
        y = 6 + index * ROW
        x, segments = LEFT, []
        for score in stats.SCORES:
            count = source["distribution"][score]
            width = bar_width * count / total if total else 0
            if width:
                segments.append({"x": round(x, 1), "width": round(width, 1), "colour": SCORE_COLOURS[score],
                                 "score": score, "count": count, "text_x": round(x + width / 2, 1),
                                 "show_text": width >= 18})
            x += width
        rows.append({"label_y": y + 12, "y": y + 18, "label": source["label"], "total": total, "segments": segments})
    legend_y = 12 + len(rows) * ROW
    return {"width": CHART_WIDTH, "height": legend_y + 18, "rows": rows, "left": LEFT, "legend_y": legend_y,
            "legend": [{"score": s, "colour": c, "x": LEFT + (s - 1) * 62} for s, c in SCORE_COLOURS.items()]}


def error_chart(per_source: list[dict]) -> dict:
    """Grouped horizontal bars: for each kind of error, one bar per source (counts)."""
    palette = ["#6b2c8f", "#c2417d", "#2b6cb0", "#2f855a", "#b7791f", "#4a5568"]
    label_width = 150
    kinds = list(ERROR_LABELS)
    peak = max([max(source["errors"].values(), default=0) for source in per_source] + [1])
    bar_width = CHART_WIDTH - label_width - 40
    step = 12 * max(len(per_source), 1) + 10
    groups = []
    for index, kind in enumerate(kinds):
        bars = []
        for s_index, source in enumerate(per_source):
            count = source["errors"].get(kind, 0)
            bars.append({"y": 6 + index * step + s_index * 12, "width": round(bar_width * count / peak, 1),
                         "count": count, "colour": palette[s_index % len(palette)], "label": source["label"]})
        groups.append({"label": ERROR_LABELS[kind], "y": 6 + index * step + 6 * len(per_source), "bars": bars})
    legend = [{"label": source["label"], "colour": palette[i % len(palette)], "y": 6 + len(kinds) * step + i * 16}
              for i, source in enumerate(per_source)]
    return {"width": CHART_WIDTH, "height": 10 + len(kinds) * step + len(per_source) * 16, "groups": groups,
            "legend": legend, "x0": label_width, "any": any(source["errors"] for source in per_source)}


def interval_chart(per_source: list[dict], key: str = "items") -> dict:
    """Share rated 4-5 per source as a point with its 95% Wilson interval on a 0-100% axis."""
    span = CHART_WIDTH - 2 * LEFT - 20
    x0 = LEFT + 10
    rows = []
    for index, source in enumerate(per_source):
        figure = source[key]
        y = 6 + index * ROW
        row = {"label_y": y + 12, "y": y + 28, "label": source["label"], "n": figure["n"]}
        if figure["share"] is not None:
            row.update(x=round(x0 + span * figure["share"], 1), low=round(x0 + span * figure["low"], 1),
                       high=round(x0 + span * figure["high"], 1), share=figure["share"])
        rows.append(row)
    axis_y = 10 + len(rows) * ROW
    ticks = [{"x": round(x0 + span * t / 100, 1), "label": f"{t}%"} for t in (0, 25, 50, 75, 100)]
    return {"width": CHART_WIDTH, "height": axis_y + 20, "rows": rows, "ticks": ticks, "axis_y": axis_y,
            "left": LEFT}


# --- CSV ------------------------------------------------------------------------------------------------
RATING_COLUMNS = ["study", "item", "accession", "part", "source_key", "source_label", "rater", "position", "score",
                  "acceptable", "error_kind", "comment", "rated_at"]


def ratings_csv(study: Study) -> str:
    """One row per rating, with the source: for lab admins only."""
    labels = study.source_labels()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(RATING_COLUMNS)
    ratings = (Rating.objects.filter(assignment__study=study)
               .select_related("assignment__item__case", "assignment__item__part", "assignment__evaluator")
               .order_by("assignment__item__case__accession_number", "assignment__item__part__label",
                         "assignment__item__source_key", "assignment__evaluator__username"))
    for rating in ratings:
        item: Item = rating.assignment.item
        writer.writerow([
            study.pk, item.public_id, item.case.accession_number, item.part.label, item.source_key,
            labels.get(item.source_key, item.source_key), rating.assignment.evaluator.username,
            rating.assignment.position, rating.score, int(rating.score >= stats.ACCEPTABLE_MIN), rating.error_kind,
            _csv_safe(rating.comment), rating.updated_at.isoformat(),
        ])
    return out.getvalue()


def summary_csv(study: Study) -> str:
    """One row per source: the headline figures and the automatic metrics."""
    data = full_results(study)
    metrics = {row["key"]: row for row in data["text_metrics"]}
    workflow = {row["key"]: row for row in data["workflow_edit_distance"]}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["source_key", "source_label", "items", "items_rated", "items_4_5", "items_share", "items_low",
                     "items_high", "ratings", "ratings_4_5", "ratings_share", "ratings_low", "ratings_high",
                     "mean_score", *[f"score_{s}" for s in stats.SCORES], *[f"error_{k}" for k in ERROR_LABELS],
                     "bleu4", "meteor", "rouge_l", "edit_distance_vs_signed", "workflow_edit_distance_mean"])
    for row in data["per_source"]:
        m, w = metrics.get(row["key"], {}), workflow.get(row["key"], {})
        writer.writerow([
            row["key"], row["label"], row["item_count"], row["items"]["n"], row["items"]["k"], row["items"]["share"],
            row["items"]["low"], row["items"]["high"], row["ratings"]["n"], row["ratings"]["k"],
            row["ratings"]["share"], row["ratings"]["low"], row["ratings"]["high"], row["mean"],
            *[row["distribution"][s] for s in stats.SCORES], *[row["errors"].get(k, 0) for k in ERROR_LABELS],
            m.get("BLEU-4"), m.get("METEOR"), m.get("ROUGE-L"), m.get("edit_distance"), w.get("mean"),
        ])
    return out.getvalue()


def _csv_safe(text: str) -> str:
    # A comment starting with = + - @ would run as a formula when the CSV is opened in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def live_counts(study: Study) -> dict:
    """For the study list: items, ratings collected and asked for."""
    counts = Assignment.objects.filter(study=study).aggregate(total=Count("id"), done=Count("rating"))
    return {"items": study.items.count(), "done": counts["done"], "total": counts["total"]}


def agreement_csv(study: Study) -> str:
    """Inter-rater agreement: one row per statistic (pairs of raters, Fleiss, Krippendorff)."""
    agreement = stats.agreement(rating_rows(study))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["statistic", "raters", "items", "value"])
    for pair in agreement["pairs"]:
        raters = " & ".join(pair["raters"])
        for name in ("kappa", "kappa_quadratic", "kappa_acceptable", "exact_agreement"):
            writer.writerow([f"cohen_{name}" if name != "exact_agreement" else name, raters, pair["n"], pair[name]])
    fleiss = agreement["fleiss"]
    writer.writerow(["fleiss_kappa", f"{fleiss['raters_per_item']} per item", fleiss["n"], fleiss["kappa"]])
    writer.writerow(["fleiss_kappa_acceptable", f"{fleiss['raters_per_item']} per item", fleiss["n"],
                     fleiss["kappa_acceptable"]])
    writer.writerow(["krippendorff_alpha_ordinal", " & ".join(agreement["raters"]), agreement["items"],
                     agreement["krippendorff_ordinal"]])
    return out.getvalue()
