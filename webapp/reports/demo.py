"""Demo data for reports: the default label sets (organ, diagnosis category, triage)."""
from __future__ import annotations

from .labelsets import ensure_default_label_sets


def seed(context) -> None:
    created = ensure_default_label_sets()
    if created:
        context.log(f"{created} label sets for AI classification created.")
