"""A real but tiny PathAlign model for report tests: import the fixtures into a test module.

    from tests.model_fixtures import tiny_bundle_dir, tiny_model, prime_features  # noqa: F401

The bundle: a one-layer Q-Former (MiniLM's first layer) over a seeded random conv patch encoder (32-d
features), 32 queries, 256-d embeddings; untrained, so its text is gibberish, but every code path (generate,
embed, classify, embed_text) is the real one. Built once per test tag under the temp directory (about 2 s);
the analysis tests (tests/test_analysis_support.py) use the same builder.
Patch features are written straight into the runtime's feature cache (`prime_features`), so report tests
do not depend on slide tiling and patch encoding, which the analysis tests cover.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

TINY_ENCODER = {"kind": "random", "seed": 0, "dim": 32, "input_size": 64}
TINY_VERSION = "tiny-1"


def tiny_bundle_root(kind: str) -> Path:
    """Where this test run keeps its tiny bundles; keyed by the model-library code, so a change there
    (a new config field, a new weight) rebuilds them instead of loading a stale one."""
    import hashlib

    import inference.bundle
    import inference.qformer

    code = b"".join(Path(m.__file__).read_bytes() for m in (inference.bundle, inference.qformer))
    digest = hashlib.sha256(code).hexdigest()[:12]
    tag = os.environ.get("PATHALIGN_TEST_TAG", "main")
    return Path(tempfile.gettempdir()) / f"pathalign-test-{tag}-{kind}" / digest


def build_tiny_bundle(out: Path, name: str = "tiny", seed: int = 0, encoder: dict | None = None,
                      tiling: dict | None = None, version: str = TINY_VERSION) -> Path:
    """An untrained one-layer bundle over the seeded random encoder (or `encoder`, a spec with "dim"), with
    made-up evaluation figures; `tiling` as bundle.json records it (default: the library's)."""
    import torch

    from inference.bundle import save_bundle, write_eval
    from inference.qformer import QFormer

    if (out / "bundle.json").exists():
        return out
    torch.manual_seed(seed)
    encoder = encoder or TINY_ENCODER
    model, tokenizer = QFormer.from_text_model(num_hidden_layers=1, vision_width=encoder["dim"], max_text_len=48)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    save_bundle(staging, model, tokenizer, encoder, name=name, version=version, tiling=tiling,
                training={"slides": 0, "source": "untrained test bundle"})
    write_eval(staging, {"retrieval": {"i2t_R@1": 0.5, "t2i_R@1": 0.25}, "zero_shot_accuracy": 0.5})
    staging.rename(out)
    return out


@pytest.fixture(scope="session")
def tiny_bundle_dir() -> Path:
    return build_tiny_bundle(tiny_bundle_root("reports") / "tiny-bundle", name="tiny-report")


@pytest.fixture
def tiny_model(db, tiny_bundle_dir, settings, tmp_path):
    """The tiny bundle registered as the active ModelBundle; the feature cache under this test's VAR_DIR."""
    from inference.bundle import read_bundle_config
    from webapp.analysis import runtime
    from webapp.analysis.models import ModelBundle

    settings.VAR_DIR = tmp_path / "var"
    settings.DRAFT_NUM_BEAMS = 1  # an untrained model never stops by itself: keep its drafts short
    settings.DRAFT_MAX_NEW_TOKENS = 24
    settings.DRAFT_CANDIDATES = 2  # the generate-then-rank path, at the least cost
    runtime.forget_models()
    config = read_bundle_config(tiny_bundle_dir)
    bundle = ModelBundle.objects.create(
        name=config["name"], version=config["version"], path=str(tiny_bundle_dir), variant=config["variant"],
        encoder=config["encoder"], dims=config["dims"], is_active=True,
    )
    yield bundle
    runtime.forget_models()


def prime_features(slide, bundle, n: int = 48, seed: int = 0, dim: int = TINY_ENCODER["dim"]) -> Path:
    """Write `n` patch features for `slide` into the runtime's cache, as extraction would have."""
    import torch

    from inference.features import SlideFeatures
    from webapp.analysis.runtime import features_key, features_path

    rng = np.random.default_rng(seed)
    features = torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32))
    side = int(np.ceil(np.sqrt(n)))
    coords = np.array([[(i % side) * 256, (i // side) * 256] for i in range(n)], dtype=np.int64)
    made = SlideFeatures(features=features, coords=coords, patch_size_level0=256, patch_size=TINY_ENCODER["input_size"],
                         target_mpp=1.0, slide_mpp=0.5, dimensions=(side * 256, side * 256),
                         encoder_spec=dict(bundle.encoder))
    return made.save(features_path(slide, bundle), extra={"slide": str(slide.pk), "features_key": features_key(bundle)},
                     dtype=torch.float16)


def bundle_row(key: str):
    """A ModelBundle row named "name@version" with no files behind it (for rows that only name a bundle)."""
    from webapp.analysis.models import ModelBundle

    name, version = key.split("@", 1)
    return ModelBundle.objects.get_or_create(name=name, version=version,
                                             defaults={"path": f"/nonexistent/bundles/{key}"})[0]
