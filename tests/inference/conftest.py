"""Fixtures for the data side of inference/: one small synthetic corpus per test session."""
from __future__ import annotations

import pytest

from inference.synthetic.corpus import DIAGNOSES, generate_corpus, load_manifest

SMALL_SIZE = 1536  # level-0 px at 0.5 mpp: ~3 x 3 patches of 224 px at 1 mpp
PER_DIAGNOSIS = 3


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """3 slides per diagnosis (48), 1536 px at 0.5 mpp; returns (manifest path, records)."""
    out = tmp_path_factory.mktemp("corpus")
    manifest = generate_corpus(out, n_cases=PER_DIAGNOSIS * len(DIAGNOSES), seed=3, size=SMALL_SIZE, workers=1)
    return manifest, load_manifest(manifest)


TINY_ENCODER = {"kind": "random", "seed": 0, "dim": 24, "input_size": 32}


@pytest.fixture(scope="session")
def tiny_pathalign(tmp_path_factory):
    """A real, untrained PathAlign (one-layer Q-Former) over a seeded random 24-d patch encoder, loaded
    from a saved bundle; the feature width is ``model.model.config.vision_width``."""
    import torch

    from inference.bundle import save_bundle
    from inference.pathalign import PathAlign
    from inference.qformer import QFormer

    torch.manual_seed(0)
    qformer, tok = QFormer.from_text_model(num_hidden_layers=1, vision_width=24)
    path = save_bundle(tmp_path_factory.mktemp("tiny") / "bundle", qformer, tok, TINY_ENCODER)
    return PathAlign.load(path)


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread is faster than two on a shared 2-core machine (use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
