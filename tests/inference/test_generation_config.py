"""GenerationConfig: one set of options, validated once, passed unchanged down to the decoders."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from inference.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationConfig,
    add_generation_arguments,
    generation_config_from_args,
    resolve,
)


def test_defaults_are_one_set_for_the_whole_library():
    c = GenerationConfig()
    assert c.backend == "qformer" and c.max_new_tokens == DEFAULT_MAX_NEW_TOKENS == 160
    assert (c.num_beams, c.do_sample, c.min_new_tokens, c.seed) == (3, False, 1, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_beams = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backend", "gpt"),
        ("num_beams", 0),
        ("num_beams", 2.0),
        ("do_sample", 1),
        ("max_new_tokens", 0),
        ("max_new_tokens", True),
        ("min_new_tokens", -1),
        ("temperature", 0.0),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("repetition_penalty", 0),
        ("length_penalty", float("inf")),
        ("seed", -3),
        ("seed", "1"),
    ],
)
def test_bad_values_are_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**{field: value})


def test_min_new_tokens_may_not_exceed_max_new_tokens():
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=8).with_(max_new_tokens=2, min_new_tokens=3)


def test_changed_copies_and_overrides():
    base = GenerationConfig(num_beams=2)
    changed = base.with_(max_new_tokens=12, do_sample=True)
    assert changed == dataclasses.replace(base, max_new_tokens=12, do_sample=True)
    assert base.max_new_tokens == 160 and changed.num_beams == 2
    assert base.with_() is base and resolve(base, {}) is base  # nothing to change: the same object
    assert resolve(None, {"num_beams": 1}) == GenerationConfig(num_beams=1)
    with pytest.raises(TypeError, match="beams"):
        base.with_(beams=2)
    with pytest.raises(ValueError, match="num_beams"):
        base.with_(num_beams=0)
    assert GenerationConfig.from_dict(changed.to_dict()) == changed


def test_cli_options_build_a_config():
    ap = argparse.ArgumentParser()
    add_generation_arguments(ap)
    assert generation_config_from_args(ap.parse_args([])) == GenerationConfig()
    args = ap.parse_args(["--num-beams", "1", "--do-sample", "--top-p", "0.9", "--generation-seed", "7"])
    assert generation_config_from_args(args) == GenerationConfig(
        num_beams=1, do_sample=True, top_p=0.9, seed=7
    )


def test_a_config_and_the_same_options_as_keywords_give_the_same_drafts(tiny_pathalign):
    model = tiny_pathalign
    x = torch.randn(6, model.model.config.vision_width, generator=torch.Generator().manual_seed(3))
    beams = GenerationConfig(num_beams=2, max_new_tokens=5, length_penalty=0.5)
    assert model.generate(x, beams) == model.generate(x, num_beams=2, max_new_tokens=5, length_penalty=0.5)
    assert model.generate(x, beams) == model.generate(x, config=beams)
    sampled = GenerationConfig(do_sample=True, num_beams=1, top_p=0.9, top_k=20, max_new_tokens=6, seed=5)
    options = dataclasses.asdict(sampled)
    assert model.generate(x, sampled) == model.generate(x, **options)
    # Overrides change a copy of the config given.
    assert model.generate(x, sampled, seed=6) == model.generate(x, sampled.with_(seed=6))
    # Several slides: the same texts as the config's one-by-one, and one seeded stream over them all.
    xs = [x, x[:3]]
    assert model.generate_many(xs, beams) == [model.generate(x, beams), model.generate(x[:3], beams)]
    assert model.generate_many(xs, sampled) == model.generate_many(xs, **options)
    # The Q-Former decoder below takes the same config.
    ids = model.model.generate(x[None], None, beams)
    assert ids == model.model.generate(x[None], num_beams=2, max_new_tokens=5, length_penalty=0.5)
    # No text at all.
    assert model.generate(x, backend="none") == "" and model.generate_many(
        xs, beams.with_(backend="none")
    ) == ["", ""]


def test_the_bridge_takes_the_same_config(tmp_path):
    from test_bridge import make_tiny_lm  # the tiny GPT-2 of the stage-2 tests

    from inference.bridge import SoftPromptBridge

    torch.manual_seed(0)
    bridge = SoftPromptBridge.from_lm_dir(make_tiny_lm(tmp_path / "lm"), qformer_hidden=24)
    q = torch.randn(2, 4, 24)
    greedy = GenerationConfig(num_beams=1, max_new_tokens=6)
    assert bridge.generate(q, greedy) == bridge.generate(q, num_beams=1, max_new_tokens=6)
    sampled = GenerationConfig(do_sample=True, num_beams=1, temperature=0.8, max_new_tokens=6, seed=3)
    state = torch.random.get_rng_state()
    first = bridge.generate(q, sampled)
    assert torch.equal(torch.random.get_rng_state(), state)  # a seeded call leaves the global RNG alone
    assert bridge.generate(q, **dataclasses.asdict(sampled)) == first
