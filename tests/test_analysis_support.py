"""Shared fixtures of the analysis tests (imported by test_analysis_*.py): a tiny model bundle, slides.

The tiny bundles are tests/model_fixtures.py's (a one-layer Q-Former over a seeded random conv patch
encoder, 32 queries, 256-d embeddings), kept in a directory of their own for these tests; they never need
the demo bundle.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tissue_like
from tests.model_fixtures import build_tiny_bundle, tiny_bundle_root


@pytest.fixture(scope="session")
def tiny_bundle_dir() -> Path:
    return build_tiny_bundle(tiny_bundle_root("analysis") / "tiny-bundle")


@pytest.fixture(scope="session")
def second_bundle_dir() -> Path:
    return build_tiny_bundle(tiny_bundle_root("analysis") / "tiny-bundle-b", name="tiny-b", seed=1)


def _registered(tiny_bundle_dir, settings, tmp_path):
    from webapp.analysis import pipeline, runtime

    settings.VAR_DIR = tmp_path / "var"
    runtime.forget_models()
    yield pipeline.register_bundle(tiny_bundle_dir, activate=True)
    runtime.forget_models()


@pytest.fixture
def active_bundle(db, tiny_bundle_dir, settings, tmp_path):
    """The tiny bundle, registered and active; features cache under this test's own VAR_DIR."""
    yield from _registered(tiny_bundle_dir, settings, tmp_path)


@pytest.fixture
def live_bundle(transactional_db, tiny_bundle_dir, settings, tmp_path):
    """The same, committed: for tests whose real worker process must see the rows."""
    yield from _registered(tiny_bundle_dir, settings, tmp_path)


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
