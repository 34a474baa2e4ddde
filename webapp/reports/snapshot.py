"""The signed record: a frozen snapshot of everything a signed report shows, and its verification.

At sign-out (`services.sign`) the report's patient pseudonym, accession, parts with site and procedure, the
section texts, the classifications the pathologist confirmed, and the e-signature (printed name,
credentials, date/time and meaning, 21 CFR 11.50) are frozen into `Report.snapshot`. `snapshot_hash` is the
SHA-256 of its canonical JSON (sorted keys, no whitespace, UTF-8); `content_hash` stays the SHA-256 of the
text alone, as before. PDF, print and FHIR render from the snapshot only, so a later edit of a Case, Part or
User row cannot change what was signed. Every read and export calls `check`, which recomputes both hashes
and compares the stored sections with the snapshot; a mismatch is shown, logged and audited.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field

from django.utils import timezone

from webapp.audit.log import record
from webapp.slides.models import Slide

from .models import Decision, Label, Report, ReportKind

log = logging.getLogger(__name__)
SCHEMA = 1

# The meaning of each signature, stated in the record itself (21 CFR 11.50(a)(3)).
MEANINGS = {
    ReportKind.PRIMARY: "Final report. I have reviewed the material and approve this report as the diagnosis.",
    ReportKind.AMENDMENT: "Amended report. I approve this report as replacing the earlier report, for the "
                          "reason stated.",
    ReportKind.ADDENDUM: "Addendum. I approve this addendum as additional information to the signed report.",
}


def printed_name(user) -> str:
    return (user.get_full_name() or user.username) if user else ""


def build(report: Report, user, signed_at: dt.datetime) -> dict:
    """The canonical content of `report` as it is being signed by `user` at `signed_at`."""
    case = report.case
    slide_counts: dict[int, int] = {}
    for part_id in Slide.objects.filter(part__case=case).values_list("part_id", flat=True):
        slide_counts[part_id] = slide_counts.get(part_id, 0) + 1
    sections = list(report.sections.select_related("part").prefetch_related("classifications__label_set"))
    codes = {(lab.label_set_id, lab.name): lab for lab in Label.objects.filter(
        label_set_id__in={c.label_set_id for s in sections for c in s.classifications.all()})}
    classifications = []
    for section in sections:
        for c in section.classifications.all():
            # Only what the pathologist confirmed or chose; never triage (a worklist aid, not a finding).
            if c.decision not in (Decision.CONFIRMED, Decision.OVERRIDDEN) or c.label_set.is_triage:
                continue
            label = codes.get((c.label_set_id, c.decided_label))
            classifications.append({
                "part": section.part.label if section.part else "", "label_set": c.label_set.name,
                "label": c.decided_label, "decision": c.decision,
                "code_system": label.code_system if label else "", "code": label.code if label else "",
            })
    return {
        "schema": SCHEMA,
        "report": {"id": report.pk, "kind": report.kind, "reason": report.reason, "follows": report.follows_id,
                   "no_slides_reason": report.no_slides_reason},
        "case": {"accession": case.accession_number, "patient_pseudonym": case.patient_pseudonym,
                 "received_date": case.received_date.isoformat(), "clinical_history": case.clinical_history},
        "parts": [{"label": p.label, "site": p.site, "procedure": p.procedure, "slides": slide_counts.get(p.pk, 0)}
                  for p in case.parts.order_by("label")],
        "sections": [{"part": s.part.label if s.part else "", "heading": s.heading, "text": s.text}
                     for s in sections],
        "classifications": classifications,
        "signature": {
            "username": user.username, "printed_name": printed_name(user),
            "credentials": getattr(user, "credentials", "") or "",
            "signed_at": signed_at.astimezone(dt.UTC).isoformat(), "meaning": MEANINGS[report.kind],
        },
    }


def canonical(snapshot: dict) -> bytes:
    return json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(snapshot: dict) -> str:
    return hashlib.sha256(canonical(snapshot)).hexdigest()


def text_of(snapshot: dict) -> str:
    """The signed text as one string: each section under its heading (as `Report.full_text`)."""
    parts = []
    for s in snapshot["sections"]:
        body = s["text"].strip()
        parts.append(f"{s['heading']}\n{body}" if s["heading"] else body)
    return "\n\n".join(p for p in parts if p.strip())


def text_digest(snapshot: dict) -> str:
    return hashlib.sha256(text_of(snapshot).encode()).hexdigest()


def signed_at(snapshot: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(snapshot["signature"]["signed_at"])


@dataclass
class Integrity:
    report_id: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(report: Report) -> Integrity:
    """Recompute the hashes and compare the stored sections with what was signed."""
    result = Integrity(report.pk)
    snap = report.snapshot
    if not snap:
        result.problems.append("The signed report has no frozen snapshot.")
        return result
    if digest(snap) != report.snapshot_hash:
        result.problems.append("The frozen snapshot does not match its SHA-256.")
    if text_digest(snap) != report.content_hash:
        result.problems.append("The signed text does not match its SHA-256.")
    if snap.get("report", {}).get("id") != report.pk:
        result.problems.append("The snapshot belongs to another report.")
    stored = [{"part": s.part.label if s.part else "", "heading": s.heading, "text": s.text}
              for s in report.sections.select_related("part")]
    if stored != snap.get("sections"):
        result.problems.append("The stored sections differ from the text that was signed.")
    return result


def check(report: Report, request=None) -> Integrity:
    """`verify`, and on a mismatch an error in the log and an audit event (shown loudly by the caller)."""
    result = verify(report)
    if not result.ok:
        log.error("signed report %s fails its integrity check: %s", report.pk, "; ".join(result.problems))
        record(request, "report.integrity_failure", case=report.case_id, obj=report, problems=result.problems,
               checked_at=timezone.now().isoformat())
    return result
