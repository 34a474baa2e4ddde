"""Number formatting for the results pages: a dash for undefined figures rather than 'None' or 'nan'."""
from __future__ import annotations

from django import template

from webapp.evaluation.models import Study, StudyStatus
from webapp.evaluation.studies import progress

register = template.Library()


@register.filter
def pct(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


@register.filter
def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


@register.filter
def get(mapping: dict, key):
    return mapping.get(key) if mapping else None


@register.simple_tag
def rater_studies(user) -> list[dict]:
    """For the home page: the open studies this evaluator rates in, with their progress."""
    if not getattr(user, "is_evaluator", False):
        return []
    studies = Study.objects.filter(assignments__evaluator=user, status=StudyStatus.OPEN).distinct()
    return [{"study": study, "progress": progress(study, user)} for study in studies]
