"""Rendering a slide's in-between Deep Zoom levels once, in the background (prerendered.py says what and why).

A new slide is queued on the default queue when it is stored (if its file has such levels); the management
command `prerender_viewer_levels` does the same for slides stored before, or again on demand.
"""
from __future__ import annotations

import logging

import openslide
from django.conf import settings
from django.dispatch import receiver

from webapp.jobs.runner import JobFailed, Progress, create_job, job_handler

from . import prerendered, tiles
from .models import Slide
from .signals import slide_stored

log = logging.getLogger(__name__)
PRERENDER = "prerender_viewer_levels"


def prerender_slide(slide: Slide, force: bool = False, progress: Progress | None = None) -> dict:
    """Write the companion of `slide`'s file (idempotent: an existing, valid one is kept unless `force`).
    Returns what was done, in words and figures."""
    try:
        opened = tiles.slides.get(str(slide.pk), slide.path)
    except tiles.SlideUnreadable as exc:
        raise JobFailed(str(exc)) from None
    lookup = opened.prerendered
    if lookup is None or opened.raw is None:
        return {"levels": 0, "message": "Nothing to render: the viewer's levels are the file's own, or the file's "
                                        f"tiles cannot be passed through ({opened.passthrough_note})."}
    tile_size = opened.raw.tile_size
    if not force and prerendered.open_companion(lookup.key, opened.dz, opened.half, tile_size) is not None:
        return {"levels": len(opened.half), "message": "Already rendered."}

    def render(level: int, col: int, row: int) -> bytes | None:
        try:
            return tiles.render_dz_tile(opened, level, col, row, "jpeg", use_prerendered=False)
        except (tiles.SlideUnreadable, openslide.OpenSlideError) as exc:
            log.warning("slide %s: tile %s/%s_%s left to the renderer: %s", slide.pk, level, col, row, exc)
            return None

    def report(done: int, total: int) -> None:
        if progress:
            progress(done / max(total, 1), f"{done:,} of {total:,} tiles rendered")

    path, stored, left_out = prerendered.write_companion(lookup.key, opened.dz, opened.half, tile_size, render,
                                                          report)
    return {"levels": len(opened.half), "tiles": stored, "left_out": left_out, "bytes": path.stat().st_size,
            "message": f"{stored:,} tiles of {len(opened.half)} levels rendered"
                       + (f"; {left_out} could not be (corrupt source tiles: still refused)" if left_out else "")}


@job_handler(PRERENDER, queue="default")
def run_prerender(job, progress: Progress) -> dict:
    if job.slide is None:
        raise JobFailed("The job names no slide.")
    return prerender_slide(job.slide, force=bool(job.params.get("force")), progress=progress)


def wants_prerender(slide: Slide) -> bool:
    """Whether the slide's file has in-between levels worth rendering (opening it is milliseconds)."""
    try:
        return tiles.slides.get(str(slide.pk), slide.path).prerendered is not None
    except tiles.SlideUnreadable:
        return False


@receiver(slide_stored, dispatch_uid="slides_prerender_new_slide")
def on_slide_stored(sender, slide: Slide, user=None, **kwargs) -> None:
    if not settings.VIEWER_LEVELS_PRERENDER:
        return
    try:
        if wants_prerender(slide):
            create_job(PRERENDER, slide=slide, case=slide.part.case, user=user)
    except Exception:  # noqa: BLE001 - never break an upload because the viewer's levels could not be queued
        log.exception("could not queue the viewer levels of slide %s", slide.pk)
