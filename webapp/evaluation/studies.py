"""Building a study: choose parts, collect texts, hide their sources, assign raters, save ratings.

Plain functions (no requests) so tests and the demo call them directly; views stay thin.
"""
from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet

from webapp.cases.deid import staff_names
from webapp.cases.models import SIGNED_OUT_STATUSES, Part
from webapp.slides.models import Slide

from . import sources
from .models import (
    DEFAULT_RATER_INSTRUCTION,
    ERROR_REQUIRED_MAX,
    Assignment,
    ErrorKind,
    Item,
    Rating,
    Study,
    StudyStatus,
)


class StudyError(Exception):
    """A request the rules refuse, with a message for the lab admin."""


class UnbalancedArms(StudyError):
    """The arms (sources) would get very different numbers of items: built only when the lab admin accepts."""


# Arms count as unbalanced when the smallest has fewer than this share of the largest's items.
BALANCE_MIN_RATIO = 0.8


@dataclass
class Selection:
    """Which parts a study covers. Every given filter applies (AND); an accession list narrows further.
    Accession entries are "S26-00042" (all its parts) or "S26-00042-B" (one part)."""

    site: str = ""
    received_from: date | None = None
    received_to: date | None = None
    signed_out_only: bool = False
    accessions: Sequence[str] = ()

    def as_json(self) -> dict:
        return {
            "site": self.site,
            "received_from": self.received_from.isoformat() if self.received_from else None,
            "received_to": self.received_to.isoformat() if self.received_to else None,
            "signed_out_only": self.signed_out_only,
            "accessions": list(self.accessions),
        }


def parse_accessions(text: str) -> list[str]:
    """Accession numbers from free text (commas, spaces or lines), upper-cased, duplicates removed."""
    return list(dict.fromkeys(token.upper() for token in re.split(r"[\s,;]+", text or "") if token))


def _split_accession(entry: str) -> tuple[str, str | None]:
    """("S26-00042", None) for a whole case, ("S26-00042", "B") for one part."""
    match = re.fullmatch(r"(.+\d)-([A-Z]{1,2})", entry)
    return (match.group(1), match.group(2)) if match else (entry, None)


def select_parts(selection: Selection) -> QuerySet[Part]:
    parts = Part.objects.all()
    if selection.site:
        parts = parts.filter(Q(site__icontains=selection.site) | Q(procedure__icontains=selection.site))
    if selection.received_from:
        parts = parts.filter(case__received_date__gte=selection.received_from)
    if selection.received_to:
        parts = parts.filter(case__received_date__lte=selection.received_to)
    if selection.signed_out_only:
        parts = parts.filter(case__status__in=SIGNED_OUT_STATUSES)
    if selection.accessions:
        wanted = Q(pk__in=[])
        for entry in selection.accessions:
            accession, label = _split_accession(entry)
            wanted |= Q(case__accession_number=accession, **({"label": label} if label else {}))
        parts = parts.filter(wanted)
    return parts.order_by("case__accession_number", "label")


def unknown_accessions(selection: Selection) -> list[str]:
    """Entries of the accession list that name no case or part (so the form can say so)."""
    missing = []
    for entry in selection.accessions:
        accession, label = _split_accession(entry)
        found = Part.objects.filter(case__accession_number=accession, **({"label": label} if label else {}))
        if not found.exists():
            missing.append(entry)
    return missing


def assign_balanced(item_ids: Sequence[int], evaluator_ids: Sequence[int], per_item: int,
                    rng: random.Random) -> dict[int, list[int]]:
    """{evaluator id: [item ids]}: every item to `per_item` distinct evaluators, loads within one item of
    each other. Greedy: each item goes to the least-loaded evaluators (ties broken at random). If all loads
    are m or m+1 before an item, they are still within one after it, so the spread never exceeds one."""
    if per_item < 1:
        raise StudyError("Each item needs at least one rater.")
    if per_item > len(set(evaluator_ids)):
        raise StudyError(f"{per_item} raters per item needs at least {per_item} evaluators.")
    evaluators = list(dict.fromkeys(evaluator_ids))
    load = {evaluator: 0 for evaluator in evaluators}
    queues: dict[int, list[int]] = {evaluator: [] for evaluator in evaluators}
    for item in item_ids:
        order = evaluators[:]
        rng.shuffle(order)
        chosen = sorted(order, key=lambda e: load[e])[:per_item]  # sort is stable: random among equals
        for evaluator in chosen:
            load[evaluator] += 1
            queues[evaluator].append(item)
    return queues


