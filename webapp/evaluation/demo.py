"""Demo rating study for `make run`, with simulated ratings so the results page has real charts.

If the reports app holds AI drafts and signed reports for the demo cases, the study compares those. Until
then it is built from the synthetic corpus: each case's report text stands in as the signed-out report
(the control) and a deterministic perturbation of it (reworded, wrong grade, a dropped finding, an invented
finding, a wrong diagnosis) stands in for an AI source. The study's name and description say so, and the
ratings are simulated (one rater is a simulated account that cannot log in); eval_kim's queue is left
half done so the rating page can be tried.
"""
from __future__ import annotations

import random
import re

from django.db import transaction

from webapp.accounts.models import User
from webapp.cases.models import Part

from . import sources, stats, studies
from .models import Assignment, Study

REAL_NAME = "Demo study: AI drafts vs signed-out reports (simulated ratings)"
STANDIN_NAME = "Demo study: signed-out text vs a perturbed stand-in for an AI draft (simulated ratings)"
STANDIN_KEY = "demo_perturbed"
STANDIN_LABEL = "Stand-in AI source: perturbed signed-out text (demo only)"
SIM_USERNAME = "eval_sim"
SEED = 2026

HALLUCINATION = " Lymphovascular invasion is present."
GRADES = {"well": "poorly", "moderately": "well", "poorly": "moderately"}
# Simulated (score, error kind) per perturbation, and the alternative a rater picks now and then.
SIMULATED = {
    "control": ((5, ""), (4, "")),
    "reworded": ((5, ""), (4, "")),
    "wrong_grade": ((3, "wrong_grade_stage"), (2, "wrong_grade_stage")),
    "dropped_finding": ((4, ""), (3, "missed_finding")),
    "invented_finding": ((3, "hallucinated_finding"), (2, "hallucinated_finding")),
    "wrong_diagnosis": ((1, "wrong_diagnosis"), (2, "wrong_diagnosis")),
}


def reword(text: str) -> str:
    for old, new in (("Sections show", "The sections demonstrate"), ("are present", "are seen"),
                     ("is present", "is seen"), ("Negative for", "No evidence of")):
        text = text.replace(old, new)
    return text


def perturb(text: str, index: int, other_diagnosis: str, diagnosis: str) -> tuple[str, str]:
    """(perturbed text, what was done) for the `index`-th demo case; deterministic."""
    kind = ("reworded", "wrong_grade", "dropped_finding", "invented_finding", "wrong_diagnosis")[index % 5]
    if kind == "wrong_grade":
        match = re.search(r"\b(well|moderately|poorly)( differentiated)(?: \(G[123]\))?", text, re.IGNORECASE)
        if match:
            word = GRADES[match.group(1).lower()]
            grade = {"well": "G1", "moderately": "G2", "poorly": "G3"}[word]
            word = word.capitalize() if match.group(1)[0].isupper() else word
            return text[:match.start()] + f"{word}{match.group(2)} ({grade})" + text[match.end():], kind
        match = re.search(r"\b(low|high)-grade\b", text)
        if match:
            return text[:match.start()] + ("high" if match.group(1) == "low" else "low") + text[match.end() - 6:], kind
    if kind == "dropped_finding":
        lines = text.split("\n")
        findings = [i for i, line in enumerate(lines) if re.match(r"^\s+(-\s*)?[A-Z]|^-\s", line)]
        if len(findings) >= 2:
            del lines[findings[-1]]
            return "\n".join(lines), kind
    if kind == "invented_finding":
        heading = re.search(r"diagnosis", text, re.IGNORECASE)
        end = re.compile(r"\.(?=\n|$)").search(text, heading.end() if heading else 0)
        if end:
            return text[:end.end()] + HALLUCINATION + text[end.end():], kind
    if kind == "wrong_diagnosis" and diagnosis and other_diagnosis:
        swapped, count = re.subn(re.escape(diagnosis), other_diagnosis, text, count=1, flags=re.IGNORECASE)
        if count:
            return swapped, kind
    return reword(text), "reworded"


# Added to a report that no perturbation changes (no phrase to reword, no grade, one finding): clinically
# neutral, so the stand-in stays a "reworded" text, but never the control's words.
UNCHANGED_FALLBACK = "Clinical correlation is recommended."


