"""Helpers shared by the report tests (no tests here)."""
from __future__ import annotations

from pathlib import Path

from tests.model_fixtures import bundle_row
from webapp.reports import services
from webapp.reports.models import Classification, LabelSet, Report


def add_slide(part, path: Path, user=None, block: str = "1"):
    from webapp.slides.ingest import ingest_slide

    return ingest_slide(path, part=part, original_filename=path.name, stain="H&E", block_label=block, user=user,
                        move=False)


def fake_slide(part, name: str = "x"):
    """A Slide row without a file (for tests that never open it)."""
    from webapp.slides.models import Slide

    return Slide.objects.create(part=part, file_path=f"fake/{part.pk}-{name}.svs", width=1000, height=800)


def drafted_report(case, user, text: str = "Tubular adenoma with low-grade dysplasia.") -> Report:
    """A report with every part's text written (and, as in real life, a slide on each part: sign-out
    refuses a case without slides unless a reason is given)."""
    for part in case.parts.all():
        if not part.slides.exists():
            fake_slide(part)
    report = services.start_report(case, user)
    for section in report.sections.all():
        services.save_section(section, text, section.version, user)
    return report


def signed_report(case, user, text: str = "Tubular adenoma with low-grade dysplasia.") -> Report:
    report = drafted_report(case, user, text)
    return services.sign(report, user).report


def triage_classification(report: Report, label: str = "Likely malignant", confidence: float = 0.8):
    from webapp.reports.labelsets import ensure_default_label_sets

    ensure_default_label_sets()
    triage = LabelSet.objects.get(is_triage=True)
    section = report.sections.first()
    other = "Likely benign" if label == "Likely malignant" else "Likely malignant"
    return Classification.objects.create(
        section=section, label_set=triage, scores={label: confidence, other: 1 - confidence}, model_label=label,
        model_confidence=confidence, bundle=bundle_row("tiny@1"), alert=label == "Likely malignant",
    )
