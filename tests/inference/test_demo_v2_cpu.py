"""The demo-v2 build on CPUs: feature extraction dealt over processes gives the very numbers of one process,
and the extra training corpus holds only train/val parts of its seed (no held-out template or profile)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inference import demo_v2
from inference.encoders import build_encoder
from inference.evaluate import benchmark_v2, extract_v2_features
from inference.synthetic import corpus_v2 as c2

CASES, SEED = 4, 0  # a plan with train parts and held-out ones


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four one-slide lung parts of 1 mm (one atlas field per tissue type: small and quick)."""
    out = tmp_path_factory.mktemp("v2") / "corpus"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(c2, "N_VARIANTS", 1)
        c2.generate_corpus_v2(out, 4, seed=2, size=1024, mpp=1.0, organs=["lung"], workers=1, multi_share=0.0)
    return out


def test_builtin_encoder_features_do_not_depend_on_batch_size():
    """The CPU build encodes in batches of 16 (the v1 demo bundle's features were made in batches of 64)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 224, 224, 3), dtype=np.uint8)
    images[:10, 60:160, 60:160] = (120, 60, 150)  # a nucleus-dark block: not only noise
    enc = build_encoder({"kind": "builtin"}, device="cpu")
    ref = enc.encode(images, batch_size=64)
    for bs in (8, 16):
        assert torch.equal(enc.encode(images, batch_size=bs), ref), bs


def test_extraction_dealt_over_processes_equals_one_process(tmp_path, corpus):
    enc = build_encoder({"kind": "builtin"}, device="cpu")
    one = extract_v2_features(corpus, enc, tmp_path / "one", workers=1, batch_size=64, log=lambda m: None)
    two = extract_v2_features(corpus, enc, tmp_path / "two", workers=1, batch_size=16, log=lambda m: None,
                              processes=2)
    recs = c2.load_manifest(corpus)
    assert len(recs) == 4
    assert (one / "index.jsonl").read_text() == (two / "index.jsonl").read_text()
    for rec in recs:
        a = load_file(str(one / f"{rec['slide_id']}.safetensors"))
        b = load_file(str(two / f"{rec['slide_id']}.safetensors"))
        assert a.keys() == b.keys() and len(a["coords"]) > 0
        for k in a:
            assert torch.equal(a[k], b[k]), (rec["slide_id"], k)


def test_extra_training_corpus_renders_only_train_and_val_parts_and_joins_the_baselines(tmp_path, corpus,
                                                                                       monkeypatch):
    monkeypatch.setattr(c2, "N_VARIANTS", 1)
    cfg = demo_v2.preset("tiny", cases=CASES, seed=SEED, size=512, organs=("lung",), multi_share=0.0, workers=1,
                         device="cpu")
    extra = tmp_path / "extra"
    info = demo_v2.build_training_corpus(cfg, extra / "corpus", log=lambda m: None)
    planned = c2.plan_parts(CASES, SEED, ["lung"], multi_share=0.0, size=(512, 512), mpp=1.0)
    want = [p["case_id"] for p in planned if p["split"] in ("train", "val")]
    assert 0 < len(want) < len(planned)  # this plan has held-out parts, and they are not rendered
    recs = c2.load_manifest(extra / "corpus")
    assert sorted({r["case_id"] for r in recs}) == sorted(want) and info["slides"] == len(recs)
    assert {r["split"] for r in recs} <= {"train", "val"}
    assert not any(r["profile"] == c2.HELD_OUT_PROFILE.name for r in recs)
    assert len(list((extra / "corpus" / "slides").glob("*.svs"))) == len(recs)

    # The benchmark's held-out baselines train on the extra slides too.
    enc = build_encoder({"kind": "builtin"}, device="cpu")
    feats = extract_v2_features(corpus, enc, tmp_path / "main-features", workers=1, log=lambda m: None)
    xfeats = extract_v2_features(extra / "corpus", enc, extra / "corpus" / demo_v2.FEATURES, workers=1,
                                 log=lambda m: None)
    logs: list[str] = []
    res = benchmark_v2(corpus, feats, None, cv_folds=0, mil_epochs=1, log=logs.append,
                       extra_train=[(extra / "corpus", xfeats)])
    n_main = res["splits"]["train"] + res["splits"]["val"]
    assert res["extra_train"]["slides"] == len(recs)
    assert f"training baselines on {n_main + len(recs)} slides" in logs[0]
