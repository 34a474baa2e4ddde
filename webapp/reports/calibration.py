"""Calibrate the "uncertain" threshold of a label set from the lab's own sign-out decisions.

Every signed report records, per part and label set, the model's pick and confidence and what the
pathologist decided: confirmed (the pick was right) or changed (it was wrong). For the active bundle,
`calibrate` finds the lowest confidence at which the model's picks at or above it were right at least
`target` of the time (default 90%), over at least `min_decisions` decisions, and makes it the label set's
threshold: below it the workspace shows the pick as uncertain. With too few decisions nothing changes and the
page says how many more are needed.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone

from .models import Classification, Decision, LabelSet, ReportStatus

TARGET = 0.90
MIN_DECISIONS = 30


@dataclass
class Calibration:
    label_set: str
    decisions: int
    threshold: float | None  # None: too few decisions, or no confidence reaches the target
    accuracy_above: float | None
    share_above: float | None  # how many picks would be shown as proposals, not "uncertain"


def decisions_for(label_set: LabelSet, bundle) -> list[tuple[float, bool]]:
    """(model confidence, the pathologist confirmed the pick) for every signed decision with `bundle`."""
    rows = Classification.objects.filter(
        label_set=label_set, bundle=bundle, section__report__status=ReportStatus.SIGNED,
        decision__in=[Decision.CONFIRMED, Decision.OVERRIDDEN])
    return [(float(conf), decision == Decision.CONFIRMED)
            for conf, decision in rows.values_list("model_confidence", "decision")]


def threshold_for(decisions: list[tuple[float, bool]], target: float = TARGET,
                  min_decisions: int = MIN_DECISIONS) -> Calibration:
    """The lowest confidence t such that picks with confidence >= t were right >= target of the time."""
    name = ""
    if len(decisions) < min_decisions:
        return Calibration(name, len(decisions), None, None, None)
    ranked = sorted(decisions, key=lambda d: -d[0])
    right, best = 0, None
    for count, (confidence, correct) in enumerate(ranked, start=1):
        right += int(correct)
        # Only a cut between distinct confidences is a threshold one can apply.
        if count < len(ranked) and ranked[count][0] == confidence:
            continue
        if right / count >= target:
            best = (confidence, right / count, count / len(ranked))
    if best is None:
        return Calibration(name, len(decisions), None, None, 0.0)
    return Calibration(name, len(decisions), best[0], best[1], best[2])


def calibrate(label_set: LabelSet, bundle, target: float = TARGET, min_decisions: int = MIN_DECISIONS,
              save: bool = True) -> Calibration:
    result = threshold_for(decisions_for(label_set, bundle), target, min_decisions)
    result.label_set = label_set.name
    if save and result.threshold is not None:
        label_set.confidence_threshold = round(result.threshold, 4)
        label_set.calibration = {"bundle": bundle.key, "decisions": result.decisions, "target": target,
                                 "accuracy_above": round(result.accuracy_above, 4),
                                 "share_above": round(result.share_above, 4),
                                 "at": timezone.now().isoformat()}
        label_set.save(update_fields=["confidence_threshold", "calibration", "updated_at"])
    return result