def _same_words(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def simulated_rater(context):
    user = User.objects.filter(username=SIM_USERNAME).first()
    if user is None:
        user = User(username=SIM_USERNAME, role="evaluator", first_name="Simulated", last_name="Rater (demo)")
        user.set_unusable_password()  # a stand-in second rater; nobody logs in as it
        user.save()
    return user


def _standin_candidates(context) -> tuple[list[sources.Candidate], dict[tuple[int, str], str]]:
    candidates, kinds = [], {}
    records = context.manifest
    for index, (case, record) in enumerate(zip(context.cases, records, strict=False)):
        part = case.parts.order_by("label").first()
        if part is None or not record.get("report"):
            continue
        labels = record.get("labels", {})
        other = next((r for r in records[index + 1:] + records[:index]
                      if r.get("labels", {}).get("diagnosis") != labels.get("diagnosis")), {})
        text, kind = perturb(record["report"], index, other.get("labels", {}).get("diagnosis_display", ""),
                             labels.get("diagnosis_display", ""))
        if _same_words(text, record["report"]):  # nothing to perturb: the builder refuses a text in both arms
            text, kind = record["report"].rstrip() + "\n" + UNCHANGED_FALLBACK + "\n", "reworded"
        candidates.append(sources.Candidate(part, sources.SIGNED, record["report"], {"demo": "manifest"}))
        candidates.append(sources.Candidate(part, STANDIN_KEY, text, {"demo": kind}))
        kinds[(part.pk, sources.SIGNED)] = "control"
        kinds[(part.pk, STANDIN_KEY)] = kind
    return candidates, kinds


def _simulated_score(kind: str | None, text: str, reference: str, rng: random.Random) -> tuple[int, str]:
    if kind is None:  # a real draft: guess from how far it is from the signed text
        distance = stats.edit_distance(text, reference)
        score = 5 if distance < 0.1 else 4 if distance < 0.3 else 3 if distance < 0.5 else 2 if distance < 0.7 else 1
        choice = (score, "" if score > 3 else "other")
        return choice if rng.random() > 0.25 else (max(1, score - 1), "other")
    usual, other = SIMULATED[kind]
    return usual if rng.random() > 0.25 else other


@transaction.atomic
def seed(context) -> None:
    if Study.objects.filter(name=REAL_NAME).exists():
        return
    evaluator = context.users.get("eval_kim")
    if evaluator is None or not context.cases:
        return
    parts = Part.objects.filter(case__in=context.cases)
    options = {option.key: option.parts for option in sources.available_sources(parts)}
    ai_keys = [key for key, count in options.items() if key.startswith("ai:") and count >= 3]
    real = bool(ai_keys) and options.get(sources.SIGNED, 0) >= 3
    # Real drafts win as soon as they exist (a later `make run` adds that study next to the stand-in one).
    if not real and Study.objects.filter(name=STANDIN_NAME).exists():
        return
    raters = [evaluator, simulated_rater(context)]
    kinds: dict[tuple[int, str], str] = {}
    if real:
        name, keys, candidates, labels = REAL_NAME, [sources.SIGNED, *ai_keys], None, None
        description = ("AI drafts of the demo model next to the reports pathologists signed. Ratings are "
                       "simulated from each draft's distance to the signed text, for the demo only.")
    else:
        candidates, kinds = _standin_candidates(context)
        name, keys, labels = STANDIN_NAME, [sources.SIGNED, STANDIN_KEY], {STANDIN_KEY: STANDIN_LABEL}
        description = ("No AI drafts exist for the demo cases yet, so the compared 'AI' text is a deterministic "
                       "perturbation of each synthetic report (reworded, wrong grade, a dropped finding, an "
                       "invented finding, or a wrong diagnosis). The ratings are simulated; eval_kim's queue is "
                       "half done so you can continue it.")
        if not candidates:
            return
    study = studies.build_study(
        name=name, description=description, parts=parts, source_keys=keys, evaluators=raters, raters_per_item=2,
        seed=SEED, created_by=context.users.get("labadmin"), candidates=candidates, labels=labels,
        selection={"demo": True}, drop_duplicates=True,  # two demo cases may share a report word for word
    )
    references = dict(study.items.filter(source_key=sources.SIGNED).values_list("part_id", "text"))
    for assignment in Assignment.objects.filter(study=study).select_related("item", "evaluator"):
        if assignment.evaluator == evaluator and assignment.position > len(references):
            continue  # leave the second half of eval_kim's queue to rate in the browser
        item = assignment.item
        rng = random.Random(f"{assignment.evaluator.username}:{item.part_id}:{item.source_key}")  # noqa: S311
        kind = kinds.get((item.part_id, item.source_key))
        if kind is None and item.source_key == sources.SIGNED:
            kind = "control"
        score, error = _simulated_score(kind, item.text, references.get(item.part_id, ""), rng)
        studies.save_rating(assignment, score, error, "simulated demo rating")
    context.log(f"Demo rating study ready: {study.items.count()} items, {study.assignments.count()} assignments.")
