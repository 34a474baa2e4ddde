"""The v2 demo bundle shipped in inference/demo_bundle_v2/ (trained by the demo-v2 build on corpus v2, see
docs/model.md): it loads with the built-in encoder, records its benchmark-v2 figures, and drafts a part of
two slides with attention over every patch of each. It is the app's default demo bundle (inference/demo.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.features import SlideFeatures
from inference.generation import GenerationConfig

V2 = Path(__file__).resolve().parents[2] / "inference" / "demo_bundle_v2"


@pytest.fixture(scope="module")
def model():
    from inference.pathalign import PathAlign

    return PathAlign.load(V2)


def test_v2_bundle_is_the_v2_model_on_the_builtin_encoder_with_its_benchmark(model):
    assert model.spec["name"] == "pathalign-demo-v2" and model.model.config.version == 2
    assert model.model.scorer is not None  # the gated-attention patch scorer
    assert model.spec["encoder"]["name"] == "he-texture-v1"
    figures = json.loads((V2 / "eval.json").read_text())["benchmark_v2"]
    held = figures["protocols"]["held-out"]
    assert {"test", "new-site"} <= set(held)
    for methods in held.values():
        assert {"mean-pool", "gated-attention MIL", "PathAlign (zero-shot)"} <= set(methods)
    assert sum(p.stat().st_size for p in V2.rglob("*") if p.is_file()) < 20 * 2**20


def test_v2_bundle_drafts_a_two_slide_part(model):
    from inference.encoders import build_encoder

    rng = np.random.default_rng(13)
    enc = build_encoder({"kind": "builtin"}, device="cpu")
    sets = []
    for n in (6, 9):
        images = rng.integers(150, 256, (n, 224, 224, 3), dtype=np.uint8)
        images[:, 40:120, 40:120] = (110, 50, 140)  # hematoxylin-dark blocks on pale tissue
        coords = np.array([[i * 224, 0] for i in range(n)], dtype=np.int64)
        sets.append(SlideFeatures(features=enc.encode(images), coords=coords, patch_size_level0=224,
                                  patch_size=224, target_mpp=1.0, slide_mpp=1.0, dimensions=(n * 224, 224)))
    draft = model.draft_part(sets, GenerationConfig(num_beams=2, max_new_tokens=24))
    assert isinstance(draft.text, str) and draft.text.strip()
    assert [a.shape for a in draft.per_slide_attention] == [(6,), (9,)]
    assert sum(float(a.sum()) for a in draft.per_slide_attention) == pytest.approx(1, abs=1e-4)
    whole = model.embed(torch.cat([s.features for s in sets]))
    assert np.allclose(draft.embedding.slide, whole.slide, atol=1e-5)
