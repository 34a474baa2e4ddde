"""Domain rules for reports as plain functions: start, save (optimistic lock), decide, sign, follow up.

Views stay thin and call these; tests call them directly. None of these check who is asking: the views
resolve the case through `webapp.reports.access` first.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.html import escape
from rapidfuzz.distance import Levenshtein

from webapp.cases.models import Case, CaseStatus
from webapp.slides.models import Slide

from . import snapshot
from .models import (
    REVIEWED,
    Classification,
    Decision,
    Label,
    Report,
    ReportKind,
    ReportLocked,
    ReportSection,
    ReportStatus,
    ReportVersion,
    VersionSource,
)
from .signals import report_signed


class StaleVersion(Exception):
    """A save started from an older version than the one stored: somebody else saved in between."""

    def __init__(self, section: ReportSection) -> None:
        super().__init__(f"section {section.pk} is at version {section.version}")
        self.section = section


class ReportError(Exception):
    """A request that the rules refuse, with a message for the user."""


class SignoutRefused(ReportError):
    """Sign-out refused: `problems` names each thing missing and where."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("Not signed out. " + " ".join(problems))
        self.problems = problems


def part_heading(part) -> str:
    bits = [part.site, part.procedure]
    return f"{part.label}. " + ", ".join(b for b in bits if b)


def open_report(case: Case) -> Report | None:
    """The report in progress for the case (a draft, addendum or amendment), if any."""
    return case.reports.filter(status=ReportStatus.DRAFT).first()


def signed_reports(case: Case) -> QuerySet[Report]:
    return case.reports.filter(status=ReportStatus.SIGNED).order_by("signed_at", "id")


def start_report(case: Case, user) -> Report:
    """The case's draft report, created with one empty section per part if there is none yet."""
    with transaction.atomic():
        Case.objects.select_for_update().get(pk=case.pk)  # serialise two first clicks
        report = open_report(case)
        if report is not None:
            return report
        if case.reports.filter(kind=ReportKind.PRIMARY, status=ReportStatus.SIGNED).exists():
            raise ReportError("This case is signed out: add an addendum or an amendment instead.")
        report = Report.objects.create(case=case, kind=ReportKind.PRIMARY, created_by=user)
        for order, part in enumerate(case.parts.order_by("label")):
            ReportSection.objects.create(report=report, part=part, heading=part_heading(part), order=order)
        if case.status in (CaseStatus.ACCESSIONED, CaseStatus.ASSIGNED):
            Case.objects.filter(pk=case.pk).update(status=CaseStatus.IN_REVIEW)
    return report


def save_section(
    section: ReportSection, text: str, base_version: int, user, source: str = VersionSource.EDIT
) -> ReportSection:
    """Store a new text if `base_version` is still current; otherwise raise StaleVersion (nothing lost:
    the caller keeps its text and shows the other one). Returns the section at its new version."""
    with transaction.atomic():
        current = ReportSection.objects.select_for_update().select_related("report").get(pk=section.pk)
        if current.report.status == ReportStatus.SIGNED:
            raise ReportLocked("this report is signed out")
        if int(base_version) != current.version:
            raise StaleVersion(current)
        if text == current.text:
            return current  # an autosave with no change: no new version
        current.text = text
        current.version += 1
        current.updated_by = user
        current.save()
        ReportVersion.objects.create(section=current, number=current.version, text=text, source=source,
                                     saved_by=user)
    return current


def sections_with_own_text(report: Report) -> list[ReportSection]:
    """Sections whose current text a person wrote, edited, restored or copied (not the AI's own draft):
    re-drafting would replace it, so the workspace asks first."""
    out = []
    for section in report.sections.filter(part__isnull=False).select_related("part"):
        latest = section.versions.order_by("-number").first()
        if section.text.strip() and latest is not None and latest.source != VersionSource.AI:
            out.append(section)
    return out


def restore_version(section: ReportSection, number: int, base_version: int, user) -> ReportSection:
    """Undo: make an earlier version's text the current one (as a new version; history is never cut)."""
    old = section.versions.get(number=number)
    return save_section(section, old.text, base_version, user, source=VersionSource.RESTORE)


