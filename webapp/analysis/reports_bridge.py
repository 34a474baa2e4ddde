"""What the analysis app needs from the reports app, in one place, degrading gracefully without it.

- `signed_out_slides_q()`: a Q on Slide for slides whose case has a signed-out report.
- `signed_reports_by_case(case_ids)`: {case_id: [{"report", "kind", "signed_at", "text"}]}, newest first.
- `training_pairs()`: (slide, text) pairs for training: each signed-out report's part section goes with the
  slides of that part (the latest signed report or amendment of a case wins; addenda are not diagnoses).

Before `webapp.reports` had a Report model, the case status (signed out / amended) stood in for the report.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.db.models import Exists, OuterRef, Q

from webapp.cases.models import CaseStatus

SIGNED = "signed"
DIAGNOSTIC_KINDS = ("report", "amendment")


def report_model():
    """The reports app's Report model, or None while it does not exist."""
    try:
        return apps.get_model("reports", "Report")
    except LookupError:
        return None


def signed_out_slides_q() -> Q:
    """Signed out: the case has a signed report, or its status says so (cases signed out elsewhere)."""
    by_status = Q(part__case__status__in=[CaseStatus.SIGNED_OUT, CaseStatus.AMENDED])
    Report = report_model()  # noqa: N806 - a model class
    if Report is None:
        return by_status
    return by_status | Q(Exists(Report.objects.filter(case=OuterRef("part__case"), status=SIGNED)))


def signed_reports_by_case(case_ids) -> dict[int, list[dict]]:
    Report = report_model()  # noqa: N806
    if Report is None:
        return {}
    out: dict[int, list[dict]] = {}
    reports = (
        Report.objects.filter(case_id__in=list(case_ids), status=SIGNED)
        .order_by("case_id", "-signed_at", "-id")
        .prefetch_related("sections")
    )
    for report in reports:
        out.setdefault(report.case_id, []).append(
            {"report": report, "kind": report.get_kind_display(), "signed_at": report.signed_at,
             "text": report.full_text()}
        )
    return out


@dataclass(frozen=True)
class TrainingPair:
    slide_id: str
    text: str
    case_id: int
    part_id: int | None


def training_pairs() -> list[TrainingPair]:
    """Slide/text pairs from the archive's signed-out reports (empty when there are none)."""
    Report = report_model()  # noqa: N806
    if Report is None:
        return []
    from webapp.slides.models import Slide

    latest: dict[int, object] = {}
    signed = Report.objects.filter(status=SIGNED, kind__in=DIAGNOSTIC_KINDS).order_by("case_id", "signed_at", "id")
    for report in signed.prefetch_related("sections"):
        latest[report.case_id] = report  # the last signed report or amendment of the case
    pairs = []
    for case_id, report in latest.items():
        for section in report.sections.all():
            text = (section.text or "").strip()
            if not section.part_id or not text:
                continue
            for slide_id in Slide.objects.filter(part_id=section.part_id).values_list("pk", flat=True):
                pairs.append(TrainingPair(str(slide_id), text, case_id, section.part_id))
    return pairs
