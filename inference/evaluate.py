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


def diagnosis_names(labels: Sequence[str], synonyms: bool = False) -> dict[str, list[str]]:
    """Every phrasing of each diagnosis (synthetic catalogue; with ``synonyms`` also those corpus-v2 reports
    use, e.g. "Benign lung tissue", which a v2 draft may write); unknown labels are their own name."""
    try:
        from inference.synthetic.catalog import DIAGNOSIS_BY_KEY
    except ImportError:  # pragma: no cover - the catalogue ships with the library
        DIAGNOSIS_BY_KEY = {}  # noqa: N806
    from inference.synthetic.templates_v2 import EXTRA_SYNONYMS  # the v2 reports' extra phrasings

    out = {}
    for label in sorted(set(labels)):
        dx = DIAGNOSIS_BY_KEY.get(label)
        extra = EXTRA_SYNONYMS.get(label, ()) if synonyms else ()
        out[label] = [*dx.names, *extra] if dx else [label.replace("_", " ")]
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


# ----------------------------------------------------------------------------------------------------------
# Benchmark v2 (synthetic WSI corpus v2): slide-level baselines and PathAlign by lesion-share stratum

BENCH_STRATA = ("<1%", "1-5%", "<5%", "diffuse", "normal", "all")
BENCH_TARGETS = {"mean-pool malignant AUC, <5% strata (at most)": 0.75,
                 "PathAlign malignant AUC, 1-5% (at least)": 0.90, "PathAlign malignant AUC, <1% (at least)": 0.80,
                 "PathAlign attention localisation AUC (at least)": 0.85}


def is_v2_corpus(corpus: str | os.PathLike) -> bool:
    p = Path(corpus)
    p = p / "manifest.jsonl" if p.is_dir() else p
    with open(p) as fh:
        first = fh.readline()
    return bool(first.strip()) and '"corpus_version": 2' in first


def extract_v2_features(corpus: str | os.PathLike, encoder: Any, out_dir: str | os.PathLike, workers: int = 2,
                        batch_size: int = 64, tiling: dict[str, Any] | None = None,
                        log: Callable[[str], object] = print, readers: str = "threads", processes: int = 0,
                        shard: tuple[int, int] | None = None) -> Path:
    """Every tissue patch of every v2 slide, one safetensors file per slide (``<slide_id>.safetensors``,
    float16) plus ``index.jsonl`` and ``encoder.json`` in the format of ``features.extract_corpus_features``
    (so ``train.load_examples`` reads it). Resumable: files already made by this encoder and tiling are
    kept. Slides stream through ``features.iter_slide_features`` (``readers``: "threads" or "processes", as
    there); each is written as soon as it is done.

    ``processes`` > 1 (CPU encoders): the slides are dealt to that many spawned processes, each encoding its
    share with one torch thread and one reading thread (``shard=(i, n)``: slides ``i, i + n, ...``; the
    index is written by the caller once all are done). The features are the same numbers (the built-in
    encoder's are bit-identical at any batch size >= 8); on the shared 2-core box one torch thread per
    process avoids the intra-op threads' oversubscription (2026-12-07, load ~6: 26 patches/s with one
    thread and batch 16 against 8-15 with two threads and batch 64)."""
    import json

    from inference import features as feats
    from inference.bundle import normalise_tiling
    from inference.synthetic.corpus_v2 import load_manifest as load_v2

    t = normalise_tiling(tiling)
    recs = load_v2(corpus)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if processes > 1 and shard is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            futs = [pool.submit(_extract_v2_shard, str(corpus), encoder.spec, str(out_dir), batch_size, tiling,
                                (i, processes)) for i in range(processes)]
            for f in futs:
                f.result()
        processes = 0  # every slide is done now: the pass below only checks them and writes the index
    (out / "encoder.json").write_text(json.dumps({"spec": encoder.spec, "dim": encoder.dim, "tiling": t}, indent=2))
    todo = []
    for i, rec in enumerate(recs):
        if shard is not None and i % shard[1] != shard[0]:
            continue
        path = out / f"{rec['slide_id']}.safetensors"
        try:
            meta = feats.read_meta(path)
            if (meta.matches(encoder.spec) and meta.patch_size == t["patch_size"] and meta.target_mpp == t["mpp"]):
                continue
        except (OSError, ValueError):
            pass
        todo.append(i)
    t0 = time.perf_counter()
    stream = feats.iter_slide_features([recs[i]["slide_path"] for i in todo], encoder, t["patch_size"], t["mpp"],
                                       None, batch_size, workers, min_tissue=t["min_tissue"], overlap=t["overlap"],
                                       readers=readers)
    n_done = 0
    for i, sf in zip(todo, stream, strict=True):
        sf.save(out / f"{recs[i]['slide_id']}.safetensors", extra={"slide": recs[i]["slide"]}, dtype=torch.float16)
        n_done += 1
        log(f"features {n_done}/{len(todo)}{f' (shard {shard[0]})' if shard else ''}: {recs[i]['slide_id']} "
            f"{len(sf)} patches ({time.perf_counter() - t0:.0f} s)")
    if shard is not None:
        return out
    with open(out / "index.jsonl", "w") as fh:
        for rec in recs:
            meta = feats.read_meta(out / f"{rec['slide_id']}.safetensors")
            fh.write(json.dumps({"slide": rec["slide"], "features": f"{rec['slide_id']}.safetensors",
                                 "n_patches": meta.n_patches, "split": rec["split"], "diagnosis": rec["diagnosis"],
                                 "case_id": rec["case_id"], "part": rec["part"]}) + "\n")
    return out


