"""Triage as soon as a slide is analysed: the model's call on each active triage label set, per slide, so a
likely-malignant case rises on the worklist before anyone opens it (the worklist reads `SlideTriage`).

A suggestion only: it never prints, never reaches the signed record, and is shown beside the pathologist's
own decision, not instead of it. A pick below the label set's confidence threshold is stored, but it does
not raise the case (it is uncertain).
"""
from __future__ import annotations

import logging

from django.dispatch import receiver

from webapp.analysis.signals import slide_analysed

from .models import LabelSet, SlideTriage

log = logging.getLogger(__name__)


@receiver(slide_analysed, dispatch_uid="reports_triage_on_analysis")
def triage_slide(sender, slide, bundle, model, embedding, **kwargs) -> list[SlideTriage]:
    rows = []
    for label_set in LabelSet.objects.filter(active=True, is_triage=True).prefetch_related("labels"):
        prompts = label_set.label_prompts()
        if len(prompts) < 2:
            continue
        probs = model.classify(embedding, prompts, pooling="max")  # a label is a union of diagnoses
        label = max(probs, key=probs.get)
        confidence = float(probs[label])
        alerts = {lab.name for lab in label_set.labels.all() if lab.alert}
        row, _ = SlideTriage.objects.update_or_create(
            slide=slide, bundle=bundle, label_set=label_set,
            defaults={"case_id": slide.part.case_id, "label": label, "confidence": round(confidence, 5),
                      "alert": label in alerts and confidence >= label_set.confidence_threshold},
        )
        rows.append(row)
    if rows:
        log.info("slide %s triaged: %s", slide.pk, ", ".join(f"{r.label} {r.confidence:.2f}" for r in rows))
    return rows
