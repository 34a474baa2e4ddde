"""Outputs of the signed record, rendered from the frozen snapshots only (webapp.reports.snapshot): the
printed report and its PDF (reportlab), and FHIR R4 (fhir.resources' R4B models, which match R4 for
DiagnosticReport, Provenance and Bundle; fhir.resources 8 defaults to R5, hence the subpackage).

FHIR: a case's report is one DiagnosticReport whose versions carry the history (`meta.versionId` 1, 2, ...
in signing order). Version k is the report as it stood after the k-th signature: the diagnostic report then
reported (the primary or the latest amendment) plus the addenda signed after it. Its status is `final`,
`amended` (an amendment was signed) or `appended` (an addendum was). Each version has a Provenance: the
e-signature (signer, time, meaning, snapshot hash) and, after the first, a `revision` entity naming the
version it replaces. Each version's `presentedForm` points at that version's own PDF under the public base
URL, with the PDF's SHA-1 (FHIR's Attachment.hash).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape  # noqa: S406 - escaping our own text for reportlab's markup

from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.provenance import Provenance
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import HRFlowable, Paragraph, SimpleDocTemplate, Spacer, Table

from webapp.cases.models import Case

from . import snapshot
from .models import Report, ReportKind, ReportStatus

FHIR_STATUS = {ReportKind.PRIMARY: "final", ReportKind.AMENDMENT: "amended", ReportKind.ADDENDUM: "appended"}
DATA_OPERATION = {ReportKind.PRIMARY: "CREATE", ReportKind.AMENDMENT: "UPDATE", ReportKind.ADDENDUM: "APPEND"}
LOINC_PATHOLOGY_STUDY = {"system": "http://loinc.org", "code": "11526-1", "display": "Pathology study"}
AUTHOR_SIGNATURE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1",
                    "display": "Author's Signature"}


# --- the versions of a case's signed record -------------------------------------------------------------
@dataclass
class Version:
    number: int  # 1-based, in signing order
    report: Report  # the report whose signature made this version
    diagnostic: Report  # the primary report or amendment reported at this version
    addenda: list[Report] = field(default_factory=list)  # signed after `diagnostic`, up to this version

    @property
    def status(self) -> str:
        return FHIR_STATUS[self.report.kind]

    @property
    def amended(self) -> bool:
        return self.diagnostic.kind == ReportKind.AMENDMENT


def signed_chain(case: Case, with_rows: bool = False) -> list[Report]:
    """The case's signed reports in signing order; `with_rows` also fetches what the workspace shows of
    each (signer, sections, classifications) in the same few queries."""
    reports = case.reports.filter(status=ReportStatus.SIGNED).order_by("signed_at", "id")
    if with_rows:
        reports = reports.select_related("signed_by").prefetch_related("sections__classifications__label_set")
    return list(reports)


def versions(case: Case, chain: list[Report] | None = None) -> list[Version]:
    chain = signed_chain(case) if chain is None else chain
    out: list[Version] = []
    diagnostic, addenda = None, []
    for number, report in enumerate(chain, start=1):
        if report.kind == ReportKind.ADDENDUM:
            addenda = [*addenda, report]
        else:
            diagnostic, addenda = report, []
        if diagnostic is None:  # an addendum with nothing before it cannot be signed; skip defensively
            continue
        out.append(Version(number, report, diagnostic, addenda))
    return out


def version_of(report: Report) -> Version:
    for version in versions(report.case):
        if version.report.pk == report.pk:
            return version
    raise ValueError(f"report {report.pk} is not signed")


# --- what a version says, from the snapshots -----------------------------------------------------------
def signature_line(report: Report) -> str:
    sig = report.snapshot["signature"]
    who = sig["printed_name"] + (f", {sig['credentials']}" if sig.get("credentials") else "")
    when = timezone.localtime(snapshot.signed_at(report.snapshot)).strftime("%Y-%m-%d %H:%M %Z")
    return f"Electronically signed by {who} on {when}. {sig['meaning']} SHA-256 {report.snapshot_hash[:16]}"


def version_text(version: Version) -> str:
    diag = version.diagnostic
    text = snapshot.text_of(diag.snapshot)
    if diag.kind == ReportKind.AMENDMENT:
        text = f"AMENDED REPORT. Reason for amendment: {diag.snapshot['report']['reason']}\n\n{text}"
    for addendum in version.addenda:
        sig = addendum.snapshot["signature"]
        when = timezone.localtime(snapshot.signed_at(addendum.snapshot)).strftime("%Y-%m-%d")
        text += f"\n\nADDENDUM ({when}, {sig['printed_name']})\n{snapshot.text_of(addendum.snapshot)}"
    return text


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


def _resource_id(case_id: int) -> str:
    return f"pathology-report-{case_id}"


def fhir_diagnostic_report(version: Version, base_url: str) -> dict[str, Any]:
    """Version `version.number` of the case's DiagnosticReport, validated."""
    diag = version.diagnostic.snapshot
    sig = version.report.snapshot["signature"]
    case = diag["case"]
    text = version_text(version)
    data = text.encode()
    pdf = version_pdf(version)
    interpreters = [version.diagnostic, *version.addenda]
    codes = []
    for c in diag["classifications"]:
        coding = {"system": c["code_system"], "code": c["code"], "display": c["label"]} if c["code"] else {
            "system": f"{base_url}/fhir/CodeSystem/{_slug(c['label_set'])}", "code": c["label"], "display": c["label"]}
        codes.append({"coding": [coding], "text": f"{c['part']} {c['label_set']}: {c['label']}".strip()})
    resource = {
        "resourceType": "DiagnosticReport",
        "id": _resource_id(version.report.case_id),
        "meta": {"versionId": str(version.number), "lastUpdated": sig["signed_at"]},
        "identifier": [{"system": f"{base_url}/fhir/accession", "value": case["accession"]}],
        "status": version.status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "SP",
                                  "display": "Surgical Pathology"}]}],
        "code": {"coding": [LOINC_PATHOLOGY_STUDY], "text": "Surgical pathology report"},
        # Pseudonymous: a logical reference by the lab's pseudonym, never a name or a resolvable Patient.
        "subject": {"type": "Patient",
                    "identifier": {"system": f"{base_url}/fhir/pseudonym", "value": case["patient_pseudonym"]}},
        "effectiveDateTime": case["received_date"],
        "issued": sig["signed_at"],
        "performer": [{"display": r.snapshot["signature"]["printed_name"],
                       "identifier": {"system": f"{base_url}/fhir/user", "value": r.snapshot["signature"]["username"]}}
                      for r in interpreters[:1]],
        "resultsInterpreter": [{"display": r.snapshot["signature"]["printed_name"]} for r in interpreters],
        "contained": [
            {"resourceType": "Specimen", "id": f"part-{p['label']}",
             "identifier": [{"system": f"{base_url}/fhir/specimen", "value": f"{case['accession']}-{p['label']}"}],
             "type": {"text": ", ".join(b for b in (p["site"], p["procedure"]) if b) or "Specimen"},
             "collection": {"bodySite": {"text": p["site"]}} if p["site"] else None}
            for p in diag["parts"]
        ],
        "specimen": [{"reference": f"#part-{p['label']}"} for p in diag["parts"]],
        "conclusion": text,
        "conclusionCode": codes,
        "presentedForm": [
            {"contentType": "text/plain; charset=utf-8", "language": "en", "data": base64.b64encode(data).decode(),
             "hash": _sha1(data), "title": f"{case['accession']} report, version {version.number}",
             "creation": sig["signed_at"]},
            {"contentType": "application/pdf", "url": f"{base_url}/reports/{version.report.pk}/report.pdf",
             "hash": _sha1(pdf), "size": len(pdf), "title": f"{case['accession']} report, version {version.number} (PDF)",
             "creation": sig["signed_at"]},
        ],
    }
    for key in ("contained", "specimen", "conclusionCode"):
        if not resource[key]:
            resource.pop(key)
    for specimen in resource.get("contained", []):
        if specimen["collection"] is None:
            specimen.pop("collection")
    return DiagnosticReport.model_validate(resource).model_dump(mode="json", exclude_none=True)


