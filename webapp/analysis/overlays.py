"""The "attention" heatmap layer for the slide viewer: per-patch Q-Former attention of a slide."""
from __future__ import annotations

from . import runtime
from .models import SlideEmbedding


def attention_for_slide(slide) -> dict | None:
    """The viewer overlay for `slide`: from the bundle search uses, else the newest embedding it has.

    Values are attention x number of patches, so 1.0 means "average attention" whatever the slide's size.
    """
    rows = SlideEmbedding.objects.filter(slide=slide).select_related("bundle")
    preferred = runtime.search_bundle()
    row = (rows.filter(bundle=preferred).first() if preferred else None) or rows.order_by("-created_at").first()
    if row is None:
        return None
    arrays = row.heatmap_arrays()
    if arrays is None or not row.patch_size:
        return None
    coords, attention = arrays
    values = attention.astype(float) * max(len(attention), 1)
    return {
        "patch_size": int(row.patch_size),
        "coords": coords.astype(int).tolist(),
        "values": [round(v, 5) for v in values.tolist()],
        "label": f"Attention ({row.bundle})",
    }
