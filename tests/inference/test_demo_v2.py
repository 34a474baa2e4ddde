"""The demo-v2 build: its corpus stage resumes part by part and writes what generate_corpus_v2 writes; its
state file keeps each stage's time over sittings and refuses to resume with other parameters."""
from __future__ import annotations

import json

import pytest

from inference import demo_v2
from inference.synthetic import corpus_v2 as c2


@pytest.fixture(autouse=True)
def _one_variant(monkeypatch):
    monkeypatch.setattr(c2, "N_VARIANTS", 1)  # one atlas field per tissue type: small and quick


def _cfg(**kw):
    base = dict(cases=3, seed=5, size=1024, mpp=1.0, organs=("lung",), multi_share=0.0, workers=1, device="cpu")
    return demo_v2.preset("tiny", **(base | kw))


def test_corpus_stage_resumes_part_by_part_and_matches_generate_corpus_v2(tmp_path):
    cfg = _cfg()
    corpus = tmp_path / "build" / "corpus"
    summary = demo_v2.build_corpus(cfg, corpus, log=lambda m: None)
    assert summary["slides"] == 3
    reference = tmp_path / "reference"
    c2.generate_corpus_v2(reference, 3, seed=5, size=1024, mpp=1.0, organs=["lung"], workers=1, multi_share=0.0)
    assert (corpus / "manifest.jsonl").read_text() == (reference / "manifest.jsonl").read_text()
    assert json.loads((corpus / "corpus.json").read_text()) == json.loads((reference / "corpus.json").read_text())

    # An interrupted part (its records file not written) is rendered again; the finished ones are kept.
    recs = c2.load_manifest(corpus)
    kept = {r["slide_id"]: (corpus / r["slide"]).stat().st_mtime_ns for r in recs}
    lost = recs[1]["case_id"]
    (corpus / "parts" / f"{lost}.json").unlink()
    demo_v2.build_corpus(cfg, corpus, log=lambda m: None)
    again = {r["slide_id"]: (corpus / r["slide"]).stat().st_mtime_ns for r in c2.load_manifest(corpus)}
    assert [s for s in kept if again[s] != kept[s]] == [r["slide_id"] for r in recs if r["case_id"] == lost]
    assert (corpus / "manifest.jsonl").read_text() == (reference / "manifest.jsonl").read_text()


def test_build_state_sums_stage_time_and_refuses_other_parameters(tmp_path):
    cfg = _cfg()
    state = demo_v2.BuildState(tmp_path, cfg)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        state.run("corpus", interrupted, log=lambda m: None)
    saved = json.loads((tmp_path / "build.json").read_text())
    assert saved["stages"]["corpus"]["status"] == "running" and saved["stages"]["corpus"]["seconds"] >= 0

    state = demo_v2.BuildState(tmp_path, demo_v2.preset("tiny", **(vars(cfg) | {"workers": 7})))  # same build
    state.run("corpus", lambda: {"slides": 3}, log=lambda m: None)
    calls = []
    state.run("corpus", lambda: calls.append(1), log=lambda m: None)  # done: not run again
    saved = json.loads((tmp_path / "build.json").read_text())
    assert calls == [] and saved["sittings"] == 2
    assert saved["stages"]["corpus"] | {"seconds": 0} == {"status": "done", "seconds": 0, "slides": 3}
    with pytest.raises(SystemExit, match="cases"):
        demo_v2.BuildState(tmp_path, _cfg(cases=4))


def test_presets_size_the_gpu_build_and_flags_override():
    gpu = demo_v2.preset("gpu")
    assert gpu.size * gpu.mpp >= 10_000 and gpu.max_patches == 0 and gpu.scorer_hidden > 0  # 10 mm, full bags
    assert demo_v2.preset("cpu-small", epochs=2).epochs == 2
    tcfg = demo_v2.train_config(demo_v2.preset("tiny"))
    assert tcfg.scorer_hidden == 32 and tcfg.max_patches == 128 and tcfg.freeze_word_embeddings
    with pytest.raises(ValueError, match="unknown preset"):
        demo_v2.preset("tpu")


def test_micro_build_end_to_end_then_resume_is_a_no_op(tmp_path):
    """Corpus -> features -> training -> benchmark on 4 parts of 1.5 mm (CI-sized; no new-site or test
    split is guaranteed at this size: empty sets are skipped, not a crash); a second run redoes nothing."""
    from inference.pathalign import PathAlign

    cfg = _cfg(cases=4, size=1536, seed=3, epochs=1, mil_epochs=2)
    data = demo_v2.build(tmp_path, cfg, log=lambda m: None)
    stages = data["stages"]
    assert {k: v["status"] for k, v in stages.items()} == dict.fromkeys(demo_v2.STAGES, "done")
    assert stages["features"]["patches"] > 0 and stages["train"]["epochs"] == 1
    assert all(stages[s]["seconds"] > 0 for s in demo_v2.STAGES) and data["total_seconds"] > 0
    model = PathAlign.load(tmp_path / "bundle")
    assert model.spec["name"] == "pathalign-demo-v2" and model.model.config.version == 2
    bench = json.loads((tmp_path / "benchmark-v2.json").read_text())
    assert bench["n_slides"] == stages["corpus"]["slides"] and "benchmark_v2" in model.eval_figures
    for name, methods in bench["protocols"]["held-out"].items():
        assert "PathAlign (zero-shot)" in methods, name
    again = demo_v2.build(tmp_path, cfg, log=lambda m: None)
    assert again["sittings"] == 2 and again["stages"] == stages
