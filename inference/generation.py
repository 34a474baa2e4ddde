"""Text generation options: one frozen dataclass, passed unchanged from the caller to the decoder.

    config = GenerationConfig(num_beams=3, max_new_tokens=160)
    model.generate(features, config)                          # Q-Former decoder (backend "qformer")
    model.generate(features, config.with_(backend="llm"))     # stage-2 soft-prompt bridge
    model.draft_part(feature_sets, config)                    # a case part: text, attention, embedding

Every generation entry point (`PathAlign.generate` / `generate_many` / `draft_part`, `QFormer.generate`,
`SoftPromptBridge.generate`, `MultimodalReporter.describe` / `describe_slide`) takes
``config: GenerationConfig | None = None``. Their ``**overrides`` exist so that short calls such as
``model.generate(x, num_beams=2, max_new_tokens=5)`` keep working: ``resolve(config, overrides)`` makes one
changed copy at the top, and the layers below receive that config object, never loose keywords.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch

Backend = Literal["qformer", "llm", "none"]
BACKENDS: tuple[str, ...] = ("qformer", "llm", "none")
DEFAULT_MAX_NEW_TOKENS = 160  # the whole library's one default: room for a full report section


@dataclass(frozen=True)
class GenerationConfig:
    # "qformer": the Q-Former's ITG decoder; "llm": the stage-2 soft-prompt bridge to a causal LM;
    # "none": no text (a draft is then its embedding and attention only).
    backend: Backend = "qformer"
    num_beams: int = 3  # beam search when > 1 and not sampling; 1 = greedy
    do_sample: bool = False
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int = 1  # the end token is suppressed before this many tokens
    temperature: float = 1.0  # sampling only
    top_p: float = 1.0  # sampling only; 1 = no nucleus filter
    top_k: int = 0  # sampling only; 0 = no top-k filter
    repetition_penalty: float = 1.0  # 1 = none (CTRL-style: seen tokens' logits divided/multiplied)
    length_penalty: float = 1.0  # beam search: scores are divided by length ** length_penalty
    seed: int | None = None  # sampling: a seeded generator, so that one config gives one text
    # Q-Former backend: > 1 writes the decoder's own draft (beam or greedy, as above) and candidates - 1 sampled
    # ones (nucleus 0.9; seeded from ``seed``, or 0), and keeps the one the model's own slide-text alignment (ITC,
    # query-max) ranks first: BLIP's generate-then-rank. 1 = the decoder's draft as it is.
    candidates: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        _check_int("num_beams", self.num_beams, minimum=1)
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be a bool; got {self.do_sample!r}")
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_int("min_new_tokens", self.min_new_tokens, minimum=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})"
            )
        _check_float("temperature", self.temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        _check_float("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        _check_int("top_k", self.top_k, minimum=0)
        _check_float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0; got {self.repetition_penalty}")
        _check_float("length_penalty", self.length_penalty)
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        _check_int("candidates", self.candidates, minimum=1)

    def with_(self, **changes: Any) -> GenerationConfig:
        """A changed copy (validated again); an unknown option is a TypeError naming it."""
        unknown = sorted(set(changes) - FIELD_NAMES)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(unknown)}")
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationConfig:
        """From ``to_dict()`` output (e.g. an eval.json); unknown keys are a TypeError."""
        return cls().with_(**dict(data))


FIELD_NAMES: frozenset[str] = frozenset(f.name for f in fields(GenerationConfig))


def resolve(config: GenerationConfig | None, overrides: Mapping[str, Any]) -> GenerationConfig:
    """``config`` (default: ``GenerationConfig()``) with ``overrides`` applied; the same object if none."""
    return (config or GenerationConfig()).with_(**overrides)


def torch_generator(config: GenerationConfig, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A generator seeded from ``config.seed`` (None when unseeded)."""
    if config.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(config.seed)


@contextlib.contextmanager
def seeded(config: GenerationConfig, device: str | torch.device = "cpu") -> Iterator[None]:
    """Seed torch's global RNG for the block and restore it afterwards (transformers' ``generate`` takes no
    generator). Does nothing when the config has no seed."""
    if config.seed is None:
        yield
        return
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        yield


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options for every field (``--num-beams``, ``--do-sample``, ``--generation-seed``, ...)."""
    d = GenerationConfig()
    g = parser.add_argument_group("generation")
    g.add_argument("--backend", choices=BACKENDS, default=d.backend)
    g.add_argument("--num-beams", type=int, default=d.num_beams)
    g.add_argument("--do-sample", action="store_true")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--min-new-tokens", type=int, default=d.min_new_tokens)
    g.add_argument("--temperature", type=float, default=d.temperature)
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--top-k", type=int, default=d.top_k)
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    g.add_argument("--length-penalty", type=float, default=d.length_penalty)
    g.add_argument("--generation-seed", type=int, default=d.seed, help="seed for sampling")
    g.add_argument("--candidates", type=int, default=d.candidates,
                   help="Q-Former drafts: write this many and keep the one the model's ITC ranks first")


def generation_config_from_args(args: argparse.Namespace) -> GenerationConfig:
    """The GenerationConfig named by `add_generation_arguments`' options."""
    return GenerationConfig(
        backend=args.backend,
        num_beams=args.num_beams,
        do_sample=args.do_sample,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        length_penalty=args.length_penalty,
        seed=args.generation_seed,
        candidates=args.candidates,
    )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
