"""The signed-out archive as the analysis app sees it, registered from above (see ReportsConfig.ready):

- `signed_reports_by_case(case_ids)`: {case id: [{"report", "kind", "signed_at", "text"}]}, newest first,
  for "slide -> signed-out reports of similar cases" (webapp.analysis.search).
- `training_pairs()`: (slide, text) pairs for training a bundle (webapp.analysis.training): each part's
  reported text (`Report.objects.reported()`) goes with the slides of that part, with the diagnosis category
  the pathologist confirmed or chose for that part, where there is one (the training's class).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from webapp.analysis.training import TrainingPair
from webapp.slides.models import Slide

from .models import Classification, Decision, Report, ReportSection, ReportStatus

DIAGNOSIS_SET = "Diagnosis category"  # the label set whose reported label is a training pair's class


def signed_reports_by_case(case_ids: Iterable[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    reports = (
        Report.objects.filter(case_id__in=list(case_ids), status=ReportStatus.SIGNED)
        .order_by("case_id", "-signed_at", "-id")
        .prefetch_related("sections")
    )
    for report in reports:
        out.setdefault(report.case_id, []).append(
            {"report": report, "kind": report.get_kind_display(), "signed_at": report.signed_at,
             "text": report.full_text()}
        )
    return out


def training_pairs() -> list[TrainingPair]:
    """Slide/text pairs from the archive's reported texts (empty when nothing is signed out)."""
    sections = (
        ReportSection.objects.filter(report__in=Report.objects.reported(), part__isnull=False)
        .exclude(text="").select_related("report").order_by("report__case_id", "order", "id")
    )
    # One query for every part's slides, not one per section: the archive may hold 100,000 cases.
    slides_by_part: dict[int, list[str]] = defaultdict(list)
    reported_slides = Slide.objects.filter(part_id__in=sections.values("part_id")).order_by("pk")
    for part_id, slide_id in reported_slides.values_list("part_id", "pk"):
        slides_by_part[part_id].append(str(slide_id))
    labels = dict(Classification.objects.filter(
        section__in=sections, label_set__name=DIAGNOSIS_SET,
        decision__in=(Decision.CONFIRMED, Decision.OVERRIDDEN)).values_list("section_id", "decided_label"))
    pairs = []
    for section in sections:
        text = section.text.strip()
        if not text:
            continue
        for slide_id in slides_by_part[section.part_id]:
            pairs.append(TrainingPair(slide_id, text, section.report.case_id, section.part_id,
                                      labels.get(section.pk, "")))
    return pairs
