"""A slide's resolution (microns per level-0 pixel): what the file says when plausible, else unknown until a
lab admin sets it.

TIFF writers put 72 dpi into their resolution tags by default, which OpenSlide reports as 352.8 um/px; a
patch grid at 1 um/px would then make every level-0 pixel its own patch. So a value outside PLAUSIBLE_MPP
(the model library's `inference.slides.PLAUSIBLE_MPP`, the same range; a test checks they agree), or none at
all, means "resolution unknown": the slide page says so, a lab admin can set the value, and analysis waits
for it (`resolution_set` is sent when it is set; the analysis app queues the slide then).
"""
from __future__ import annotations

import logging

from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone

log = logging.getLogger(__name__)

PLAUSIBLE_MPP = (0.1, 20.0)  # um/px: beyond 100x oil immersion .. a 0.5x overview scan
resolution_set = Signal()  # kwargs: slide, user


def plausible(value: float | None) -> bool:
    return value is not None and PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]


def scanned_mpp(slide) -> float | None:
    """The file's level-0 um/px (mean of x and y) when both are plausible, else None."""
    x, y = slide.mpp_x, slide.mpp_y if slide.mpp_y is not None else slide.mpp_x
    return (x + y) / 2 if plausible(x) and plausible(y) else None


def effective_mpp(slide) -> float | None:
    """The um/px analysis uses: a lab admin's value, else the file's plausible one, else None (unknown)."""
    return slide.mpp_override if slide.mpp_override else scanned_mpp(slide)


def known_q(prefix: str = "") -> Q:
    """Slides whose resolution is known, as a queryset filter (`prefix` e.g. "slide__")."""
    lo, hi = PLAUSIBLE_MPP
    return Q(**{f"{prefix}mpp_override__isnull": False}) | (
        Q(**{f"{prefix}mpp_x__gte": lo, f"{prefix}mpp_x__lte": hi})
        & (Q(**{f"{prefix}mpp_y__isnull": True}) | Q(**{f"{prefix}mpp_y__gte": lo, f"{prefix}mpp_y__lte": hi}))
    )


def unknown_reason(slide) -> str:
    """Why the resolution is unknown, for the slide page ("" when it is known)."""
    if effective_mpp(slide) is not None:
        return ""
    if slide.mpp_x is None:
        return "The file records no microns per pixel."
    return (f"The file says {slide.mpp_x:.4g} µm/px, outside {PLAUSIBLE_MPP[0]:g}–{PLAUSIBLE_MPP[1]:g} µm/px "
            "(a TIFF writer's 72-dpi default reads as 352.8).")


def note_ingested(slide) -> None:
    """Called by ingest for every new slide: log when its resolution is unknown."""
    if effective_mpp(slide) is None:
        log.warning("slide %s: resolution unknown (%s); analysis waits until a lab admin sets it",
                    slide.pk, unknown_reason(slide))


def set_mpp(slide, mpp: float, user) -> None:
    """A lab admin's um/px for the slide (ValueError when implausible); analysis is queued afterwards."""
    if not plausible(mpp):
        raise ValueError(f"{mpp:g} µm/px is outside {PLAUSIBLE_MPP[0]:g}–{PLAUSIBLE_MPP[1]:g}")
    slide.mpp_override, slide.mpp_override_by, slide.mpp_override_at = float(mpp), user, timezone.now()
    slide.save(update_fields=["mpp_override", "mpp_override_by", "mpp_override_at"])
    resolution_set.send(sender=type(slide), slide=slide, user=user)
