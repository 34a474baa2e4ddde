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


# What each kind of job does, in the words of the people who use the app (job kinds are code names).
KIND_LABELS = {
    "analyze_slide": "Slide analysis",
    "draft_report": "AI draft of a report",
    "embed_report": "Index a signed report for search",
    "train_bundle": "Train a model from signed-out cases",
    "reembed_archive": "Re-index the archive with a model",
    "selftest": "Worker self-test",
    "prerender_viewer_levels": "Prepare the slide viewer's zoom levels",
}
KIND_DESCRIPTIONS = {
    "analyze_slide": "Finds the tissue, reads it in patches and computes the slide's embedding and heatmap.",
    "draft_report": "Writes a suggested report text for a case with the active model.",
    "embed_report": "Makes a signed-out report findable by similar-case search and retrieval drafts.",
    "train_bundle": "Trains a new model version from signed-out cases and measures it on held-out cases.",
    "reembed_archive": "Queues every slide and signed report again after the active model changed.",
    "selftest": "Checks that a worker picks up and runs jobs.",
    "prerender_viewer_levels": "Renders once the zoom levels the scanner did not store, so panning at them is fast.",
}


@register.filter
def job_kind(kind: str) -> str:
    """'embed_report' -> 'Index a signed report for search'; an unknown kind -> 'Embed report'."""
    if kind in KIND_LABELS:
        return KIND_LABELS[kind]
    words = kind.replace("_", " ").replace(".", " ").replace("-", " ").split()
    return " ".join(words).capitalize() if words else ""


@register.filter
def job_kind_help(kind: str) -> str:
    return KIND_DESCRIPTIONS.get(kind, "")


@register.filter
def wait_time(job) -> dt.timedelta | None:
    """How long the job waited in the queue before a worker started it (until now while it waits)."""
    if job.created_at is None:
        return None
    if job.started_at:
        return job.started_at - job.created_at
    if job.state == "queued":
        from django.utils import timezone

        return timezone.now() - job.created_at
    return None
