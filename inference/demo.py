"""The demo bundle: synthetic corpus -> patch features -> PathAlign-G training -> evaluation -> bundle.

    python -m inference.demo --out var/models/demo

One reproducible command (fixed seeds; same figures on every run on the same machine). The web app calls
``ensure_demo_bundle()`` at first start: it returns at once when the bundle exists and builds it otherwise
(a few minutes on 2 CPU cores, with progress bars). The bundle is not committed to git: the 384-wide
MiniLM vocabulary alone is 30k x 384 weights (~47 MB in float32), more than is reasonable in a repository,
while rebuilding needs nothing but the installed packages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEMO_NAME = "pathalign-demo"
DEMO_VERSION = "1.0.0"
TARGETS = {"zero_shot_accuracy": 0.85, "i2t_Acc@1": 0.85, "i2t_MVAcc@5": 0.85, "diagnosis_stated_rate": 0.80}


@dataclass
class DemoConfig:
    cases: int = 320  # 20 per diagnosis; the manifest's split gives ~70/15/15 train/val/test
    seed: int = 0
    slide_size: int = 1536  # level-0 side (px) at 0.5 um/px
    # Stage-1 training. Two text layers (the first two of MiniLM) keep a first start short on two CPU cores.
    num_hidden_layers: int = 2
    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-4
    new_lr: float = 5e-4
    max_patches: int = 64
    max_text_len: int = 64
    group_by: str = "text"
    num_beams: int = 3
    max_new_tokens: int = 64


def _bar(desc: str) -> Callable[[int, int], None]:
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
    """Generate the corpus, extract features, train, evaluate and write the bundle to ``out``."""
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
    corpus = work / "corpus"
    manifest = corpus / "manifest.jsonl"
    if not manifest.exists():
        log(f"[1/4] generating {cfg.cases} synthetic slides in {corpus}")
        generate_corpus(corpus, cfg.cases, seed=cfg.seed, size=cfg.slide_size, progress=_bar("slides"))
    encoder = build_encoder({"kind": "builtin"})
    features = work / "features"
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
        seed=cfg.seed,
        warmup_steps=20,
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
    save_bundle(out, model, tokenizer, encoder_spec, name=DEMO_NAME, version=DEMO_VERSION, training=training)
    log("[4/4] evaluating on the held-out test split")
    result = evaluate(
        PathAlign.load(out),
        examples,
        "test",
        num_beams=cfg.num_beams,
        max_new_tokens=cfg.max_new_tokens,
        log=log,
    )
    result["targets"] = TARGETS
    result["build_seconds"] = round(time.perf_counter() - t0, 1)
    write_eval(out, result)
    log(format_table(result, TARGETS))
    log(f"demo bundle written to {out} in {result['build_seconds']:.0f} s")
    return out


def demo_bundle_ready(out: str | os.PathLike) -> bool:
    from inference.bundle import read_bundle_config

    try:
        config = read_bundle_config(out)
    except (FileNotFoundError, ValueError):
        return False
    return (
        config.get("name") == DEMO_NAME
        and config.get("version") == DEMO_VERSION
        and (Path(out) / "eval.json").is_file()
    )


def ensure_demo_bundle(
    out: str | os.PathLike, work: str | os.PathLike | None = None, log: Callable[[str], None] | None = None
) -> Path:
    """The demo bundle at ``out``: returned as is when complete, built (resuming any partial work) when not."""
    if demo_bundle_ready(out):
        return Path(out)
    kwargs = {"log": log} if log else {}
    return build_demo_bundle(out, work, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description="Build the PathAlign demo bundle (synthetic data, offline).")
    ap.add_argument("--out", default="var/models/demo")
    ap.add_argument("--work", help="corpus, features and checkpoints (default: next to --out)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the bundle exists")
    for name, value in asdict(DemoConfig()).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = ap.parse_args(argv)
    cfg = DemoConfig(**{k: getattr(args, k) for k in asdict(DemoConfig())})
    if args.force or not demo_bundle_ready(args.out) or cfg != DemoConfig():
        build_demo_bundle(args.out, args.work, cfg)
    else:
        result = json.loads((Path(args.out) / "eval.json").read_text())
        from inference.evaluate import format_table

        print(format_table(result, TARGETS))
        print(f"{args.out} is up to date (--force rebuilds it)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
