"""Filters for showing jobs: `duration`, `percent`, `first_line`."""
from __future__ import annotations

import datetime as dt

from django import template

register = template.Library()


@register.filter
def duration(value: dt.timedelta | None) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@register.filter
def percent(value: float | None) -> int:
    return round(100 * (value or 0))


@register.filter
def first_line(value: str | None) -> str:
    return (value or "").strip().splitlines()[0] if (value or "").strip() else ""
