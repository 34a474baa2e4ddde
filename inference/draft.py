"""A case part's AI draft: the text, the attention over each of its slides, and the part's embedding.

A part (a specimen) may have several slides; `PathAlign.draft_part(feature_sets, config)` reads all their
patches together, as one bag, and returns a `Draft`:

    draft = model.draft_part([features_a1, features_a2], GenerationConfig(num_beams=3))
    draft.text                    str ("" with backend "none")
    draft.embedding               SlideEmbedding of the whole part (attention [N_1 + N_2], sums to 1)
    draft.per_slide_attention     [attention [N_1], attention [N_2]]: the part's attention cut per slide,
                                  each aligned with its feature set's coords; together they sum to 1
    draft.top_patches(feature_sets, k=5)   evidence: per slide, the k patches with the most attention
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from inference.features import SlideFeatures

if TYPE_CHECKING:  # pathalign imports this module
    from inference.pathalign import SlideEmbedding


class PatchWeight(TypedDict):
    x: int  # level-0 x of the patch's top-left corner
    y: int  # level-0 y
    size: int  # patch side in level-0 pixels (SlideFeatures.patch_size_level0)
    weight: float  # the patch's share of the attention (rounded to 5 decimals)


@dataclass(frozen=True)
class Draft:
    text: str
    per_slide_attention: list[np.ndarray]  # one float32 [N_i] per feature set, in the order given
    embedding: SlideEmbedding

    def top_patches(self, feature_sets: Sequence[SlideFeatures], k: int = 5) -> list[list[PatchWeight]]:
        """Per slide, its k patches with the most attention, best first (the draft's evidence)."""
        if len(feature_sets) != len(self.per_slide_attention):
            raise ValueError(
                f"this draft covers {len(self.per_slide_attention)} slides; got {len(feature_sets)} feature sets"
            )
        return [
            top_patches(attention, fs.coords, fs.patch_size_level0, k)
            for fs, attention in zip(feature_sets, self.per_slide_attention, strict=True)
        ]


def split_attention(attention: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Cut a part's attention [sum(sizes)] into one array per slide ([sizes[i]] each)."""
    attention = np.asarray(attention, dtype=np.float32)
    if attention.shape != (sum(sizes),):
        raise ValueError(f"attention has shape {attention.shape}; the slides have {sum(sizes)} patches")
    offsets = np.cumsum([0, *sizes])
    return [attention[offsets[i] : offsets[i + 1]].copy() for i in range(len(sizes))]


def top_patches(
    attention: np.ndarray, coords: np.ndarray, patch_size_level0: int, k: int = 5
) -> list[PatchWeight]:
    """The k patches with the most attention ([N] aligned with coords [N, 2], level 0), best first."""
    attention = np.asarray(attention, dtype=np.float64)
    coords = np.asarray(coords).reshape(-1, 2)
    if len(coords) != len(attention):
        raise ValueError(f"{len(attention)} attention weights for {len(coords)} patches")
    order = np.argsort(-attention, kind="stable")[: max(k, 0)]  # ties: the earlier patch first
    return [
        PatchWeight(
            x=int(coords[i, 0]),
            y=int(coords[i, 1]),
            size=int(patch_size_level0),
            weight=round(float(attention[i]), 5),
        )
        for i in order
    ]
