"""The app's demo bundle, and the builder of the v1 demo bundle.

The app's default demo model is the v2 bundle shipped in ``inference/demo_bundle_v2/`` (``SHIPPED``): a
slide reader with a gated-attention patch scorer, trained on whole corpus-v2 slides of 10 mm by
``python -m inference.demo_v2 build`` (hours on a CPU; see docs/model.md). Its name and version are read
from that directory's ``bundle.json`` (``DEMO_NAME`` / ``DEMO_VERSION``), so a retrained bundle shipped in
its place needs no change here. The web app calls ``ensure_demo_bundle(var/models/demo-<version>)`` at
start: it keeps a current bundle and copies the shipped one when that matches the current built-in encoder
(checked with an encoder fingerprint). A shipped bundle that no longer matches (the built-in encoder has
changed since it was trained) is not rebuilt silently: ``DemoBundleStale`` says which command rebuilds it
and how to start without a demo model.

The v1 demo bundle (``SHIPPED_V1``, ``inference/demo_bundle/``; ``pathalign-demo`` 1.1.0, trained on small
9-patch fields) stays on disk for the tests of the v1 format and of the range warning, and can be rebuilt
by who asks for it:

    python -m inference.demo --out var/models/demo

One reproducible command (fixed seeds): synthetic corpus -> patch features -> PathAlign-G training ->
evaluation -> bundle; tens of minutes on 2 CPU cores. ``--ship`` refreshes ``inference/demo_bundle/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.progress import Progress

if TYPE_CHECKING:
    from inference.generation import GenerationConfig

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "demo_bundle_v2"  # the app's default demo bundle, committed (see docs/model.md)
SHIPPED_V1 = HERE / "demo_bundle"  # the v1 demo bundle, committed: built by this module's `main`
V1_NAME = "pathalign-demo"
V1_VERSION = "1.1.0"  # 1.1: a decoder that conditions on the slide (shortlist, longer training, views)
# The v1 builder's targets (its eval.json, under "pathalign"). The v2 bundle's figures are benchmark v2's
# (eval.json "benchmark_v2"); the targets for them are in docs/model.md (not asserted in tests).
TARGETS = {"zero_shot_accuracy": 0.85, "i2t_Acc@1": 0.85, "i2t_MVAcc@5": 0.85, "diagnosis_stated_rate": 0.80}
V2_BUILD = "python -m inference.demo_v2 build --out var/demo-v2 --preset cpu"  # rebuilds SHIPPED (hours)


def bundle_identity(directory: str | os.PathLike) -> tuple[str, str]:
    """(name, version) of the bundle in ``directory``, from its bundle.json alone (no torch, no weights)."""
    config = json.loads((Path(directory) / "bundle.json").read_text())
    return str(config["name"]), str(config["version"])


# Read from the shipped bundle, never written here: a retrained v2 bundle shipped in its place (same name, a
# new version) becomes the demo model, in a new directory and ModelBundle row, with no change to the code.
DEMO_NAME, DEMO_VERSION = bundle_identity(SHIPPED)


def is_demo_bundle_name(name: str) -> bool:
    """A name the demo has used for its bundles: the v1 one, the current one, or a later ``pathalign-demo-*``
    (the web app lets an older demo bundle give way to the current one, never a bundle a lab admin chose)."""
    return name in (V1_NAME, DEMO_NAME) or name.startswith(V1_NAME + "-")


class DemoBundleStale(RuntimeError):
    """The shipped demo bundle cannot be used as it is, and rebuilding it takes hours: the message says how."""


@dataclass
class DemoConfig:
    cases: int = 640  # 40 per diagnosis; the manifest's split gives ~70/15/15 train/val/test
    seed: int = 0
    slide_size: int = 1536  # level-0 side (px) at 0.5 um/px
    # Stage-1 training. Two text layers (the first two of MiniLM) keep a first start short on two CPU cores.
    num_hidden_layers: int = 2
    # ~700 optimizer steps: the decoder learns the report language in the first ~150 and only then starts
    # to condition on the slide (0.06 -> 0.44 -> 0.73 of validation drafts naming the diagnosis at 100/200/300).
    # 320 cases for 50 epochs reached 0.94 of test drafts but over-fitted the contrastive side (zero-shot
    # 0.98 -> 0.73): twice the slides for half the epochs, and short views of the reports for ITC.
    epochs: int = 25
    batch_size: int = 16
    lr: float = 1e-4
    new_lr: float = 5e-4
    max_patches: int = 64
    max_text_len: int = 64
    group_by: str = "text"
    text_view_prob: float = 0.5  # ITC/ITM read the diagnosis line alone half of the time (train.contrastive_texts)
    freeze_word_embeddings: bool = True  # faster steps; the table is then stored by reference (small bundle)
    # The evaluation's drafts (`generation()`): the settings the shipped bundle's figures were measured with.
    num_beams: int = 3
    max_new_tokens: int = 64

    def generation(self) -> GenerationConfig:
        from inference.generation import GenerationConfig

        return GenerationConfig(num_beams=self.num_beams, max_new_tokens=self.max_new_tokens)


def _bar(desc: str) -> Progress:
    from tqdm.auto import tqdm

    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="slide")
        state["bar"].n = done
        state["bar"].refresh()
        if done >= total:
            state["bar"].close()

    return update


def build_demo_bundle(
    out: str | os.PathLike,
    work: str | os.PathLike | None = None,
    config: DemoConfig | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> Path:
    """The v1 demo bundle (``V1_NAME`` ``V1_VERSION``): generate the corpus, extract features, train,
    evaluate and write the bundle to ``out``."""
    import torch

    from inference import features as feats
    from inference.bundle import save_bundle, write_eval
    from inference.encoders import build_encoder
    from inference.evaluate import evaluate, format_table
    from inference.pathalign import PathAlign
    from inference.synthetic.corpus import generate_corpus
    from inference.train import TrainConfig, load_examples, train_stage1

    cfg = config or DemoConfig()
    out = Path(out)
    work = Path(work) if work else out.parent / f".{out.name}-work"
    t0 = time.perf_counter()
    corpus = work / f"corpus-{cfg.cases}-s{cfg.seed}-{cfg.slide_size}"  # a new size or seed: a new corpus
    manifest = corpus / "manifest.jsonl"
    if not manifest.exists():
        log(f"[1/4] generating {cfg.cases} synthetic slides in {corpus}")
        generate_corpus(corpus, cfg.cases, seed=cfg.seed, size=cfg.slide_size, progress=_bar("slides"))
    encoder = build_encoder({"kind": "builtin"})
    features = corpus / "features"  # belongs to its corpus
    log(f"[2/4] extracting patch features ({encoder.spec.get('name')}, {encoder.dim}-d)")
    feats.extract_corpus_features(manifest, encoder, features, progress=_bar("features"))
    examples, encoder_spec = load_examples(corpus, features, seed=cfg.seed)
    train_cfg = TrainConfig(
        variant="G",
        num_hidden_layers=cfg.num_hidden_layers,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        new_lr=cfg.new_lr,
        max_patches=cfg.max_patches,
        max_text_len=cfg.max_text_len,
        group_by=cfg.group_by,
        text_view_prob=cfg.text_view_prob,
        seed=cfg.seed,
        warmup_steps=20,
        freeze_word_embeddings=cfg.freeze_word_embeddings,
    )
    log(f"[3/4] training PathAlign-G on {sum(e.split == 'train' for e in examples)} slides")
    # Checkpoints are keyed by the training config: an interrupted build resumes, a changed config restarts.
    key = hashlib.sha256(json.dumps(asdict(train_cfg), sort_keys=True).encode()).hexdigest()[:12]
    model, tokenizer, history = train_stage1(examples, train_cfg, work / "checkpoints" / key, resume=True)
    training = {
        **history["data"],
        "best_val_loss": history["best_val_loss"],
        "config": history["config"],
        "epochs": history["epochs"],
        "demo": asdict(cfg),
        "corpus": "inference.synthetic (seeded)",
    }
    from inference.qformer import default_text_model_dir

    save_bundle(
        out,
        model,
        tokenizer,
        encoder_spec,
        name=V1_NAME,
        version=V1_VERSION,
        training=training,
        storage_dtype=torch.bfloat16,  # halves the file; evaluation below runs on what was stored
        reference_text_dir=default_text_model_dir() if cfg.freeze_word_embeddings else None,
        extra={"encoder_fingerprint": encoder_fingerprint(encoder)},
    )
    log("[4/4] evaluating on the held-out test split")
    result = evaluate(PathAlign.load(out), examples, "test", config=cfg.generation(), log=log)
    result["targets"] = TARGETS
    result["build_seconds"] = round(time.perf_counter() - t0, 1)
    write_eval(out, result)
    log(format_table(result, TARGETS))
    log(f"demo bundle written to {out} in {result['build_seconds']:.0f} s")
    return out


def encoder_fingerprint(encoder: Any) -> list[float]:
    """The encoder's features of one fixed synthetic patch: changes whenever the encoder's output does."""
    rng = np.random.default_rng(12345)
    size = int(getattr(encoder, "input_size", 224))
    patch = np.clip(rng.normal([200, 150, 190], 30, size=(1, size, size, 3)), 0, 255).astype(np.uint8)
    return [round(float(v), 6) for v in encoder.encode(patch)[0]]


def why_not_ready(out: str | os.PathLike, name: str | None = None, version: str | None = None) -> str | None:
    """Why ``out`` is not a complete bundle named ``name`` ``version`` (default: the shipped demo bundle's)
    whose features match the current built-in encoder; None when it is."""
    from inference.bundle import read_bundle_config
    from inference.encoders import build_encoder

    name, version = name or DEMO_NAME, version or DEMO_VERSION
    try:
        config = read_bundle_config(out)
    except (FileNotFoundError, ValueError) as exc:
        return str(exc)
    if config.get("name") != name or config.get("version") != version:
        return f"it is {config.get('name')} {config.get('version')}, not {name} {version}"
    if not (Path(out) / "eval.json").is_file():
        return "it has no eval.json (an unfinished build?)"
    # The built-in encoder is code, not weights: if its output changes, the bundle is stale.
    encoder = build_encoder(config.get("encoder") or {"kind": "builtin"})
    if "encoder_fingerprint" not in config:
        return "its bundle.json records no encoder fingerprint"
    if encoder.dim != config["dims"]["feature"] or not np.allclose(
        encoder_fingerprint(encoder), config["encoder_fingerprint"], rtol=1e-3, atol=1e-4
    ):
        return "it was trained on features of another version of the built-in patch encoder"
    return None


def demo_bundle_ready(out: str | os.PathLike, name: str | None = None, version: str | None = None) -> bool:
    """A complete demo bundle of this name and version (default: the shipped demo bundle's) whose features
    match the current built-in encoder."""
    return why_not_ready(out, name, version) is None


def ensure_demo_bundle(
    out: str | os.PathLike,
    log: Callable[[str], None] | None = None,
    shipped: str | os.PathLike | None = None,
) -> Path:
    """The demo bundle at ``out``: kept when current, else copied from the one shipped in the repository
    (``shipped``, default ``SHIPPED``). Raises DemoBundleStale when the shipped one cannot be used: building
    a v2 bundle takes hours on a CPU, so it is never started from here."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(out)
    shipped = Path(shipped) if shipped is not None else SHIPPED
    if demo_bundle_ready(out):
        return out
    reason = why_not_ready(shipped)
    if reason is None:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(shipped, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        log(f"demo bundle copied from {shipped} to {out}")
        return out
    raise DemoBundleStale(
        f"The shipped demo bundle {shipped} ({DEMO_NAME} {DEMO_VERSION}) cannot be used: {reason}. "
        f"Rebuilding it takes hours on a CPU, so it is not started here. To rebuild it: `nice -n 19 {V2_BUILD}` "
        f"(docs/model.md; resumable), then copy var/demo-v2/bundle to {shipped} or start with "
        "PATHALIGN_DEMO_BUNDLE=$PWD/var/demo-v2/bundle. To start without a demo model (slides show as not "
        "analysed): PATHALIGN_SKIP_DEMO_MODEL=1. The v1 demo bundle (small fields; tens of minutes) is "
        "built by `python -m inference.demo`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(
        description=f"Build the v1 PathAlign demo bundle ({V1_NAME} {V1_VERSION}; synthetic data, offline). "
        f"The app's default demo bundle is {DEMO_NAME} {DEMO_VERSION} in {SHIPPED}: {V2_BUILD}."
    )
    ap.add_argument("--out", default="var/models/demo")
    ap.add_argument("--work", help="corpus, features and checkpoints (default: next to --out)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the bundle exists")
    ap.add_argument("--ship", action="store_true", help=f"also copy the result to {SHIPPED_V1} (to commit)")
    for name, value in asdict(DemoConfig()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = ap.parse_args(argv)
    cfg = DemoConfig(**{k: getattr(args, k) for k in asdict(DemoConfig())})
    if args.force or not demo_bundle_ready(args.out, V1_NAME, V1_VERSION) or cfg != DemoConfig():
        build_demo_bundle(args.out, args.work, cfg)
    else:
        result = json.loads((Path(args.out) / "eval.json").read_text())
        from inference.evaluate import format_table

        print(format_table(result, TARGETS))
        print(f"{args.out} is up to date (--force rebuilds it)", file=sys.stderr)
    if args.ship:
        shutil.rmtree(SHIPPED_V1, ignore_errors=True)
        shutil.copytree(args.out, SHIPPED_V1)
        print(f"copied to {SHIPPED_V1}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
