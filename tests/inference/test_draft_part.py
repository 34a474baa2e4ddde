"""PathAlign.draft_part: a case part's slides read together -> one embedding, attention per slide, text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.draft import Draft, split_attention, top_patches
from inference.features import SlideFeatures
from inference.generation import GenerationConfig

SHORT = GenerationConfig(num_beams=2, max_new_tokens=5)


def feature_set(n: int, width: int, seed: int, step: int = 448) -> SlideFeatures:
    g = torch.Generator().manual_seed(seed)
    side = max(1, int(np.ceil(np.sqrt(n))))
    coords = np.array([[(i % side) * step, (i // side) * step] for i in range(n)], dtype=np.int64).reshape(
        n, 2
    )
    return SlideFeatures(
        features=torch.randn(n, width, generator=g),
        coords=coords,
        patch_size_level0=step,
        patch_size=224,
        target_mpp=1.0,
        slide_mpp=0.5,
        dimensions=(side * step, side * step),
    )


@pytest.fixture
def three_slides(tiny_pathalign):
    width = tiny_pathalign.model.config.vision_width
    return [feature_set(7, width, 1), feature_set(4, width, 2, step=896), feature_set(9, width, 3)]


def test_a_part_is_all_its_slides_read_together(tiny_pathalign, three_slides):
    model = tiny_pathalign
    draft = model.draft_part(three_slides, SHORT)
    assert isinstance(draft, Draft)
    assert [a.shape for a in draft.per_slide_attention] == [(7,), (4,), (9,)]
    assert all(a.dtype == np.float32 and (a >= 0).all() for a in draft.per_slide_attention)
    assert sum(float(a.sum()) for a in draft.per_slide_attention) == pytest.approx(1, abs=1e-5)
    whole = model.embed(torch.cat([fs.features for fs in three_slides]))
    assert np.allclose(draft.embedding.slide, whole.slide, atol=1e-6)
    assert np.allclose(draft.embedding.queries, whole.queries, atol=1e-6)
    assert np.array_equal(np.concatenate(draft.per_slide_attention), draft.embedding.attention)
    assert np.allclose(draft.embedding.attention, whole.attention, atol=1e-7)
    assert draft.text == model.generate(torch.cat([fs.features for fs in three_slides]), SHORT)
    assert isinstance(draft.text, str) and draft.text


def test_backend_none_gives_no_text_but_the_same_embedding(tiny_pathalign, three_slides):
    draft = tiny_pathalign.draft_part(three_slides[:2], SHORT.with_(backend="none"))
    assert draft.text == ""
    assert np.allclose(
        draft.embedding.slide, tiny_pathalign.draft_part(three_slides[:2], SHORT).embedding.slide
    )
    assert [len(a) for a in draft.per_slide_attention] == [7, 4]


def test_a_slide_without_patches_gets_an_empty_attention(tiny_pathalign, three_slides):
    empty = feature_set(0, tiny_pathalign.model.config.vision_width, 4)
    draft = tiny_pathalign.draft_part([three_slides[0], empty], SHORT.with_(backend="none"))
    assert [len(a) for a in draft.per_slide_attention] == [7, 0]
    assert draft.top_patches([three_slides[0], empty], k=3)[1] == []


def test_empty_parts_are_refused(tiny_pathalign):
    width = tiny_pathalign.model.config.vision_width
    with pytest.raises(ValueError, match="at least one slide"):
        tiny_pathalign.draft_part([], SHORT)
    with pytest.raises(ValueError, match="no tissue patches"):
        tiny_pathalign.draft_part([feature_set(0, width, 0), feature_set(0, width, 1)], SHORT)
    bad = feature_set(3, width, 0)
    bad.coords = bad.coords[:2]
    with pytest.raises(ValueError, match="coords"):
        tiny_pathalign.draft_part([bad], SHORT)
    with pytest.raises(ValueError, match="768-d"):
        tiny_pathalign.draft_part([feature_set(3, 768, 0)], SHORT)


def test_top_patches_are_the_evidence_per_slide(tiny_pathalign, three_slides):
    draft = tiny_pathalign.draft_part(three_slides, SHORT.with_(backend="none"))
    evidence = draft.top_patches(three_slides, k=3)
    assert [len(e) for e in evidence] == [3, 3, 3]
    for fs, attention, patches in zip(three_slides, draft.per_slide_attention, evidence, strict=True):
        best = np.argsort(-attention, kind="stable")[:3]
        assert [(p["x"], p["y"]) for p in patches] == [tuple(int(v) for v in fs.coords[i]) for i in best]
        assert all(p["size"] == fs.patch_size_level0 for p in patches)
        assert [p["weight"] for p in patches] == [round(float(attention[i]), 5) for i in best]
        assert patches[0]["weight"] >= patches[-1]["weight"]
    assert len(draft.top_patches(three_slides, k=50)[1]) == 4  # no more than the slide has
    with pytest.raises(ValueError, match="3 slides"):
        draft.top_patches(three_slides[:2])


def test_split_and_top_patches_by_hand():
    parts = split_attention(np.array([0.1, 0.2, 0.3, 0.4]), [1, 0, 3])
    assert [p.tolist() for p in parts] == [[pytest.approx(0.1)], [], pytest.approx([0.2, 0.3, 0.4])]
    with pytest.raises(ValueError, match="patches"):
        split_attention(np.ones(3), [1, 1])
    coords = np.array([[0, 0], [448, 0], [0, 448]])
    assert top_patches(np.array([0.2, 0.5, 0.3]), coords, 448, k=2) == [
        {"x": 448, "y": 0, "size": 448, "weight": 0.5},
        {"x": 0, "y": 448, "size": 448, "weight": 0.3},
    ]
    assert [p["x"] for p in top_patches(np.array([0.5, 0.5, 0.0]), coords, 448, k=2)] == [
        0,
        448,
    ]  # ties: in order