def _extract_v2_shard(corpus: str, spec: dict[str, Any], out_dir: str, batch_size: int,
                      tiling: dict[str, Any] | None, shard: tuple[int, int]) -> None:
    """One process of ``extract_v2_features(processes=n)``: its share of the slides, one torch thread."""
    from inference.augment import build_training_encoder

    torch.set_num_threads(1)
    encoder = build_training_encoder(spec, device="cpu")  # the plain encoder, or jittered (augment.py)
    extract_v2_features(corpus, encoder, out_dir, workers=1, batch_size=batch_size, tiling=tiling,
                        log=lambda m: print(m, file=sys.stderr, flush=True), shard=shard)


def _bench_slides(corpus: str | os.PathLike, features_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Manifest records with their features path, patch coordinates and per-patch lesion fraction."""
    from safetensors import safe_open

    from inference.features import read_meta
    from inference.synthetic.corpus_v2 import load_manifest as load_v2
    from inference.synthetic.corpus_v2 import load_mask, patch_lesion_fraction

    out = []
    for rec in load_v2(corpus):
        path = Path(features_dir) / f"{rec['slide_id']}.safetensors"
        if not path.is_file():  # not extracted (yet): a partial run scores the slides that are
            continue
        meta = read_meta(path)
        if meta.n_patches == 0:
            continue
        with safe_open(str(path), framework="pt") as fh:
            coords = fh.get_tensor("coords").numpy()
        mask, ds = load_mask(rec)
        rec = dict(rec, features_path=str(path), n_patches=meta.n_patches,
                   lesion_fraction=patch_lesion_fraction(mask, ds, coords, meta.patch_size_level0))
        out.append(rec)
    return out


def _folds(slides: Sequence[dict], k: int, seed: int) -> list[int]:
    """Fold index per slide, grouped by part (all slides of a part in one fold), parts dealt round-robin
    in a seeded order within each malignant/benign group so folds hold both."""
    rng = np.random.default_rng(seed)
    parts: dict[str, bool] = {}
    for s in slides:
        parts[s["part_id"]] = parts.get(s["part_id"], False) or bool(s["part_malignant"])
    fold_of: dict[str, int] = {}
    i = 0
    for flag in (True, False):
        ids = sorted(p for p, m in parts.items() if m == flag)
        for p in rng.permutation(ids).tolist():
            fold_of[p] = i % k
            i += 1
    return [fold_of[s["part_id"]] for s in slides]


def _stratum_sets(slides: Sequence[dict]) -> dict[str, list[int]]:
    idx: dict[str, list[int]] = {k: [] for k in BENCH_STRATA}
    for i, s in enumerate(slides):
        idx["all"].append(i)
        idx[s["stratum"]].append(i)
        if s["stratum"] in ("<1%", "1-5%"):
            idx["<5%"].append(i)
    return idx


def _figures(slides: Sequence[dict], mal: np.ndarray, dia: np.ndarray, classes: Sequence[str],
             attention: Sequence[np.ndarray] | None) -> dict[str, Any]:
    """Per stratum: n, malignant AUC (the stratum's malignant slides against every non-malignant slide of
    the set), diagnosis balanced accuracy (within the stratum), attention localisation AUC (lesion slides
    of the stratum); and part-level accuracy over the set's parts."""
    from inference.synthetic.catalog import DIAGNOSIS_BY_KEY

    y_mal = np.asarray([bool(s["malignant"]) for s in slides])
    pred = [classes[i] for i in np.asarray(dia).argmax(1)]
    out: dict[str, Any] = {}
    for name, idx in _stratum_sets(slides).items():
        if not idx:
            continue
        f: dict[str, Any] = {"n": len(idx), "n_malignant": int(y_mal[idx].sum())}
        pos = [i for i in idx if y_mal[i]]
        neg = [i for i in range(len(slides)) if not y_mal[i]]
        if pos and neg:
            f["malignant_auc"] = metrics.roc_auc(mal[pos + neg], [1] * len(pos) + [0] * len(neg))
        f["diagnosis_balanced_accuracy"] = metrics.balanced_accuracy([pred[i] for i in idx],
                                                                     [slides[i]["diagnosis"] for i in idx])
        if attention is not None:
            loc = metrics.localisation_auc([attention[i] for i in idx], [slides[i]["lesion_fraction"] for i in idx])
            if loc["n_slides"]:
                f["localisation_auc"] = loc["mean_auc"]
                f["localisation_auc_pooled"] = loc["pooled_auc"]
                f["localisation_slides"] = loc["n_slides"]
        out[name] = f
    order = ("normal", "benign", "inflammatory", "precancerous", "malignant")

    def severity(key: str) -> int:
        return order.index(DIAGNOSIS_BY_KEY[key].category) if key in DIAGNOSIS_BY_KEY else 0

    parts: dict[str, list[int]] = {}
    for i, s in enumerate(slides):
        parts.setdefault(s["part_id"], []).append(i)
    dx_ok, mal_ok = [], []
    for ids in parts.values():
        best = max(ids, key=lambda i: (severity(pred[i]), float(np.max(dia[i]))))
        dx_ok.append(pred[best] == slides[ids[0]]["part_diagnosis"])
        mal_ok.append((max(mal[i] for i in ids) > 0.5) == bool(slides[ids[0]]["part_malignant"]))
    out["parts"] = {"n": len(parts), "part_diagnosis_accuracy": float(np.mean(dx_ok)),
                    "part_malignant_accuracy": float(np.mean(mal_ok))}
    return out


def _bags(slides: Sequence[dict], classes: Sequence[str]) -> list[Any]:
    from inference.mil import FeatureBag

    return [FeatureBag(s["features_path"], int(bool(s["malignant"])), list(classes).index(s["diagnosis"]))
            for s in slides]


def _fit_predict(train: Sequence[dict], test_sets: Sequence[Sequence[dict]], classes: Sequence[str],
                 seed: int, mil_epochs: int) -> dict[str, list[tuple[np.ndarray, np.ndarray, Any]]]:
    """Train both baselines on `train`; (malignant prob, diagnosis probs, attention) for each test set."""
    from inference.mil import MeanPoolLogReg, MILBaseline

    bags = _bags(train, classes)
    mp = MeanPoolLogReg(seed=seed).fit(bags)
    mil = MILBaseline(len(classes), epochs=mil_epochs, seed=seed).fit(bags)
    out: dict[str, list] = {"mean-pool": [], "gated-attention MIL": []}
    for ts in test_sets:
        tb = _bags(ts, classes)
        m, d = mp.predict(tb, len(classes))
        out["mean-pool"].append((m, d, None))
        o = mil.predict(tb)
        out["gated-attention MIL"].append((o.malignant_prob, o.diagnosis_prob, o.attention))
    return out


def _pathalign_scores(model: PathAlign, slides: Sequence[dict], classes: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Zero-shot with the v2 prompts (worded unlike any report): malignant score = softmax mass (over
    classes, query-max cosine / 0.05) on malignant classes; attention = the Q-Former's patch attention."""
    from safetensors import safe_open

    from inference.synthetic.catalog import DIAGNOSIS_BY_KEY
    from inference.synthetic.templates_v2 import ZERO_SHOT_PROMPTS

    names, label_embs = model.label_embeddings({c: list(ZERO_SHOT_PROMPTS[c]) for c in classes})
    malignant = np.asarray([DIAGNOSIS_BY_KEY[c].category == "malignant" for c in names])
    mal, dia, att = [], [], []
    for s in slides:  # one slide's features in memory at a time
        with safe_open(s["features_path"], framework="pt") as fh:
            x = fh.get_tensor("features").float()
        emb = model.embed_many([x])[0]
        sim = (emb.queries @ label_embs.T).max(0)  # [L]
        p = np.exp((sim - sim.max()) / 0.05)
        p = p / p.sum()
        mal.append(float(p[malignant].sum()))
        dia.append(p)
        att.append(emb.attention)
    return np.asarray(mal), np.stack(dia), att


def choose_heatmap_attention(model: PathAlign, slides: Sequence[dict]) -> dict[str, Any]:
    """Which patch attention localises the lesions of ``slides`` (validation slides with lesion masks,
    `_bench_slides` records) better, by mean localisation AUC: the averaged cross-attention ("cross") or,
    for a model with a patch scorer, the scorer's gated attention ("scorer"). A tie keeps "cross". The
    demo-v2 build writes the choice to bundle.json (``heatmap_attention``, read by `PathAlign`)."""
    from safetensors import safe_open

    lesion = [s for s in slides if np.any(np.asarray(s["lesion_fraction"]) > 0)]
    choices = ("cross", "scorer") if model.model.scorer is not None else ("cross",)
    maps: dict[str, list[np.ndarray]] = {c: [] for c in choices}
    for s in lesion:  # one slide's features in memory at a time
        with safe_open(s["features_path"], framework="pt") as fh:
            x = fh.get_tensor("features").float()[None].to(model.device)
        for c in choices:
            with torch.no_grad():
                _, att = model.model.encode_patches(x, None, with_attention=True, attention_from=c)
            maps[c].append(att[0].float().cpu().numpy())
    auc = {c: metrics.localisation_auc(maps[c], [s["lesion_fraction"] for s in lesion])["mean_auc"]
           for c in choices} if lesion else {}
    best = "scorer" if auc.get("scorer", -1.0) > auc.get("cross", -1.0) else "cross"
    return {"heatmap_attention": best, "localisation_auc": auc, "slides": len(lesion)}


def draft_figures_v2(model: PathAlign, slides: Sequence[dict], classes: Sequence[str],
                     config: Any = None) -> dict[str, Any]:
    """Drafts per part (``draft_part`` over all the part's slides, as the app drafts): the part's diagnosis
    stated and no other (``metrics.diagnosis_correct`` over the set's classes); its grade named where it has
    one (the catalogue's grade text, case- and punctuation-insensitive); site and laterality consistent: every
    anatomic site or side the draft names is the part's (a draft that names none is consistent: never
    invented). Returns rates, counts and the drafts."""
    import re

    from inference.features import SlideFeatures
    from inference.generation import GenerationConfig
    from inference.synthetic.catalog import DIAGNOSIS_BY_KEY, ORGANS

    def norm(t: str) -> str:
        return " " + re.sub(r"[^a-z0-9]+", " ", t.lower()).strip() + " "

    config = config or GenerationConfig(num_beams=3, max_new_tokens=96, candidates=8)  # as the app drafts
    names = diagnosis_names(classes, synonyms=True)
    parts: dict[str, list[dict]] = {}
    for s in slides:
        parts.setdefault(s["part_id"], []).append(s)
    rows = []
    for pid, ss in parts.items():
        sets = [SlideFeatures.load(s["features_path"]) for s in ss]  # with the tiling the file records
        text = model.draft_part(sets, config).text
        truth = ss[0]["part_diagnosis"]
        grade = next((s["grade"] for s in ss if s.get("grade")), None)
        t = norm(text)
        named_sites = [x for o in ORGANS.values() for x in o.sites if norm(x) in t]
        sides = {w for w in ("left", "right") if f" {w} " in t}
        site_ok = all(norm(x) == norm(ss[0]["site"]) for x in named_sites) and \
            all(f" {w} " in norm(ss[0]["site"]) for w in sides)
        rows.append({"part_id": pid, "truth": truth, "grade": grade, "draft": text,
                     "diagnosis_correct": bool(metrics.diagnosis_correct(text, truth, names)),
                     "grade_correct": None if grade is None else norm(grade) in t,
                     "site_consistent": bool(site_ok),
                     "malignant": DIAGNOSIS_BY_KEY[truth].category == "malignant"})
    graded = [r for r in rows if r["grade_correct"] is not None]
    return {"n_parts": len(rows), "n_graded": len(graded),
            "diagnosis_correct": float(np.mean([r["diagnosis_correct"] for r in rows])) if rows else float("nan"),
            "grade_correct": float(np.mean([r["grade_correct"] for r in graded])) if graded else float("nan"),
            "site_consistent": float(np.mean([r["site_consistent"] for r in rows])) if rows else float("nan"),
            "parts": rows}


def benchmark_v2(corpus: str | os.PathLike, features_dir: str | os.PathLike, model: PathAlign | None = None,
                 cv_folds: int = 5, seed: int = 0, mil_epochs: int = 40,
                 log: Callable[[str], object] = print,
                 extra_train: Sequence[tuple[str | os.PathLike, str | os.PathLike]] = (),
                 compare: dict[str, PathAlign] | None = None, drafts: bool = False) -> dict[str, Any]:
    """The slide-level benchmark on a v2 corpus (see docs/model.md, "Benchmark v2").

    Protocol "held-out": baselines trained on train + val, scored on test and new-site. Protocol "cv":
    `cv_folds`-fold cross-validation grouped by part over every training-site slide (train + val + test),
    predictions pooled over the folds (more slides per stratum on small corpora); new-site is never
    trained on. PathAlign (a bundle, when given) trains nothing: zero-shot and attention on each set.
    ``extra_train``: (corpus, features) pairs of more training slides (``demo_v2 extra``: the train/val parts
    of another seed); their train/val slides join the held-out protocol's training set (never cv's folds).
    ``compare``: more bundles by row label (e.g. the v1 demo bundle), scored like ``model`` on the same sets.
    ``drafts``: also ``model``'s part drafts on each set (``draft_figures_v2``), under ``result["drafts"]``."""
    import json

    t0 = time.perf_counter()
    slides = _bench_slides(corpus, features_dir)
    from inference.synthetic.corpus_v2 import v2_diagnoses

    classes = [c for c in v2_diagnoses() if any(s["diagnosis"] == c for s in slides)]
    train = [s for s in slides if s["split"] in ("train", "val")]
    extra = [s for c, f in extra_train for s in _bench_slides(c, f) if s["split"] in ("train", "val")]
    train += extra
    sets = {"test": [s for s in slides if s["split"] == "test"],
            "new-site": [s for s in slides if s["split"] == "new-site"]}
    result: dict[str, Any] = {"classes": classes, "n_slides": len(slides),
                              "n_patches_mean": float(np.mean([s["n_patches"] for s in slides])),
                              "n_patches_min": int(min(s["n_patches"] for s in slides)),
                              "splits": {k: sum(s["split"] == k for s in slides)
                                         for k in ("train", "val", "test", "new-site")},
                              "strata": {k: sum(s["stratum"] == k for s in slides) for k in ("<1%", "1-5%", "diffuse", "normal")},
                              "protocols": {}}
    if extra_train:
        result["extra_train"] = {"corpora": [str(c) for c, _ in extra_train], "slides": len(extra),
                                 "strata": {k: sum(s["stratum"] == k for s in extra)
                                            for k in ("<1%", "1-5%", "diffuse", "normal")}}
    cfile = Path(corpus) / "corpus.json" if Path(corpus).is_dir() else Path(corpus).parent / "corpus.json"
    if cfile.is_file():
        result["corpus"] = json.loads(cfile.read_text())
    log(f"held-out: training baselines on {len(train)} slides ...")
    held: dict[str, dict[str, Any]] = {}
    preds = _fit_predict(train, [sets["test"], sets["new-site"]], classes, seed, mil_epochs)
    for method, outs in preds.items():
        for (name, ss), (m, d, a) in zip(sets.items(), outs, strict=True):
            if ss:
                held.setdefault(name, {})[method] = _figures(ss, m, d, classes, a)
    if model is not None:
        for name, ss in sets.items():
            if ss:
                log(f"PathAlign on {len(ss)} {name} slides ...")
                m, d, a = _pathalign_scores(model, ss, classes)
                held[name]["PathAlign (zero-shot)"] = _figures(ss, m, d, classes, a)
                if drafts:
                    log(f"PathAlign drafts of the {name} parts ...")
                    result.setdefault("drafts", {})[name] = draft_figures_v2(model, ss, classes)
        result["bundle"] = {"name": model.spec["name"], "version": model.spec["version"]}
    for label, other in (compare or {}).items():
        for name, ss in sets.items():
            if ss:
                log(f"{label} on {len(ss)} {name} slides ...")
                m, d, a = _pathalign_scores(other, ss, classes)
                held.setdefault(name, {})[label] = _figures(ss, m, d, classes, a)
                if drafts:
                    result.setdefault("drafts_compared", {}).setdefault(label, {})[name] = \
                        draft_figures_v2(other, ss, classes)
        result.setdefault("compared", {})[label] = {"name": other.spec["name"], "version": other.spec["version"]}
    result["protocols"]["held-out"] = held
    if cv_folds > 1:
        pool = [s for s in slides if s["split"] != "new-site"]
        folds = _folds(pool, cv_folds, seed)
        n = len(pool)
        agg = {m: (np.zeros(n), np.zeros((n, len(classes))), [None] * n) for m in ("mean-pool", "gated-attention MIL")}
        for k in range(cv_folds):
            tr = [s for s, f in zip(pool, folds, strict=True) if f != k]
            te_idx = [i for i, f in enumerate(folds) if f == k]
            if not te_idx or not tr:
                continue
            log(f"cv fold {k + 1}/{cv_folds}: {len(tr)} train, {len(te_idx)} test slides ...")
            got = _fit_predict(tr, [[pool[i] for i in te_idx]], classes, seed + k, mil_epochs)
            for method, outs in got.items():
                m, d, a = outs[0]
                for j, i in enumerate(te_idx):
                    agg[method][0][i] = m[j]
                    agg[method][1][i] = d[j]
                    agg[method][2][i] = None if a is None else a[j]
        result["protocols"]["cv"] = {"pooled": {
            method: _figures(pool, m, d, classes, None if a[0] is None else a) for method, (m, d, a) in agg.items()}}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return result


def format_benchmark(result: dict[str, Any]) -> str:
    """One table per protocol and set: rows = method x stratum."""
    lines = [f"benchmark v2: {result['n_slides']} slides, {result['n_patches_mean']:.0f} tissue patches per slide "
             f"on average (min {result['n_patches_min']}); splits {result['splits']}; strata {result['strata']}"]
    head = f"{'method':<24}{'stratum':<9}{'n':>4}{'n_mal':>6}{'mal AUC':>9}{'dx bACC':>9}{'loc AUC':>9}"
    for proto, sets in result["protocols"].items():
        for name, methods in sets.items():
            lines += ["", f"[{proto}] {name}", head, "-" * len(head)]
            for method, figs in methods.items():
                for stratum in BENCH_STRATA:
                    f = figs.get(stratum)
                    if not f:
                        continue

                    def v(key: str, f: dict = f) -> str:
                        x = f.get(key)
                        return f"{x:>9.3f}" if isinstance(x, float) and x == x else f"{'-':>9}"

                    lines.append(f"{method:<24}{stratum:<9}{f['n']:>4}{f['n_malignant']:>6}{v('malignant_auc')}"
                                 f"{v('diagnosis_balanced_accuracy')}{v('localisation_auc')}")
                p = figs.get("parts")
                if p:
                    lines.append(f"{method:<24}{'parts':<9}{p['n']:>4}{'':>6}  part dx acc {p['part_diagnosis_accuracy']:.3f}"
                                 f", part malignant acc {p['part_malignant_accuracy']:.3f}")
    drafts = [("PathAlign", name, d) for name, d in result.get("drafts", {}).items()]
    drafts += [(label, name, d) for label, sets in result.get("drafts_compared", {}).items() for name, d in sets.items()]
    for label, name, d in drafts:
        lines.append(f"\n[drafts] {label}, {name}: {d['n_parts']} parts; diagnosis correct {d['diagnosis_correct']:.3f}, "
                     f"grade correct {d['grade_correct']:.3f} ({d['n_graded']} graded), site/laterality "
                     f"consistent {d['site_consistent']:.3f}")
    return "\n".join(lines)


def main_v2(args: argparse.Namespace) -> int:
    """`python -m inference.evaluate [BUNDLE] --corpus V2DIR`: the v2 benchmark (baselines; PathAlign too
    when a bundle is given). Features: built-in encoder (or the bundle's), cached under <corpus>/features-*."""
    import json

    from inference.encoders import build_encoder

    model = PathAlign.load(args.bundle) if args.bundle else None
    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    corpus = Path(args.corpus)
    root = corpus if corpus.is_dir() else corpus.parent
    if model is not None:
        encoder, tiling = model.encoder, model.tiling
        name = model.spec["encoder"].get("name", "encoder")
    else:
        encoder, tiling = build_encoder({"kind": "builtin"}), None
        name = encoder.spec.get("name", "builtin")
    features = Path(args.features) if args.features else root / f"features-v2-{name}"
    if not args.skip_extract:
        extract_v2_features(corpus, encoder, features, workers=args.workers, tiling=tiling, log=log)
    extra = [(c, Path(c) / f"features-v2-{name}") for c in args.extra_train or ()]
    result = benchmark_v2(corpus, features, model, cv_folds=args.cv_folds, seed=args.seed,
                          mil_epochs=args.mil_epochs, log=log, extra_train=extra)
    print(format_benchmark(result))
    out = Path(args.out) if args.out else root / "benchmark-v2.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    log(f"wrote {out}")
    if model is not None and not args.no_write:
        from inference.bundle import EVAL_FILE, write_eval

        ev = Path(args.bundle) / EVAL_FILE
        current = json.loads(ev.read_text()) if ev.is_file() else {}
        write_eval(args.bundle, current | {"benchmark_v2": result})
        log(f"wrote {ev} (benchmark_v2)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description="Evaluate a PathAlign bundle against the mean-pool baseline; on a "
                                 "v2 corpus, the slide-level benchmark (bundle optional).")
    ap.add_argument("bundle", nargs="?", default=None)
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
    ap.add_argument("--out", help="v2: where to write the benchmark JSON (default <corpus>/benchmark-v2.json)")
    ap.add_argument("--cv-folds", type=int, default=5, help="v2: folds of the grouped cross-validation (0: none)")
    ap.add_argument("--mil-epochs", type=int, default=40, help="v2: gated-attention MIL training epochs")
    ap.add_argument("--workers", type=int, default=2, help="v2: patch-reading threads")
    ap.add_argument("--skip-extract", action="store_true", help="v2: score the slides whose features exist")
    ap.add_argument("--extra-train", nargs="*", help="v2: corpora of more training slides (their train/val "
                    "slides, features already in <corpus>/features-v2-<encoder>) for the held-out baselines")
    args = ap.parse_args(argv)
    if is_v2_corpus(args.corpus):
        return main_v2(args)
    if args.bundle is None:
        ap.error("a bundle is required for a v1 corpus")
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
