"""Outputs of a signed report: PDF (reportlab) and a FHIR R4 DiagnosticReport (fhir.resources R4B model,
which matches R4 for DiagnosticReport; fhir.resources 8 defaults to R5, hence the subpackage)."""
from __future__ import annotations

import base64
import hashlib
import io
from typing import Any
from xml.sax.saxutils import escape  # noqa: S406 - escaping our own text for reportlab's markup

from django.utils import timezone
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import HRFlowable, Paragraph, SimpleDocTemplate, Spacer, Table

from webapp.cases.models import Case

from .models import Report, ReportKind, ReportStatus
from .services import is_superseded

FHIR_STATUS = {ReportKind.PRIMARY: "final", ReportKind.AMENDMENT: "amended", ReportKind.ADDENDUM: "appended"}
LOINC_PATHOLOGY_STUDY = {"system": "http://loinc.org", "code": "11526-1", "display": "Pathology study"}
SYSTEM = "urn:pathalign"


def signer_name(user) -> str:
    return (user.get_full_name() or user.username) if user else ""


def report_chain(case: Case, include_draft: bool = False) -> list[Report]:
    """The case's reports in the order they were signed (a draft last, when asked for)."""
    signed = list(case.reports.filter(status=ReportStatus.SIGNED).order_by("signed_at", "id")
                  .select_related("signed_by").prefetch_related("sections__classifications__label_set"))
    if include_draft:
        signed += list(case.reports.filter(status=ReportStatus.DRAFT).prefetch_related("sections"))
    return signed


def fhir_diagnostic_report(report: Report, pdf_url: str | None = None) -> dict[str, Any]:
    """A validated DiagnosticReport for one signed report (primary, amendment or addendum)."""
    if report.status != ReportStatus.SIGNED:
        raise ValueError("only signed reports are exported")
    case = report.case
    sections = list(report.sections.select_related("part").prefetch_related("classifications__label_set"))
    text = report.full_text()
    if report.kind == ReportKind.AMENDMENT:
        text = f"AMENDED REPORT. Reason: {report.reason}\n\n{text}"
    elif report.kind == ReportKind.ADDENDUM:
        text = f"ADDENDUM\n\n{text}"
    parts = {s.part.label: s.part for s in sections if s.part}
    codes = []
    for section in sections:
        for c in section.classifications.all():
            label = c.final_label
            codes.append({
                "coding": [{"system": f"{SYSTEM}:labelset:{c.label_set.name.lower().replace(' ', '-')}",
                            "code": label, "display": label}],
                "text": f"{section.part.label if section.part else ''} {c.label_set.name}: {label}".strip(),
            })
    data = text.encode()
    presented = [{
        "contentType": "text/plain; charset=utf-8", "language": "en", "data": base64.b64encode(data).decode(),
        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),  # noqa: S324 - FHIR's Attachment.hash is SHA-1
        "title": f"{case.accession_number} {report.get_kind_display()}",
        "creation": report.signed_at.isoformat(),
    }]
    if pdf_url:
        presented.append({"contentType": "application/pdf", "url": pdf_url,
                          "title": f"{case.accession_number} report (PDF)"})
    performer = {"display": signer_name(report.signed_by),
                 "identifier": {"system": f"{SYSTEM}:user", "value": report.signed_by.username}}
    resource = {
        "resourceType": "DiagnosticReport",
        "id": f"report-{report.pk}",
        "identifier": [{"system": f"{SYSTEM}:report", "value": f"{case.accession_number}-{report.pk}"}],
        "status": FHIR_STATUS[report.kind],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "SP",
                                  "display": "Surgical Pathology"}]}],
        "code": {"coding": [LOINC_PATHOLOGY_STUDY], "text": "Surgical pathology report"},
        # Pseudonymous: a logical reference by the lab's pseudonym, never a name or a resolvable Patient.
        "subject": {"type": "Patient",
                    "identifier": {"system": f"{SYSTEM}:pseudonym", "value": case.patient_pseudonym}},
        "effectiveDateTime": case.received_date.isoformat(),
        "issued": report.signed_at.isoformat(),
        "performer": [performer],
        "resultsInterpreter": [performer],
        "contained": [
            {"resourceType": "Specimen", "id": f"part-{label}",
             "identifier": [{"system": f"{SYSTEM}:part", "value": f"{case.accession_number}-{label}"}],
             "type": {"text": ", ".join(b for b in (part.site, part.procedure) if b)}}
            for label, part in parts.items()
        ],
        "specimen": [{"reference": f"#part-{label}"} for label in parts],
        "conclusion": text,
        "conclusionCode": codes,
        "presentedForm": presented,
    }
    if report.follows_id:
        # basedOn is for orders; the link to the report this one follows goes in an identifier.
        resource["identifier"].append({"system": f"{SYSTEM}:follows-report",
                                       "value": f"{case.accession_number}-{report.follows_id}"})
    if not resource["contained"]:
        resource.pop("contained")
        resource.pop("specimen")
    if not codes:
        resource.pop("conclusionCode")
    return DiagnosticReport.model_validate(resource).model_dump(mode="json", exclude_none=True)


def report_pdf(case: Case, reports: list[Report]) -> bytes:
    """The case's report history as a PDF: each signed report under its kind, signer and time."""
    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm,
                            title=f"{case.accession_number} surgical pathology report", author="PathAlign Studio")
    story = [Paragraph("Surgical pathology report", styles["Title"])]
    meta = [["Accession", case.accession_number], ["Patient (pseudonym)", case.patient_pseudonym],
            ["Received", case.received_date.isoformat()], ["Printed", timezone.now().strftime("%Y-%m-%d %H:%M %Z")]]
    story += [Table(meta, colWidths=[45 * mm, 120 * mm]), Spacer(1, 6 * mm)]
    if case.clinical_history:
        story += [Paragraph("<b>Clinical history</b>", styles["Normal"]),
                  Paragraph(escape(case.clinical_history), styles["Normal"]), Spacer(1, 4 * mm)]
    for report in reports:
        heading = report.get_kind_display()
        if report.status != ReportStatus.SIGNED:
            heading += " (PRELIMINARY, NOT SIGNED)"
        elif is_superseded(report):
            heading += " (superseded by a later amendment)"
        story += [HRFlowable(width="100%", color=colors.grey), Paragraph(escape(heading), styles["Heading2"])]
        if report.kind == ReportKind.AMENDMENT:
            story.append(Paragraph(f"<b>Reason for amendment:</b> {escape(report.reason)}", styles["Normal"]))
        for section in report.sections.all():
            if section.heading:
                story.append(Paragraph(f"<b>{escape(section.heading)}</b>", styles["Normal"]))
            for line in section.text.splitlines() or [""]:
                story.append(Paragraph(escape(line) or "&nbsp;", styles["Normal"]))
            for c in section.classifications.all():
                story.append(Paragraph(f"<i>{escape(c.label_set.name)}: {escape(c.final_label)}</i>",
                                       styles["Normal"]))
            story.append(Spacer(1, 3 * mm))
        if report.status == ReportStatus.SIGNED:
            story.append(Paragraph(
                f"Electronically signed by {escape(signer_name(report.signed_by))} on "
                f"{timezone.localtime(report.signed_at):%Y-%m-%d %H:%M %Z}. SHA-256 {report.content_hash[:16]}",
                styles["Italic"]))
        story.append(Spacer(1, 5 * mm))
    doc.build(story)
    return buffer.getvalue()
