"""Shared fixtures of the analysis tests (imported by test_analysis_*.py): a tiny model bundle, slides.

The tiny bundle: a one-layer Q-Former (MiniLM's first layer) over a seeded random conv patch encoder (32-d
features on 64 px patches), 32 queries and 256-d embeddings like the real thing. It is built once and kept
in the temporary directory (keyed by the test tag), so reruns start in seconds; it never needs the demo
bundle.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tissue_like

TINY_ENCODER = {"kind": "random", "seed": 0, "dim": 32, "input_size": 64}
TINY_VERSION = "tiny-1"


def _root() -> Path:
    # Keyed by the bundle-format code too: a change in the model library rebuilds the cached bundle.
    import hashlib

    import inference.bundle
    import inference.qformer

    code = b"".join(Path(m.__file__).read_bytes() for m in (inference.bundle, inference.qformer))
    digest = hashlib.sha256(code).hexdigest()[:12]
    tag = os.environ.get("PATHALIGN_TEST_TAG", "main")
    return Path(tempfile.gettempdir()) / f"pathalign-test-{tag}-analysis" / digest


def build_tiny_bundle(out: Path, name: str = "tiny", seed: int = 0) -> Path:
    import torch

    from inference.bundle import save_bundle, write_eval
    from inference.encoders import build_encoder
    from inference.qformer import QFormer

    if (out / "bundle.json").exists():
        return out
    torch.manual_seed(seed)
    encoder = build_encoder(TINY_ENCODER)
    model, tokenizer = QFormer.from_text_model(num_hidden_layers=1, vision_width=encoder.dim, max_text_len=32)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    save_bundle(staging, model, tokenizer, encoder.spec, name=name, version=TINY_VERSION,
                training={"slides": 0, "source": "untrained test bundle"})
    write_eval(staging, {"retrieval": {"i2t_R@1": 0.5, "t2i_R@1": 0.25}, "zero_shot_accuracy": 0.5})
    staging.rename(out)
    return out


@pytest.fixture(scope="session")
def tiny_bundle_dir() -> Path:
    return build_tiny_bundle(_root() / "tiny-bundle")


@pytest.fixture(scope="session")
def second_bundle_dir() -> Path:
    return build_tiny_bundle(_root() / "tiny-bundle-b", name="tiny-b", seed=1)


@pytest.fixture
def active_bundle(db, tiny_bundle_dir, settings, tmp_path):
    """The tiny bundle, registered and active; features cache under this test's own VAR_DIR."""
    from webapp.analysis import pipeline, runtime

    settings.VAR_DIR = tmp_path / "var"
    runtime.forget_models()
    bundle = pipeline.register_bundle(tiny_bundle_dir, activate=True)
    yield bundle
    runtime.forget_models()


@pytest.fixture(scope="session")
def small_slides(slide_dir) -> list[Path]:
    """Three small, different slides (1792 x 1344 at 0.5 um/px: a few 448 px patches each)."""
    from inference.synthetic.wsi import write_pyramidal_tiff

    paths = []
    for seed in range(3):
        image = tissue_like(1344, 1792, seed=seed)
        if seed == 1:
            image[..., 1] = (image[..., 1] * 0.6).astype(np.uint8)  # a different stain cast
        paths.append(write_pyramidal_tiff(slide_dir / f"small-{seed}.svs", image, mpp=0.5))
    return paths


def ingest(path: Path, part, user=None, stain: str = "H&E"):
    """Store a slide without triggering analysis jobs (the caller decides)."""
    from webapp.slides.ingest import ingest_slide

    return ingest_slide(path, part=part, original_filename=path.name, stain=stain, user=user, move=False)


def test_tiny_bundle_loads(tiny_bundle_dir):
    from inference.pathalign import PathAlign

    model = PathAlign.load(tiny_bundle_dir)
    assert model.spec["dims"]["embed"] == 256 and model.spec["dims"]["queries"] == 32
