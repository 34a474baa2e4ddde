"""Demo data for reports: the default label sets (organ, diagnosis category, triage), and the archive
cases signed out with their synthetic report text by the pathologist they are assigned to."""
from __future__ import annotations

from .labelsets import ensure_default_label_sets
from .services import save_section, sign, signed_reports, start_report


def seed(context) -> None:
    created = ensure_default_label_sets()
    if created:
        context.log(f"{created} label sets for AI classification created.")
    signed = 0
    for case, record in getattr(context, "archive", []):
        if signed_reports(case).exists():
            continue
        user = case.assigned_to
        report = start_report(case, user)
        for section in report.sections.all():
            save_section(section, record["report"], section.version, user)
        sign(report, user)
        signed += 1
    if signed:
        context.log(f"{signed} archive cases signed out (their report texts are embedded for retrieval).")
