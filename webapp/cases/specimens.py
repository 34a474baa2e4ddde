"""Specimen families: which organ and which kind of procedure a part is, from its free-text site and
procedure, by the lab's own rules (`SpecimenRule`, edited by lab admins on the specimen rules page, `/specimen-rules/`).

Retrieval drafts and their evidence come only from parts of the same organ and procedure family (a colon
biopsy is never drafted from a lung wedge resection); an AI draft that names another organ than its part's
is flagged. A part whose site matches no rule has no organ, and retrieval refuses to draft it rather than
guess.
"""
from __future__ import annotations

import re

from django.db import transaction

from .models import Part, SpecimenField, SpecimenRule

# The defaults cover the demo corpus's organs and the usual wording of a surgical pathology requisition.
DEFAULT_RULES: dict[str, list[tuple[str, str]]] = {
    SpecimenField.SITE: [
        ("colon", "colon"), ("colonic", "colon"), ("rectum", "colon"), ("rectal", "colon"), ("cecum", "colon"),
        ("caecum", "colon"), ("sigmoid", "colon"),
        ("stomach", "stomach"), ("gastric", "stomach"), ("antrum", "stomach"), ("antral", "stomach"),
        ("fundus", "stomach"), ("cardia", "stomach"),
        ("prostate", "prostate"), ("prostatic", "prostate"),
        ("breast", "breast"),
        ("lung", "lung"), ("pulmonary", "lung"), ("bronchus", "lung"), ("upper lobe", "lung"),
        ("lower lobe", "lung"), ("middle lobe", "lung"),
        ("skin", "skin"), ("cutaneous", "skin"), ("forearm", "skin"), ("scalp", "skin"), ("cheek", "skin"),
        ("shin", "skin"),
    ],
    SpecimenField.PROCEDURE: [
        ("polypectomy", "polypectomy"),
        ("biopsy", "biopsy"), ("core", "biopsy"), ("punch", "biopsy"), ("shave", "biopsy"),
        ("curettage", "biopsy"),
        ("resection", "resection"), ("excision", "resection"), ("lumpectomy", "resection"),
        ("mastectomy", "resection"), ("lobectomy", "resection"), ("wedge", "resection"),
        ("colectomy", "resection"), ("gastrectomy", "resection"), ("prostatectomy", "resection"),
    ],
}


def _pattern(contains: str) -> re.Pattern:
    return re.compile(rf"\b{re.escape(contains.strip())}\b", re.IGNORECASE)


def _current_rules() -> dict[str, list[tuple[re.Pattern, str]]]:
    # A small table, read per call so an edit takes effect at once in every process (re caches patterns).
    rules: dict[str, list[tuple[re.Pattern, str]]] = {SpecimenField.SITE: [], SpecimenField.PROCEDURE: []}
    rows = list(SpecimenRule.objects.order_by("order", "id").values_list("field", "contains", "family"))
    if not rows:  # a lab that has not set any rule gets the defaults (the migration also writes them)
        rows = [(field, contains, family) for field, pairs in DEFAULT_RULES.items() for contains, family in pairs]
    for field, contains, family in rows:
        rules[field].append((_pattern(contains), family))
    return rules


def family_of(field: str, text: str) -> str:
    for pattern, family in _current_rules()[field]:
        if pattern.search(text or ""):
            return family
    return ""


def classify(site: str, procedure: str) -> tuple[str, str]:
    """(organ, procedure family) of a part; '' where no rule matches."""
    return family_of(SpecimenField.SITE, site), family_of(SpecimenField.PROCEDURE, procedure)


def organs_named(text: str) -> set[str]:
    """The organs that a text names by any site rule's wording (for 'this draft names another organ')."""
    return {family for pattern, family in _current_rules()[SpecimenField.SITE] if pattern.search(text or "")}


def ensure_default_rules() -> int:
    """Create the default rules that are missing; returns how many were created."""
    created = 0
    with transaction.atomic():
        for field, rules in DEFAULT_RULES.items():
            for order, (contains, family) in enumerate(rules):
                _, new = SpecimenRule.objects.get_or_create(
                    field=field, contains=contains, defaults={"family": family, "order": order * 10})
                created += int(new)
    if created:
        reclassify_parts()
    return created


def reclassify_parts() -> int:
    """Re-derive every part's organ and procedure family after the rules changed: one UPDATE per rule (last
    rule first, so the first matching rule wins), never a Python loop over the archive's parts."""
    with transaction.atomic():
        Part.objects.update(organ="", procedure_family="")
        for field, column in ((SpecimenField.SITE, "organ"), (SpecimenField.PROCEDURE, "procedure_family")):
            for rule in SpecimenRule.objects.filter(field=field).order_by("-order", "-id"):
                # PostgreSQL's \m and \M are word boundaries (\b is a backspace there).
                regex = r"\m" + re.escape(rule.contains.strip()) + r"\M"
                Part.objects.filter(**{f"{field}__iregex": regex}).update(**{column: rule.family})
    return Part.objects.exclude(organ="").count()