def _sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()  # noqa: S324 - FHIR's Attachment.hash is SHA-1


def fhir_provenance(version: Version, base_url: str) -> dict[str, Any]:
    """The e-signature of a version: who signed, when, with which meaning, over which snapshot hash."""
    report = version.report
    sig = report.snapshot["signature"]
    rid = _resource_id(report.case_id)
    who = {"display": sig["printed_name"], "identifier": {"system": f"{base_url}/fhir/user", "value": sig["username"]}}
    signed = {"meaning": sig["meaning"], "snapshot_sha256": report.snapshot_hash, "text_sha256": report.content_hash}
    resource = {
        "resourceType": "Provenance",
        "id": f"signature-{report.pk}",
        "target": [{"reference": f"DiagnosticReport/{rid}/_history/{version.number}"}],
        "recorded": sig["signed_at"],
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": DATA_OPERATION[report.kind]}],
                     "text": sig["meaning"]},
        "reason": ([{"text": report.snapshot["report"]["reason"]}] if report.kind == ReportKind.AMENDMENT else None),
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]}, "who": who}],
        "entity": ([{"role": "revision", "what": {"reference": f"DiagnosticReport/{rid}/_history/{version.number - 1}"}}]
                   if version.number > 1 else None),
        "signature": [{"type": [AUTHOR_SIGNATURE], "when": sig["signed_at"], "who": who, "sigFormat": "application/json",
                       "data": base64.b64encode(json.dumps(signed, sort_keys=True).encode()).decode()}],
    }
    resource = {k: v for k, v in resource.items() if v is not None}
    return Provenance.model_validate(resource).model_dump(mode="json", exclude_none=True)