def inline_diff(before: str, after: str) -> str:
    """`after` as flowing HTML with the words removed since `before` struck through (<del>) and the words
    added marked (<ins>): it wraps to any width, unlike a side-by-side table (issue #17: 1,176 px wide in a
    567 px panel). Escaped; line breaks kept (shown with white-space: pre-wrap)."""
    tokens_before, tokens_after = re.findall(r"\s+|[^\s]+", before), re.findall(r"\s+|[^\s]+", after)
    out = []
    matcher = difflib.SequenceMatcher(a=tokens_before, b=tokens_after, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        old, new = "".join(tokens_before[i1:i2]), "".join(tokens_after[j1:j2])
        if op == "equal":
            out.append(escape(new))
            continue
        if old.strip():
            out.append(f'<del class="diff_sub">{escape(old)}</del>')
        if new.strip():
            out.append(f'<ins class="diff_add">{escape(new)}</ins>')
        elif new:
            out.append(escape(new))
    return "".join(out)


def version_diff(section: ReportSection, number: int) -> str:
    """HTML: version `number` with what changed since the one before it (the whole text is new for the first)."""
    version = section.versions.get(number=number)
    previous = section.versions.filter(number__lt=number).order_by("-number").first()
    since = f"since v{previous.number}" if previous else "(first version)"
    body = inline_diff(previous.text if previous else "", version.text)
    return (f'<p class="diff-legend muted">v{number} {since}: <del class="diff_sub">removed</del> '
            f'<ins class="diff_add">added</ins></p><div class="inline-diff">{body}</div>')


def edit_distance(ai_text: str, final_text: str) -> float:
    """Normalised Levenshtein distance (0 = the AI text was kept as is, 1 = entirely rewritten)."""
    return float(Levenshtein.normalized_distance(ai_text or "", final_text or ""))


def decide(classification: Classification, label: str, user) -> Classification:
    """The pathologist confirms the model's label or overrides it with another label of the set."""
    labels = {lab.name: lab for lab in Label.objects.filter(label_set_id=classification.label_set_id)}
    if label not in labels:
        raise ReportError(f"{label!r} is not a label of {classification.label_set}.")
    classification.decided_label = label
    classification.decision = Decision.CONFIRMED if label == classification.model_label else Decision.OVERRIDDEN
    classification.decided_by = user
    classification.decided_at = timezone.now()
    classification.alert = labels[label].alert
    classification.save()
    return classification


def dismiss(classification: Classification, user) -> Classification:
    """The pathologist dismisses the model's proposal: it is reviewed, and nothing of it is reported."""
    classification.decided_label = ""
    classification.decision = Decision.DISMISSED
    classification.decided_by = user
    classification.decided_at = timezone.now()
    classification.alert = False
    classification.save()
    return classification


def _part_name(part) -> str:
    return f"Part {part.label}" + (f" ({part.site})" if part.site else "")


def signout_problems(report: Report, sections: list[ReportSection], no_slides_reason: str = "") -> list[str]:
    """What stops `report` from being signed, each naming what is missing and where (empty: it may be)."""
    problems = []
    if not any(s.text.strip() for s in sections):
        return ["The report is empty: write the diagnosis before signing out."]
    if report.kind == ReportKind.ADDENDUM:
        return problems
    for section in sections:
        if section.part is not None and not section.text.strip():
            problems.append(f"{_part_name(section.part)} has no diagnosis.")
    pending = (Classification.objects.filter(section__report=report).exclude(decision__in=REVIEWED)
               .select_related("label_set", "section__part").order_by("section__order", "label_set__order"))
    for c in pending:
        where = _part_name(c.section.part) if c.section.part else "The report"
        problems.append(f"{where}: the AI classification “{c.label_set.name}” ({c.model_label}) is not "
                        f"reviewed: confirm it, choose another label or dismiss it.")
    if not Slide.objects.filter(part__case_id=report.case_id).exists() and not no_slides_reason.strip():
        problems.append("The case has no slides: attach them, or give the reason for signing out without slides.")
    return problems


@dataclass
class SignResult:
    report: Report
    case_status: str


def sign(report: Report, user, versions: dict[int, int] | None = None, no_slides_reason: str = "") -> SignResult:
    """Sign the report as it stands. `versions` ({section id: version}) is what the signer saw: if any
    section moved on since, the signature is refused (StaleVersion) so nobody signs text they did not read.
    The gates (`signout_problems`) must all pass; the signed content is frozen into the snapshot.
    The password check happens in the view (it needs the request for the audit trail)."""
    with transaction.atomic():
        locked = Report.objects.select_for_update().get(pk=report.pk)
        if locked.status == ReportStatus.SIGNED:
            raise ReportError("This report is already signed out.")
        # The case, its sections and classifications stay as checked until the snapshot is committed: an
        # edit of the pseudonym or a decision made meanwhile waits for the signature.
        case = Case.objects.select_for_update().get(pk=locked.case_id)
        sections = list(locked.sections.select_for_update())
        list(Classification.objects.select_for_update().filter(section__report=locked).values_list("pk"))
        for section in sections:
            if versions is not None and section.pk in versions and versions[section.pk] != section.version:
                raise StaleVersion(section)
        problems = signout_problems(locked, sections, no_slides_reason)
        if problems:
            raise SignoutRefused(problems)
        locked.no_slides_reason = no_slides_reason.strip()
        signed_at = timezone.now()
        frozen = snapshot.build(locked, user, signed_at)
        # Straight to the queryset: Report.save() refuses anything on a signed row, and this row is
        # becoming signed in this very statement (the trigger sees OLD.status = 'draft' and lets it pass).
        Report.objects.filter(pk=locked.pk, status=ReportStatus.DRAFT).update(
            status=ReportStatus.SIGNED, signed_by=user, signed_at=signed_at, updated_at=signed_at,
            no_slides_reason=locked.no_slides_reason, snapshot=frozen, snapshot_hash=snapshot.digest(frozen),
            content_hash=snapshot.text_digest(frozen),
        )
        if locked.kind == ReportKind.AMENDMENT:
            case.status = CaseStatus.AMENDED
        elif locked.kind == ReportKind.PRIMARY:
            case.status = CaseStatus.SIGNED_OUT
        case.save(update_fields=["status", "updated_at"])
        transaction.on_commit(lambda: report_signed.send(sender=Report, report=locked, user=user))
    locked.refresh_from_db()
    return SignResult(locked, case.status)


def start_followup(case: Case, kind: str, user, reason: str = "") -> Report:
    """After sign-out: an addendum (adds information; one free-text section) or an amendment (changes what
    was reported; starts from the current reported text of each part and needs a reason)."""
    if kind not in (ReportKind.ADDENDUM, ReportKind.AMENDMENT):
        raise ReportError("Choose an addendum or an amendment.")
    reason = (reason or "").strip()
    if kind == ReportKind.AMENDMENT and not reason:
        raise ReportError("An amendment needs a reason: say what changes and why.")
    with transaction.atomic():
        Case.objects.select_for_update().get(pk=case.pk)
        if open_report(case) is not None:
            raise ReportError("Finish or discard the report in progress first.")
        last = signed_reports(case).last()
        if last is None:
            raise ReportError("Nothing is signed out yet: edit and sign the report instead.")
        report = Report.objects.create(case=case, kind=kind, follows=last, reason=reason, created_by=user)
        if kind == ReportKind.ADDENDUM:
            ReportSection.objects.create(report=report, heading="Addendum", order=0)
        else:
            # The amendment replaces what is reported, so it carries the addenda signed since: a receiver
            # that keeps only the latest report must not lose an addendum's result.
            carried = current_text_by_part(case) + addenda_since_reported(case)
            for order, (part, heading, text) in enumerate(carried):
                section = ReportSection.objects.create(report=report, part=part, heading=heading, order=order,
                                                       text=text, version=1, updated_by=user)
                ReportVersion.objects.create(section=section, number=1, text=text, source=VersionSource.COPY,
                                             saved_by=user)
                _carry_classifications(last_reported_section(case, part), section)
    return report


def last_reported_section(case: Case, part) -> ReportSection | None:
    if part is None:
        return None
    latest = Report.objects.reported().filter(case=case).first()
    return latest.sections.filter(part=part).first() if latest else None


def _carry_classifications(source: ReportSection | None, target: ReportSection) -> None:
    """An amendment changes the diagnosis, so the classifications that were reported must be reviewed
    again: the model's proposals are carried over undecided (sign-out asks for each); dismissed ones are
    not carried."""
    if source is None:
        return
    for c in source.classifications.filter(decision__in=[Decision.CONFIRMED, Decision.OVERRIDDEN]):
        Classification.objects.create(section=target, label_set_id=c.label_set_id, scores=c.scores,
                                      model_label=c.model_label, model_confidence=c.model_confidence,
                                      bundle_id=c.bundle_id, job_id=c.job_id, alert=False)


def addenda_since_reported(case: Case) -> list[tuple]:
    """(None, heading, text) for each addendum signed after the report that is reported now."""
    latest = Report.objects.reported().filter(case=case).first()
    if latest is None:
        return []
    addenda = case.reports.filter(kind=ReportKind.ADDENDUM, status=ReportStatus.SIGNED,
                                  signed_at__gt=latest.signed_at).order_by("signed_at", "id")
    carried = []
    for addendum in addenda:
        when = timezone.localtime(addendum.signed_at).strftime("%Y-%m-%d")
        for section in addendum.sections.all():
            carried.append((None, f"Addendum of {when}", section.text))
    return carried


def correction_open(case_id: int) -> bool:
    """A signed case's identifying fields may be corrected while an amendment is in progress."""
    return Report.objects.filter(case_id=case_id, kind=ReportKind.AMENDMENT, status=ReportStatus.DRAFT).exists()


def current_text_by_part(case: Case) -> list[tuple]:
    """(part, heading, text) as currently reported (`Report.objects.reported()`)."""
    latest = Report.objects.reported().filter(case=case).first()
    if latest is None:
        return []
    return [(s.part, s.heading, s.text) for s in latest.sections.select_related("part")]


def discard_draft(report: Report) -> None:
    """Drop a follow-up that was started by mistake (never a signed report; the primary draft stays)."""
    if report.status != ReportStatus.DRAFT or report.kind == ReportKind.PRIMARY:
        raise ReportError("Only an unsigned addendum or amendment can be discarded.")
    report.delete()


def is_superseded(report: Report) -> bool:
    """True when a later signed amendment replaces this report's text (it is no longer what is reported)."""
    if report.kind == ReportKind.ADDENDUM or not report.is_signed:
        return False
    return not Report.objects.reported().filter(pk=report.pk).exists()
