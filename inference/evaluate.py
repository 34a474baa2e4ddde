"""Evaluate a bundle on a corpus's held-out split, beside the paper's baseline computed in the same run.

    python -m inference.evaluate var/models/demo --corpus var/demo-training/corpus [--features DIR]

PathAlign figures: paired retrieval Recall@1/5/10 in both directions; label-match retrieval Acc@1 and
MVAcc@5 (is the diagnosis of the top report / the majority of the top-5 reports the slide's diagnosis;
PathAlign paper, Table 1); zero-shot diagnosis accuracy (prompt ensembles); linear-probe accuracy on the
slide embeddings; for generative bundles, BLEU-4 / METEOR / ROUGE-L of the drafts against the diagnostic
part of the reference reports and the rate of drafts that state the correct diagnosis (and no other).

Baseline (the paper's "mean-pooled patch embeddings"), built from the same training pairs, the same text
encoder initialisation and the same prompts, so that the only difference is the Q-Former:
  * slide vector = mean of the slide's patch features;
  * text vector = the frozen all-MiniLM sentence embedding (mean-pooled tokens; the Q-Former's text layers
    start from the same weights);
  * a ridge regression from standardised slide vectors to text vectors, fitted on the training pairs
    (alpha picked on the validation split), puts slides in the text space: retrieval and zero-shot use
    cosine similarity there;
  * linear probe: the same logistic regression on the mean-pooled features;
  * generation: the report of the nearest training slide (cosine of mean-pooled features): retrieval-based
    drafting, what a system without a decoder can do.
The figures go to the bundle's ``eval.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference import metrics
from inference.generation import (
    GenerationConfig,
    add_generation_arguments,
    generation_config_from_args,
    resolve,
)
from inference.pathalign import PathAlign
from inference.train import Example

# ----------------------------------------------------------------------------------------------------------
# Labels and prompts


def label_of(example: Example, key: str = "diagnosis") -> str | None:
    rec = example.record
    return rec.get(key) or rec.get("labels", {}).get(key)


def diagnosis_names(labels: Sequence[str]) -> dict[str, list[str]]:
    """Every phrasing of each diagnosis (synthetic catalogue); unknown labels are their own name."""
    try:
        from inference.synthetic.catalog import DIAGNOSIS_BY_KEY
    except ImportError:  # pragma: no cover - the catalogue ships with the library
        DIAGNOSIS_BY_KEY = {}  # noqa: N806
    out = {}
    for label in sorted(set(labels)):
        dx = DIAGNOSIS_BY_KEY.get(label)
        out[label] = list(dx.names) if dx else [label.replace("_", " ")]
    return out


def diagnosis_prompts(labels: Sequence[str]) -> dict[str, list[str]]:
    """Zero-shot prompt ensembles: each phrasing of a diagnosis, bare and in an organ template."""
    try:
        from inference.synthetic.catalog import DIAGNOSIS_BY_KEY, ORGANS
    except ImportError:  # pragma: no cover
        DIAGNOSIS_BY_KEY, ORGANS = {}, {}  # noqa: N806
    prompts = {}
    for label, names in diagnosis_names(labels).items():
        dx = DIAGNOSIS_BY_KEY.get(label)
        organ = ORGANS[dx.organ].display if dx and dx.organ in ORGANS else None
        ps = [f"{n}." for n in names]
        if organ:
            ps += [f"{organ}, biopsy: {n}." for n in names]
        prompts[label] = ps
    return prompts


# ----------------------------------------------------------------------------------------------------------
# The mean-pool baseline


def sentence_embeddings(
    texts: Sequence[str], text_dir: str | None = None, batch_size: int = 64
) -> np.ndarray:
    """Frozen all-MiniLM sentence embeddings (mean of token states over real tokens, L2-normalised)."""
    from inference.qformer import QFormer

    model, tok = QFormer.from_text_model(text_dir, vision_width=1, num_query_tokens=1)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tok(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            h = model.encode_text(enc["input_ids"], enc["attention_mask"])
            m = enc["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out).numpy()


class MeanPoolBaseline:
    """Mean-pooled patch features mapped into the MiniLM sentence space by ridge regression."""

    def __init__(self, train: Sequence[Example], val: Sequence[Example], text_dir: str | None = None) -> None:
        from sklearn.linear_model import Ridge
        from sklearn.preprocessing import StandardScaler

        self.text_dir = text_dir
        x = self.pooled(train)
        self.scaler = StandardScaler().fit(x)
        y = sentence_embeddings([e.text for e in train], text_dir)
        self.train_pooled = _unit(x)
        self.train_texts = [e.text for e in train]
        best = (-1.0, 1.0)
        if val:
            xv, tv = (
                self.scaler.transform(self.pooled(val)),
                sentence_embeddings([e.text for e in val], text_dir),
            )
            for alpha in (0.1, 1.0, 10.0, 100.0, 1000.0):
                ridge = Ridge(alpha=alpha).fit(self.scaler.transform(x), y)
                r5 = metrics.recall_at_k(_unit(ridge.predict(xv)) @ tv.T, ks=(5,))["R@5"]
                if r5 > best[0]:
                    best = (r5, alpha)
        self.alpha = best[1]
        self.ridge = Ridge(alpha=self.alpha).fit(self.scaler.transform(x), y)

    @staticmethod
    def pooled(examples: Sequence[Example]) -> np.ndarray:
        # A slide with no tissue patch pools to zeros rather than NaN.
        return np.stack(
            [
                e.features.mean(0).numpy()
                if len(e.features)
                else np.zeros(e.features.shape[1], dtype=np.float32)
                for e in examples
            ]
        )

    def slide_vectors(self, examples: Sequence[Example]) -> np.ndarray:
        return _unit(self.ridge.predict(self.scaler.transform(self.pooled(examples))))

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return sentence_embeddings(texts, self.text_dir)

    def nearest_report(self, examples: Sequence[Example]) -> list[str]:
        sims = _unit(self.pooled(examples)) @ self.train_pooled.T
        return [self.train_texts[i] for i in sims.argmax(1)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------------------
# The evaluation


def evaluate(
    model: PathAlign,
    examples: Sequence[Example],
    split: str = "test",
    generation: bool = True,
    config: GenerationConfig | None = None,
    log: Callable[[str], object] = print,
    **overrides: Any,
) -> dict[str, Any]:
    """All figures for PathAlign and the mean-pool baseline on ``split``; trains only the baseline.

    Drafts are written with ``config`` (``overrides`` change a copy, e.g. ``max_new_tokens=4``); backend
    "none", or ``generation=False``, skips them.
    """
    cfg = resolve(config, overrides)
    train = [e for e in examples if e.split == "train"]
    val = [e for e in examples if e.split == "val"]
    test = [e for e in examples if e.split == split]
    if not test or not train:
        raise ValueError(
            f"need 'train' and {split!r} examples (have {len(train)} train, {len(test)} {split})"
        )
    labels = [label_of(e) for e in test]
    has_labels = all(labels) and all(label_of(e) for e in train)
    t0 = time.perf_counter()
    ours: dict[str, float] = {}
    base: dict[str, float] = {}

    # Retrieval.
    log(f"embedding {len(test)} {split} slides and reports ...")
    emb = model.embed_many([e.features for e in test])
    queries = np.stack([x.queries for x in emb])  # [n, Q, E]
    texts = [e.text for e in test]
    t_emb = model.embed_text(texts)  # [n, E]
    sim = np.einsum("nqe,me->nmq", queries, t_emb).max(-1)  # query-max [slides, texts]
    baseline = MeanPoolBaseline(train, val)
    b_slides = baseline.slide_vectors(test)
    b_texts = baseline.text_vectors(texts)
    b_sim = b_slides @ b_texts.T
    if has_labels:
        ours |= metrics.retrieval_report(sim, labels)
        base |= metrics.retrieval_report(b_sim, labels)
    else:
        for d, s in (("i2t", sim), ("t2i", sim.T)):
            ours |= {f"{d}_{k}": v for k, v in metrics.recall_at_k(s).items()}
        for d, s in (("i2t", b_sim), ("t2i", b_sim.T)):
            base |= {f"{d}_{k}": v for k, v in metrics.recall_at_k(s).items()}

    if has_labels:
        # Zero-shot diagnosis.
        classes = sorted({label_of(e) for e in train} | set(labels))
        prompts = diagnosis_prompts(classes)
        names, label_embs = model.label_embeddings(prompts)
        zs = np.einsum("nqe,le->nlq", queries, label_embs).max(-1).argmax(1)
        ours["zero_shot_accuracy"] = metrics.accuracy([names[i] for i in zs], labels)
        b_label = _unit(np.stack([baseline.text_vectors(prompts[n]).mean(0) for n in names]))
        base["zero_shot_accuracy"] = metrics.accuracy(
            [names[i] for i in (b_slides @ b_label.T).argmax(1)], labels
        )
        # Linear probe.
        train_emb = model.embed_many([e.features for e in train])
        train_y = [label_of(e) for e in train]
        ours["linear_probe_accuracy"] = metrics.linear_probe(
            np.stack([x.slide for x in train_emb]), train_y, np.stack([x.slide for x in emb]), labels
        )["accuracy"]
        base["linear_probe_accuracy"] = metrics.linear_probe(
            baseline.pooled(train), train_y, baseline.pooled(test), labels
        )["accuracy"]

    # Generation.
    drafts: list[str] = []
    can_generate = cfg.backend == "llm" or (cfg.backend == "qformer" and "itg" in model.model.config.losses)
    if generation and can_generate:
        log(f"generating {len(test)} drafts ({cfg.backend}, beam {cfg.num_beams}) ...")
        drafts = model.generate_many([e.features for e in test], cfg)
        nearest = baseline.nearest_report(test)
        ours |= metrics.generation_report(drafts, texts)
        base |= metrics.generation_report(nearest, texts)
        if has_labels:
            names_by_dx = diagnosis_names(sorted({label_of(e) for e in examples if label_of(e)}))
            ours["diagnosis_stated_rate"] = metrics.diagnosis_stated_rate(drafts, labels, names_by_dx)
            base["diagnosis_stated_rate"] = metrics.diagnosis_stated_rate(nearest, labels, names_by_dx)

    return {
        "split": split,
        "n_slides": len(test),
        "n_train": len(train),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "bundle": {"name": model.spec["name"], "version": model.spec["version"]},
        "pathalign": ours,
        "baseline": base,
        "baseline_method": "mean-pooled patch features; ridge map to frozen MiniLM sentence embeddings "
        f"(alpha={baseline.alpha:g}); nearest-training-report drafts",
        "generation": cfg.to_dict(),
        "examples": [
            {"slide": e.record.get("slide"), "diagnosis": label_of(e), "reference": e.text, "draft": d}
            for e, d in zip(test[:5], drafts[:5], strict=False)
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }


ORDER = [
    "i2t_R@1",
    "i2t_R@5",
    "i2t_R@10",
    "t2i_R@1",
    "t2i_R@5",
    "t2i_R@10",
    "i2t_Acc@1",
    "i2t_MVAcc@5",
    "t2i_Acc@1",
    "t2i_MVAcc@5",
    "zero_shot_accuracy",
    "linear_probe_accuracy",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "diagnosis_stated_rate",
]


def format_table(result: dict[str, Any], targets: dict[str, float] | None = None) -> str:
    """A plain-text table: metric, PathAlign, baseline (and target, when given)."""
    ours, base = result["pathalign"], result["baseline"]
    keys = [k for k in ORDER if k in ours] + sorted(set(ours) - set(ORDER))
    head = f"{'metric':<24}{'PathAlign':>11}{'mean-pool':>11}" + (f"{'target':>9}" if targets else "")
    lines = [
        f"{result['bundle']['name']} {result['bundle']['version']} on {result['n_slides']} "
        f"{result['split']} slides",
        head,
        "-" * len(head),
    ]
    for k in keys:
        row = f"{k:<24}{ours[k]:>11.3f}{base.get(k, float('nan')):>11.3f}"
        if targets:
            row += f"{targets[k]:>9.2f}" if k in targets else f"{'':>9}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description="Evaluate a PathAlign bundle against the mean-pool baseline.")
    ap.add_argument("bundle")
    ap.add_argument("--corpus", required=True, help="corpus directory or manifest.jsonl")
    ap.add_argument(
        "--features",
        help="cached features (default: extract with the bundle's encoder into <corpus>/features-<encoder>)",
    )
    ap.add_argument("--split", default="test")
    ap.add_argument("--no-generation", action="store_true")
    add_generation_arguments(ap)
    ap.add_argument("--no-write", action="store_true", help="do not write eval.json into the bundle")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from inference.bundle import write_eval
    from inference.train import load_examples

    model = PathAlign.load(args.bundle)
    features = args.features or ensure_features(model, args.corpus)
    examples, _ = load_examples(args.corpus, features, seed=args.seed)
    result = evaluate(
        model,
        examples,
        args.split,
        not args.no_generation,
        generation_config_from_args(args),
        log=lambda m: print(m, file=sys.stderr),
    )
    print(format_table(result))
    if not args.no_write:
        write_eval(args.bundle, result)
        print(f"wrote {Path(args.bundle) / 'eval.json'}", file=sys.stderr)
    return 0


def ensure_features(model: PathAlign, corpus: str | os.PathLike) -> Path:
    """Extract (or reuse) the corpus's features with the bundle's encoder."""
    from inference import features as feats

    corpus = Path(corpus)
    root = corpus.parent if corpus.is_file() else corpus
    out = root / f"features-{model.spec['encoder'].get('name', 'encoder')}"
    manifest = corpus if corpus.is_file() else corpus / "manifest.jsonl"
    feats.extract_corpus_features(manifest, model.encoder, out)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
