"""Overlay layers drawn over a slide in the viewer: a registry of named providers.

A provider takes a Slide and returns None (nothing for this slide) or a patch-grid heatmap:

    {"patch_size": 256,                 # level-0 pixels, the side of each square patch
     "coords": [[x, y], ...],           # level-0 top-left corner of each patch
     "values": [0.12, ...],             # one float per patch (any range; the viewer colour-maps min..max)
     "label": "Attention (model v3)"}

The analysis pipeline registers "attention" from its AppConfig.ready():

    from webapp.slides.overlays import register_overlay
    register_overlay("attention", attention_for_slide)

The views only ever call providers for slides the user may see. The layer's JSON also carries the slide's
tissue mask (`tissue_mask_json`) so the viewer colours tissue only, never the glass around it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import threading
from collections.abc import Callable

import numpy as np
from PIL import Image

from .models import Slide

log = logging.getLogger(__name__)

OverlayProvider = Callable[[Slide], "dict | None"]
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
MAX_PATCHES = 2_000_000
MASK_MIN_SIDE = 768  # the viewer's tissue mask: long side of the pyramid level it is made from, at least

_providers: dict[str, OverlayProvider] = {}
_lock = threading.Lock()


class OverlayError(ValueError):
    """A provider returned something that is not a valid overlay."""


def register_overlay(name: str, provider: OverlayProvider) -> None:
    """Register (or replace) the provider for overlay `name` (lowercase letters, digits, - and _)."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"overlay name {name!r} must match {NAME_PATTERN.pattern}")
    if not callable(provider):
        raise TypeError("provider must be callable")
    with _lock:
        _providers[name] = provider


def unregister_overlay(name: str) -> None:
    with _lock:
        _providers.pop(name, None)


def registered_names() -> list[str]:
    with _lock:
        return sorted(_providers)


def validate(name: str, data: dict) -> dict:
    """Check a provider's answer and return it normalised, with the value range for colour-mapping."""
    if not isinstance(data, dict):
        raise OverlayError(f"overlay {name!r}: provider returned {type(data).__name__}, not a dict")
    try:
        patch_size = float(data["patch_size"])
        coords = [[float(x), float(y)] for x, y in data["coords"]]
        values = [float(v) for v in data["values"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise OverlayError(
            f"overlay {name!r}: needs patch_size, coords [[x, y], ...] and values: {exc}"
        ) from None
    if not patch_size > 0 or not math.isfinite(patch_size):
        raise OverlayError(f"overlay {name!r}: patch_size must be a positive number")
    if len(coords) != len(values):
        raise OverlayError(f"overlay {name!r}: {len(coords)} coords but {len(values)} values")
    if len(values) > MAX_PATCHES:
        raise OverlayError(f"overlay {name!r}: more than {MAX_PATCHES} patches")
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) != len(values) or not all(math.isfinite(c) for pair in coords for c in pair):
        raise OverlayError(f"overlay {name!r}: coords and values must be finite numbers")
    return {
        "name": name,
        "label": str(data.get("label") or name),
        "patch_size": patch_size,
        "coords": coords,
        "values": values,
        "min": min(values, default=0.0),
        "max": max(values, default=0.0),
    }


def get_overlay(slide: Slide, name: str) -> dict | None:
    """The validated overlay `name` for `slide`, or None when unregistered or the provider has none."""
    with _lock:
        provider = _providers.get(name)
    if provider is None:
        return None
    data = provider(slide)
    return None if data is None else validate(name, data)


def available_overlays(slide: Slide) -> list[dict]:
    """[{"name", "label"}] for every registered overlay that has data for `slide`.

    A provider that fails is logged and left out, so one broken layer does not break the viewer.
    """
    result = []
    for name in registered_names():
        try:
            data = get_overlay(slide, name)
        except Exception:  # noqa: BLE001 - a provider is third-party code from the viewer's point of view
            log.exception("overlay provider %r failed for slide %s", name, slide.pk)
            continue
        if data is not None:
            result.append({"name": name, "label": data["label"], "patches": len(data["values"])})
    return result


def tissue_mask_json(osr, mpp: float | None) -> bytes:
    """The slide's tissue mask for the viewer, as JSON bytes: {"url": a 1-bit PNG data URL, "width", "height",
    "downsample": level-0 pixels per mask pixel}; b"" when no mask can be made within the pixel budget.

    The mask is made the way the analysis makes its own (`inference.slides.tissue_mask`), from the smallest
    pyramid level at least MASK_MIN_SIDE px on its long side (at most 2048): a level the file already has,
    so nothing is resized and no large level is decoded (a 50,000 px slide: its 781 px level, 64 level-0 px
    per mask pixel, in well under a second instead of ~5 s from its 3,125 px level). Patches are hundreds
    of level-0 pixels, so the clipped heatmap still ends within a few µm of where the tissue does.
    `mpp` is kept for the cache key's sake (a changed resolution makes a new mask).
    """
    from inference.slides import OverPixelBudget, tissue_mask  # scipy: loaded on first use only

    sides = [max(width, height) for width, height in osr.level_dimensions]
    side = min((s for s in sides if s >= MASK_MIN_SIDE), default=max(sides))
    try:
        mask = tissue_mask(osr, max_side=int(min(max(side, 256), 2048)), mpp=mpp)
    except (OverPixelBudget, ValueError):
        return b""
    if not mask.mask.size:
        return b""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask.mask, 255, 0).astype(np.uint8), mode="L").convert("1").save(buffer, "PNG")
    height, width = mask.mask.shape
    return json.dumps({
        "url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
        "width": int(width),
        "height": int(height),
        "downsample": float(mask.downsample),
    }).encode()