def first_slide(part: Part) -> Slide | None:
    return Slide.objects.filter(part=part).order_by("block_label", "created_at").first()


def specimen_line(part: Part) -> str:
    return ", ".join(bit for bit in (part.site, part.procedure) if bit)


# --- planning: pairing, duplicates, balance -----------------------------------------------------------
def comparison_key(text: str) -> str:
    """Two texts that are the same after this (Unicode NFKC, case folded, runs of white space as one
    space) read the same to a rater."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def part_name(part: Part) -> str:
    return f"{part.case.accession_number}-{part.label}"


@dataclass
class Planned:
    candidate: sources.Candidate
    text: str  # as raters will read it (normalise_for_rating)


@dataclass
class Plan:
    """What a study would contain, and what the builder has to say about it."""

    source_keys: list[str]
    labels: dict[str, str]
    paired: bool
    items: list[Planned] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)  # parts left out: not every source has a text for them
    # Texts that read the same in two arms: [(parts and sources, e.g. "S26-00042-A (Signed-out report)")].
    duplicates: list[list[str]] = field(default_factory=list)

    def per_source(self) -> dict[str, int]:
        counts = dict.fromkeys(self.source_keys, 0)
        for planned in self.items:
            counts[planned.candidate.source_key] = counts.get(planned.candidate.source_key, 0) + 1
        return counts

    def balanced(self) -> bool:
        counts = [count for count in self.per_source().values()]
        return len(counts) < 2 or (max(counts) > 0 and min(counts) >= BALANCE_MIN_RATIO * max(counts))

    def counts_in_words(self) -> str:
        return ", ".join(f"{self.labels.get(key, key)}: {count} item{'s' if count != 1 else ''}"
                         for key, count in self.per_source().items())

    def balance_warning(self) -> str:
        if self.balanced():
            return ""
        return (f"The arms are unbalanced ({self.counts_in_words()}). Raters would see one kind of text far more "
                "often than another, which both hints at the source and weakens the comparison. Pair the sources "
                "per slide, or choose parts that have texts from every source.")

    def duplicate_message(self) -> str:
        if not self.duplicates:
            return ""
        shown = "; ".join(" = ".join(group) for group in self.duplicates[:5])
        more = f" and {len(self.duplicates) - 5} more" if len(self.duplicates) > 5 else ""
        return (f"{len(self.duplicates)} text{' is' if len(self.duplicates) == 1 else 's are'} the same in two arms "
                f"(ignoring case and spacing): {shown}{more}. A rater would rate the same words twice under "
                "different sources. Leave those parts out (accession list, or the option to drop them) or "
                "choose other sources.")


def plan_study(candidates: Iterable[sources.Candidate], source_keys: Sequence[str], *, paired: bool = True,
               labels: dict[str, str] | None = None, staff: list[str] | None = None,
               drop_duplicates: bool = False, quick: bool = False) -> Plan:
    """Normalise every text as raters will read it, keep only parts with a text from every source when
    `paired` (the default: AI and control are rated on the same slides), find texts that read the same in
    two arms (anywhere in the study: a retrieval draft may copy another case's signed report), and drop their
    parts when `drop_duplicates`. `quick` (the form's live preview) compares the texts as stored, without
    the de-identification pass (about 5 ms a text, and seconds to load the first time); building always
    compares what raters will read."""
    keys = list(dict.fromkeys(source_keys))
    labels = {**{key: sources.source_label(key) for key in keys}, **(labels or {})}
    plan = Plan(source_keys=keys, labels=labels, paired=paired)
    staff = [] if quick else staff_names() if staff is None else staff
    candidates = sorted(candidates, key=lambda c: (c.part.case.accession_number, c.part.label, c.source_key))
    if paired and len(keys) > 1:
        by_part: dict[int, set[str]] = {}
        for candidate in candidates:
            by_part.setdefault(candidate.part.pk, set()).add(candidate.source_key)
        complete = {part_id for part_id, found in by_part.items() if set(keys) <= found}
        plan.unpaired = list(dict.fromkeys(part_name(c.part) for c in candidates if c.part.pk not in complete))
        candidates = [c for c in candidates if c.part.pk in complete]
    planned = [Planned(c, c.text if quick else sources.normalise_for_rating(c.text, c.part.case, staff))
               for c in candidates]
    groups: dict[str, list[Planned]] = {}
    for entry in planned:
        groups.setdefault(comparison_key(entry.text), []).append(entry)
    clashing: set[int] = set()
    for group in groups.values():
        if len({entry.candidate.source_key for entry in group}) > 1:
            plan.duplicates.append([f"{part_name(e.candidate.part)} ({labels.get(e.candidate.source_key)})"
                                    for e in group])
            clashing |= {entry.candidate.part.pk for entry in group}
    if drop_duplicates and clashing:
        planned = [entry for entry in planned if entry.candidate.part.pk not in clashing]
        plan.duplicates = []
    plan.items = planned
    return plan


@transaction.atomic
def build_study(
    *, name: str, parts: QuerySet[Part] | Iterable[Part], source_keys: Sequence[str], evaluators: Sequence,
    raters_per_item: int, seed: int, description: str = "", include_clinical_history: bool = False,
    created_by=None, selection: dict | None = None, candidates: list[sources.Candidate] | None = None,
    labels: dict[str, str] | None = None, rater_instruction: str = "", show_overlays: bool = False,
    show_annotations: bool = False, paired: bool = True, drop_duplicates: bool = False, accept_unbalanced: bool = False,
) -> Study:
    """Create the study, its items (text snapshots, in a seeded random order so database ids follow no
    source) and the assignments. `candidates` lets the demo pass texts that are not in the reports app.

    Blinding rules (`plan_study`): AI and control are paired per part (slide) unless `paired` is False;
    texts that read the same in two arms are refused (StudyError) unless `drop_duplicates` leaves their
    parts out; unbalanced arms raise UnbalancedArms unless `accept_unbalanced`."""
    evaluators = list(dict.fromkeys(evaluators))
    if not evaluators:
        raise StudyError("Choose at least one evaluator.")
    if any(not getattr(user, "is_evaluator", False) for user in evaluators):
        raise StudyError("Only active users with the evaluator role can rate.")
    if not 1 <= raters_per_item <= len(evaluators):
        raise StudyError(f"Raters per item must be between 1 and the number of evaluators ({len(evaluators)}).")
    if candidates is None:
        part_qs = parts if isinstance(parts, QuerySet) else Part.objects.filter(pk__in=[p.pk for p in parts])
        candidates = sources.collect(part_qs, source_keys)
    if not candidates:
        raise StudyError("No texts found for these parts and sources.")
    labels = {**{key: sources.source_label(key) for key in source_keys}, **(labels or {})}
    staff = staff_names()  # read once: every text is de-identified against every staff name
    plan = plan_study(candidates, source_keys, paired=paired, labels=labels, staff=staff,
                      drop_duplicates=drop_duplicates)
    if plan.duplicates:
        raise StudyError(plan.duplicate_message())
    if not plan.items:
        raise StudyError("No part has a text from every chosen source, so no pair can be rated. Choose other "
                         "parts or sources, or switch off pairing." if plan.unpaired else
                         "No texts found for these parts and sources.")
    if not plan.balanced() and not accept_unbalanced:
        raise UnbalancedArms(plan.balance_warning())
    notes = {"per_source": plan.per_source(), "unpaired_left_out": plan.unpaired,
             "balanced": plan.balanced()}
    study = Study.objects.create(
        name=name, description=description, raters_per_item=raters_per_item, seed=seed,
        include_clinical_history=include_clinical_history, created_by=created_by,
        selection={**(selection or {}), "build": notes},
        sources=[{"key": key, "label": labels.get(key, key)} for key in dict.fromkeys(source_keys)],
        rater_instruction=rater_instruction.strip() or DEFAULT_RATER_INSTRUCTION, show_overlays=show_overlays,
        show_annotations=show_annotations, paired=paired,
    )
    study.evaluators.set(evaluators)
    rng = random.Random(f"study:{seed}")  # noqa: S311 - reproducible shuffling, not security
    # A canonical order first, so the same parts, sources, raters and seed give the same study whatever
    # order they were passed in (and on another database, with other ids).
    planned = plan.items[:]  # in canonical order (plan_study sorts)
    evaluators = sorted(evaluators, key=lambda user: user.username)
    rng.shuffle(planned)
    slides: dict[int, Slide | None] = {}
    items = []
    for entry in planned:
        candidate = entry.candidate
        part = candidate.part
        if part.pk not in slides:
            slides[part.pk] = first_slide(part)
        items.append(Item(
            study=study, case_id=part.case_id, part=part, slide=slides[part.pk],
            text=entry.text, source_key=candidate.source_key,
            source_ref=candidate.ref, specimen=specimen_line(part),
            clinical_history=part.case.clinical_history if include_clinical_history else "",
        ))
    items = Item.objects.bulk_create(items)
    queues = assign_balanced([item.pk for item in items], [user.pk for user in evaluators], raters_per_item, rng)
    part_of = {item.pk: item.part_id for item in items}
    assignments = []
    for evaluator in evaluators:
        queue = queues[evaluator.pk][:]
        # Each evaluator's own order, from the study seed and who they are: reproducible, and unrelated to
        # anyone else's order or to the sources.
        random.Random(f"queue:{seed}:{evaluator.username}").shuffle(queue)  # noqa: S311
        queue = spaced_out(queue, part_of)
        assignments += [Assignment(study=study, item_id=item_id, evaluator=evaluator, position=position)
                        for position, item_id in enumerate(queue, start=1)]
    Assignment.objects.bulk_create(assignments)
    return study


WASHOUT = 3  # a rater's queue puts at least this many other texts between two texts of the same slide


def spaced_out(queue: Sequence[int], part_of: dict[int, int], gap: int = WASHOUT) -> list[int]:
    """`queue` reordered so two texts of the same part (the AI text and the control of a pair) are at least
    `gap` other texts apart where the queue allows it: read back to back, the second would be judged against
    the first rather than against the slide. Greedy and deterministic: each place takes the first remaining
    item whose part is not among the last `gap` placed (the shuffled order otherwise kept)."""
    remaining, out = list(queue), []
    while remaining:
        recent = {part_of[item] for item in out[-gap:]}
        pick = next((item for item in remaining if part_of[item] not in recent), remaining[0])
        remaining.remove(pick)
        out.append(pick)
    return out


# --- ratings -------------------------------------------------------------------------------------------
def queue(study: Study, evaluator) -> QuerySet[Assignment]:
    return study.assignments.filter(evaluator=evaluator).order_by("position")


def progress(study: Study, evaluator) -> dict:
    counts = queue(study, evaluator).aggregate(total=Count("id"), done=Count("rating"))
    total, done = counts["total"], counts["done"]
    return {"total": total, "done": done, "percent": round(100 * done / total) if total else 0}


def next_unrated(study: Study, evaluator, after: int = 0) -> Assignment | None:
    """The first unrated assignment after position `after`, wrapping round to the start."""
    pending = queue(study, evaluator).filter(rating__isnull=True)
    return pending.filter(position__gt=after).first() or pending.first()


def save_rating(assignment: Assignment, score: int, error_kind: str = "", comment: str = "") -> Rating:
    """Create or revise the evaluator's rating for this assignment (one per assignment, by constraint)."""
    if assignment.study.status != StudyStatus.OPEN:
        raise StudyError("This study is closed; ratings can no longer change.")
    if score not in (1, 2, 3, 4, 5):
        raise StudyError("Choose a rating from 1 to 5.")
    if error_kind and error_kind not in ErrorKind.values:
        raise StudyError("Unknown kind of error.")
    if score <= ERROR_REQUIRED_MAX and not error_kind:
        raise StudyError("For a rating of 3 or less, choose the kind of error.")
    defaults = {"score": score, "error_kind": error_kind, "comment": comment.strip()}
    try:
        with transaction.atomic():
            rating, _ = Rating.objects.update_or_create(assignment=assignment, defaults=defaults)
    except IntegrityError:  # two tabs saving the first rating at once: the second one updates
        rating, _ = Rating.objects.update_or_create(assignment=assignment, defaults=defaults)
    return rating