def fhir_history(case: Case, base_url: str) -> dict[str, Any]:
    """A FHIR history Bundle: every version of the case's DiagnosticReport, newest first, each with its
    Provenance."""
    entries = []
    for version in reversed(versions(case)):
        report = fhir_diagnostic_report(version, base_url)
        entries.append({"fullUrl": f"{base_url}/fhir/DiagnosticReport/{report['id']}/_history/{version.number}",
                        "resource": report,
                        "request": {"method": "POST" if version.number == 1 else "PUT",
                                    "url": f"DiagnosticReport/{report['id']}"},
                        "response": {"status": "201 Created" if version.number == 1 else "200 OK"}})
        provenance = fhir_provenance(version, base_url)
        entries.append({"fullUrl": f"{base_url}/fhir/Provenance/{provenance['id']}", "resource": provenance,
                        "request": {"method": "POST", "url": "Provenance"}, "response": {"status": "201 Created"}})
    bundle = {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)


# --- print and PDF ---------------------------------------------------------------------------------------
@dataclass
class Block:
    """One report as printed: a title, an optional banner, its sections, confirmed labels and signatures."""

    title: str
    banner: str = ""
    reason: str = ""
    sections: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    muted: bool = False
    preliminary: bool = False


def _sections(snap: dict) -> list[tuple[str, str]]:
    return [(s["heading"], s["text"]) for s in snap["sections"]]


def _labels(snap: dict) -> list[str]:
    return [f"{c['part'] + ': ' if c['part'] else ''}{c['label_set']}: {c['label']}" for c in snap["classifications"]]


def version_block(version: Version, title: str = "Current report") -> Block:
    diag = version.diagnostic
    block = Block(title=title, banner="AMENDED" if version.amended else "",
                  reason=diag.snapshot["report"]["reason"] if version.amended else "",
                  sections=_sections(diag.snapshot), labels=_labels(diag.snapshot),
                  signatures=[signature_line(diag)])
    for addendum in version.addenda:
        when = timezone.localtime(snapshot.signed_at(addendum.snapshot)).strftime("%Y-%m-%d")
        block.sections += [(f"Addendum ({when})" if not h or h == "Addendum" else h, t)
                           for h, t in _sections(addendum.snapshot)]
        block.signatures.append(signature_line(addendum))
    return block


def history_blocks(version: Version, chain: list[Report]) -> list[Block]:
    """Every signed report not part of the current version, newest first."""
    current = {version.diagnostic.pk, *(a.pk for a in version.addenda)}
    blocks = []
    for report in reversed(chain):
        if report.pk in current:
            continue
        kind = report.get_kind_display()
        replaced = report.kind != ReportKind.ADDENDUM
        when = timezone.localtime(snapshot.signed_at(report.snapshot)).strftime("%Y-%m-%d %H:%M")
        blocks.append(Block(
            title=f"{kind} signed {when}" + (" (superseded by a later amendment)" if replaced else ""),
            reason=report.snapshot["report"]["reason"] if report.kind == ReportKind.AMENDMENT else "",
            sections=_sections(report.snapshot), labels=_labels(report.snapshot),
            signatures=[signature_line(report)], muted=replaced))
    return blocks


