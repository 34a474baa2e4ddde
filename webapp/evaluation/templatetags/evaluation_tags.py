"""Number formatting for the results pages: a dash for undefined figures rather than 'None' or 'nan'."""
from __future__ import annotations

from django import template

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
