"""Where candidate texts come from: the one place this app reads the reports app.

A source key names a kind of text, never a case:
- "signed_report": the text pathologists signed out for the part (the control), as currently reported
  (a later signed amendment replaces the primary report's text);
- "ai:<method>:<bundle>": the latest AI draft of that method and model bundle for the part, unchanged.
Keys and labels are shown to lab admins only; raters never see them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import F, QuerySet, Value
from django.db.models.functions import Concat

from webapp.cases.deid import case_identifiers, staff_names
from webapp.cases.models import Part
from webapp.reports.models import AIDraft, DraftMethod, Report, ReportKind, ReportSection
from webapp.reports.text import without_case_specifics

SIGNED = "signed_report"
SIGNED_LABEL = "Signed-out report (control)"


@dataclass(frozen=True)
class SourceOption:
    key: str
    label: str
    parts: int  # how many parts (among those asked about) have a text from this source


@dataclass
class Candidate:
    part: Part
    source_key: str
    text: str
    ref: dict = field(default_factory=dict)


def _ai_key(method: str, bundle: str) -> str:
    return f"ai:{method}:{bundle}"


def _ai_label(method: str, bundle: str) -> str:
    method_label = dict(DraftMethod.choices).get(method, method)
    return f"AI draft: {method_label}, {bundle}"


def source_label(key: str) -> str:
    if key == SIGNED:
        return SIGNED_LABEL
    if key.startswith("ai:"):
        _, method, bundle = key.split(":", 2)
        return _ai_label(method, bundle)
    return key


def _signed_texts(parts: QuerySet[Part]) -> dict[int, tuple[str, dict]]:
    """{part id: (reported text, ref)}: what is reported now for each part (`Report.objects.reported()`)."""
    sections = (
        ReportSection.objects.filter(part__in=parts, report__in=Report.objects.reported())
        .order_by("part_id", "-report__signed_at", "-report_id")
        .values("part_id", "text", "report_id", "id")
    )
    out: dict[int, tuple[str, dict]] = {}
    for row in sections:
        if row["part_id"] not in out and row["text"].strip():
            out[row["part_id"]] = (row["text"], {"report": row["report_id"], "section": row["id"]})
    return out


def _ai_texts(parts: QuerySet[Part]) -> dict[tuple[int, str], tuple[str, dict]]:
    """{(part id, source key): (latest draft text, ref)} over primary reports' sections."""
    drafts = (
        AIDraft.objects.filter(section__part__in=parts, section__report__kind=ReportKind.PRIMARY)
        .annotate(bundle_key=Concat(F("bundle__name"), Value("@"), F("bundle__version")))  # ModelBundle.key
        .order_by("section__part_id", "method", "bundle_key", "-created_at", "-id")
        .values("section__part_id", "method", "bundle_key", "text", "id", "section_id")
    )
    out: dict[tuple[int, str], tuple[str, dict]] = {}
    for row in drafts:
        key = (row["section__part_id"], _ai_key(row["method"], row["bundle_key"] or "unknown model"))
        if key not in out and row["text"].strip():
            out[key] = (row["text"], {"ai_draft": row["id"], "section": row["section_id"]})
    return out


def available_sources(parts: QuerySet[Part] | None = None) -> list[SourceOption]:
    """The sources that have texts for `parts` (all parts if None), signed-out control first."""
    parts = parts if parts is not None else Part.objects.all()
    options = [SourceOption(SIGNED, SIGNED_LABEL, len(_signed_texts(parts)))]
    counts: dict[str, int] = {}
    for _part_id, key in _ai_texts(parts):
        counts[key] = counts.get(key, 0) + 1
    for key in sorted(counts):
        options.append(SourceOption(key, source_label(key), counts[key]))
    return options


def collect(parts: QuerySet[Part], source_keys: Iterable[str]) -> list[Candidate]:
    """The texts of the chosen sources for these parts; a part without a text from a source is skipped
    for that source (the study page says how many items each source got)."""
    keys = list(dict.fromkeys(source_keys))
    parts_by_id = {part.pk: part for part in parts.select_related("case")}
    out: list[Candidate] = []
    if SIGNED in keys:
        for part_id, (text, ref) in _signed_texts(parts).items():
            out.append(Candidate(parts_by_id[part_id], SIGNED, text, ref))
    wanted_ai = {key for key in keys if key.startswith("ai:")}
    if wanted_ai:
        for (part_id, key), (text, ref) in _ai_texts(parts).items():
            if key in wanted_ai:
                out.append(Candidate(parts_by_id[part_id], key, text, ref))
    out.sort(key=lambda c: (c.part.pk, keys.index(c.source_key) if c.source_key in keys else len(keys)))
    return out


def draft_signed_pairs(parts: QuerySet[Part]) -> dict[str, list[tuple[str, str]]]:
    """From the reporting workflow: {AI source key: [(draft text, signed text)]} for parts that have both,
    i.e. what the model wrote next to what the pathologist signed (for the edit distance)."""
    signed = _signed_texts(parts)
    out: dict[str, list[tuple[str, str]]] = {}
    for (part_id, key), (text, _ref) in _ai_texts(parts).items():
        if part_id in signed:
            out.setdefault(key, []).append((text, signed[part_id][0]))
    return out


# --- what raters see ---------------------------------------------------------------------------------
# One clean-up for every source (shared with the retrieval draft and evidence): see webapp/reports/text.py.
def normalise_for_rating(text: str, case=None, staff: list[str] | None = None) -> str:
    """The text a rater sees: history and signature dropped, layout unified, de-identified against the
    staff's names and the case's own accession number and pseudonym."""
    known = list(staff if staff is not None else staff_names())
    if case is not None:
        known += case_identifiers(case)
    return without_case_specifics(text, known)