def draft_block(report: Report) -> Block:
    return Block(title=f"{report.get_kind_display()} in progress", banner="PRELIMINARY, NOT SIGNED",
                 reason=report.reason, sections=[(s.heading, s.text) for s in report.sections.all()],
                 preliminary=True)


@dataclass
class PrintedRecord:
    header: dict  # accession, patient_pseudonym, received_date, clinical_history (from the snapshot)
    blocks: list[Block]


def case_record(case: Case, include_draft: bool = True) -> PrintedRecord:
    """The case as printed: the current report first (under AMENDED when it is), the history below, a
    report in progress last and marked preliminary. Signed parts come from the snapshots only."""
    chain = signed_chain(case)
    all_versions = versions(case, chain)
    blocks: list[Block] = []
    header = {"accession": case.accession_number, "patient_pseudonym": case.patient_pseudonym,
              "received_date": case.received_date.isoformat(), "clinical_history": case.clinical_history}
    if all_versions:
        current = all_versions[-1]
        header = dict(current.diagnostic.snapshot["case"])
        blocks.append(version_block(current))
        blocks += history_blocks(current, chain)
    if include_draft:
        blocks += [draft_block(r) for r in case.reports.filter(status=ReportStatus.DRAFT).prefetch_related("sections")]
    return PrintedRecord(header, blocks)


def _pdf(header: dict, blocks: list[Block], printed: str | None) -> bytes:
    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    # invariant: the same content gives the same bytes (the FHIR presentedForm carries the PDF's hash).
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, invariant=1,
                            title=f"{header['accession']} surgical pathology report", author="PathAlign Studio")
    story = [Paragraph("Surgical pathology report", styles["Title"])]
    meta = [["Accession", header["accession"]], ["Patient (pseudonym)", header["patient_pseudonym"]],
            ["Received", header["received_date"]]]
    if printed:
        meta.append(["Printed", printed])
    story += [Table(meta, colWidths=[45 * mm, 120 * mm]), Spacer(1, 6 * mm)]
    if header.get("clinical_history"):
        story += [Paragraph("<b>Clinical history</b>", styles["Normal"]),
                  Paragraph(escape(header["clinical_history"]), styles["Normal"]), Spacer(1, 4 * mm)]
    for block in blocks:
        story.append(HRFlowable(width="100%", color=colors.grey))
        if block.banner:
            story.append(Paragraph(f'<font color="#b42318"><b>{escape(block.banner)}</b></font>', styles["Heading1"]))
        story.append(Paragraph(escape(block.title), styles["Heading2"]))
        if block.reason:
            story.append(Paragraph(f"<b>Reason for amendment:</b> {escape(block.reason)}", styles["Normal"]))
        for heading, text in block.sections:
            if heading:
                story.append(Paragraph(f"<b>{escape(heading)}</b>", styles["Normal"]))
            for line in text.splitlines() or [""]:
                story.append(Paragraph(escape(line) or "&nbsp;", styles["Normal"]))
            story.append(Spacer(1, 3 * mm))
        for label in block.labels:
            story.append(Paragraph(f"<i>{escape(label)}</i>", styles["Normal"]))
        for line in block.signatures:
            story.append(Paragraph(escape(line), styles["Italic"]))
        story.append(Spacer(1, 5 * mm))
    doc.build(story)
    return buffer.getvalue()


def case_pdf(case: Case) -> bytes:
    record = case_record(case)
    return _pdf(record.header, record.blocks, timezone.localtime().strftime("%Y-%m-%d %H:%M %Z"))


def version_pdf(version: Version) -> bytes:
    """One version of the signed record as a PDF: the same bytes every time (no print date)."""
    title = f"Version {version.number}: {FHIR_STATUS[version.report.kind]}"
    return _pdf(dict(version.diagnostic.snapshot["case"]), [version_block(version, title=title)], None)
