"""The demo-v2 build: corpus v2 -> every tissue patch's features -> PathAlign training -> benchmark v2.

    python -m inference.demo_v2 build --out var/demo-v2 --preset gpu          # 16 cores + 1 GPU: < ~10 min
    nice -n 19 python -m inference.demo_v2 build --out var/demo-v2-small --preset cpu-small   # background
    nice -n 19 python -m inference.demo_v2 build --out var/demo-v2-cpu --preset cpu       # 2 cores: ~1.5 h
    nice -n 19 python -m inference.demo_v2 extra --out var/demo-v2-cpu-extra --preset cpu --seed 24 --cases 44
    nice -n 19 python -m inference.demo_v2 augment --source var/demo-v2-cpu --out var/demo-v2-cpu-aug --preset cpu
    python -m inference.demo_v2 status --out var/demo-v2

One command, four stages, each resumable (run the same command again after an interruption: it picks up
where it stopped, and a finished stage is not redone):

1. ``corpus``: `inference.synthetic.corpus_v2` parts rendered in a process pool (all cores by default);
   each part's manifest records are written to ``corpus/parts/<case_id>.json`` when its slides are
   complete, so a part interrupted mid-write is rendered again and a finished one is never redone; the
   manifest is written from those files (same records, same order as ``generate_corpus_v2``).
2. ``features``: every tissue patch of every slide (`evaluate.extract_v2_features`: one float16
   safetensors file per slide, resumable per slide), encoder on CUDA when there is one.
3. ``train``: stage-1 PathAlign (`train.train_stage1`) streamed from the per-slide files, with the
   gated-attention patch scorer (QFormerConfig v2), full bags (or a cap), a checkpoint per epoch
   (``--resume``), then ``bundle/`` (`bundle.save_bundle`).
4. ``evaluate``: `evaluate.benchmark_v2` with the bundle (baselines + PathAlign zero-shot and attention,
   by stratum, on test and new-site), written to ``benchmark-v2.json`` and the bundle's ``eval.json``.

``augment`` makes an extra feature copy of a build's training slides from stain- and scanner-jittered
patches (`inference.augment`), to pass to ``--extra-corpora`` like an ``extra`` directory.

``build.json`` records the parameters, each stage's wall time (summed over sittings) and the headline
figures. Presets size the corpus and the model for a machine; any flag overrides a preset's value.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

STAGES = ("corpus", "features", "train", "evaluate")
STATE_FILE = "build.json"
FEATURES = "features-v2-he-texture-v1"


@dataclass
class DemoV2Config:
    # Corpus v2 (see inference/synthetic/corpus_v2.py). 10,000 px at 1 um/px is 10 mm of field (a 10x scan:
    # the same ~1,200 patches of 224 px at 1 um/px as 20,000 px at 0.5 um/px, at a quarter of the pixels).
    cases: int = 100
    seed: int = 13
    size: int = 10000
    mpp: float = 1.0
    organs: tuple[str, ...] = ()  # () = every v2 organ
    multi_share: float = 0.5
    # Machine.
    workers: int = 0  # generation processes and patch-reading threads; 0 = every core
    device: str = "auto"  # encoder and training: "cuda" when available
    # Stage-1 model and training (inference.train.TrainConfig).
    variant: str = "G"
    num_hidden_layers: int = 4
    cross_attention_freq: int = 1  # cross-attention in every layer
    num_query_tokens: int = 32
    scorer_hidden: int = 128
    scorer_top_k: int = 0
    scorer_prior: float = 1.0
    bag_loss_weight: float = 1.0
    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-4
    new_lr: float = 1e-3
    max_patches: int = 0  # 0: full bags (every tissue patch of a slide in every step)
    max_text_len: int = 96
    group_by: str = "diagnosis"
    text_view_prob: float = 0.5
    # Bags and texts: slide bags, each with a report that is true of the slide (own_text), or one bag per case
    # part with the part's report (parts; PathAlign's pairing); reports without the part header (site, side)
    # and slide list, which no patch shows. 2026-12-07 on the 2-core box: part bags left the benign slides of
    # lesion parts unlabelled (few normal examples) and lost on every figure but localisation (docs/model.md).
    parts: bool = False
    header: bool = False
    part_slide_keep: float = 0.5  # a part's bag in a step: each slide with this probability, one carrier always
    # Slide bags (parts False): a benign slide of a lesion part is paired with a report of its own diagnosis
    # (train.with_own_slide_texts) instead of its part's.
    own_text: bool = True
    # The label term (train.TrainConfig): every class's diagnosis line as a negative in every step.
    label_loss_weight: float = 1.0
    label_by: str = "diagnosis"
    # More training slides: build directories made by ``demo_v2 extra`` (the train/val parts of other seeds),
    # used by training and by the held-out baselines alike; the benchmark's test and new-site are unchanged.
    extra_corpora: tuple[str, ...] = ()
    # Other bundles scored beside this one on the same held-out sets (e.g. the shipped v1 demo bundle).
    compare_bundles: tuple[str, ...] = ()
    # The bundle's version (its name is pathalign-demo-v2). 2.0.0: slide bags with their part's report, text
    # losses only; 2.1.0: slide bags with true texts (own_text), reports without the part header, the label term;
    # 2.2.0: 2.1.0 plus a scanner-jittered copy of every training slide (``demo_v2 augment``, --extra-corpora).
    version: str = "2.2.0"
    # Evaluation.
    cv_folds: int = 0
    mil_epochs: int = 40


PRESETS: dict[str, dict[str, Any]] = {
    # 16 CPU cores + 1 H100: ~180 slides of 10 mm, ~220k patches; every stage on its fastest device.
    "gpu": {},
    # The 2-core shared dev box, in the background under nice: a handful of 10-mm slides, a small model.
    "cpu-small": {"cases": 6, "workers": 2, "device": "cpu", "num_hidden_layers": 1, "num_query_tokens": 8,
                  "scorer_hidden": 64, "epochs": 6, "batch_size": 4, "new_lr": 2e-3, "max_patches": 256,
                  "max_text_len": 64, "mil_epochs": 10},
    # The 2-core shared dev box at the largest size it can finish in about two hours in the background
    # (2026-12-07: ~26 process-seconds a slide to render, ~20-28 patches/s to encode): 40 parts of three
    # organs (7 classes), 81 slides of 10 mm, ~105k patches. Seed 21 was picked from the part plans alone
    # (no pixels, no figures) for its held-out focal carcinoma slides: 4 in test, 7 on the new site. Training
    # reads 512-patch subsets, half of them from the top of the model's own attention over the whole bag (one
    # CPU epoch over full bags costs ~2x); inference reads every patch. More training slides:
    # ``demo_v2 extra --preset cpu --seed 24 --cases 44`` and ``--extra-corpora`` (docs/model.md, 2026-12-07).
    "cpu": {"cases": 40, "seed": 21, "organs": ("colon", "prostate", "lung"), "workers": 2, "device": "cpu",
            "num_hidden_layers": 2, "num_query_tokens": 16, "scorer_hidden": 128, "epochs": 14, "batch_size": 8,
            "new_lr": 2e-3, "max_patches": 512, "max_text_len": 96, "mil_epochs": 40},
    # The smallest end-to-end run (CI-sized: 4 mm slides, ~200 patches each): proves the pipeline, not the model.
    "tiny": {"cases": 6, "size": 4000, "workers": 2, "device": "cpu", "num_hidden_layers": 1,
             "num_query_tokens": 8, "scorer_hidden": 32, "epochs": 3, "batch_size": 4, "new_lr": 2e-3,
             "max_patches": 128, "max_text_len": 64, "mil_epochs": 5},
}


def preset(name: str, **overrides: Any) -> DemoV2Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(DemoV2Config(), **(PRESETS[name] | overrides))


# ---------------------------------------------------------------------------------------------- the state


class BuildState:
    """``<out>/build.json``: config, per-stage status and seconds (summed over sittings), results."""

    def __init__(self, out: Path, cfg: DemoV2Config) -> None:
        self.path = out / STATE_FILE
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        old = self.data.get("config")
        now = _jsonable(asdict(cfg))
        free = ("workers", "device")  # the machine may change between sittings; the build may not
        # (a parameter the build's own version did not have yet is not a change)
        changed = sorted(k for k in now if old and k in old and old[k] != now[k] and k not in free)
        if changed:
            raise SystemExit(f"{out} was built with other parameters ({', '.join(changed)}); "
                             "use a new --out directory (or delete this one) to build with these")
        self.data["config"] = now
        self.data.setdefault("stages", {s: {"status": "todo", "seconds": 0.0} for s in STAGES})
        self.data.setdefault("sittings", 0)
        self.data["sittings"] += 1
        self.save()

    def done(self, stage: str) -> bool:
        return self.data["stages"][stage]["status"] == "done"

    def run(self, stage: str, fn: Callable[[], dict[str, Any] | None], log: Callable[[str], object]) -> None:
        entry = self.data["stages"][stage]
        if entry["status"] == "done":
            log(f"[{stage}] done already ({entry['seconds']:.0f} s)")
            return
        entry["status"] = "running"
        self.save()
        t0 = time.perf_counter()
        try:
            extra = fn() or {}
        finally:  # an interrupted stage keeps the time it spent
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - t0, 1)
            self.save()
        entry.update(extra, status="done")
        self.data["total_seconds"] = round(sum(e["seconds"] for e in self.data["stages"].values()), 1)
        self.save()
        log(f"[{stage}] done in {entry['seconds']:.0f} s")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        tmp.replace(self.path)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=list))


# ---------------------------------------------------------------------------------------------- stages


def _workers(cfg: DemoV2Config) -> int:
    return cfg.workers or os.cpu_count() or 1


def _part_job(job: tuple[dict, str]) -> str:
    """Render one part unless its records are already on disk; returns the records file."""
    from inference.synthetic.corpus_v2 import _part_job as render_part

    part, out = job
    done = Path(out) / "parts" / f"{part['case_id']}.json"
    if done.is_file():
        return str(done)
    records = render_part(job)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, sort_keys=True))
    tmp.replace(done)  # written after every slide, mask and sidecar of the part
    return str(done)


def build_corpus(cfg: DemoV2Config, corpus: Path, log: Callable[[str], object]) -> dict[str, Any]:
    """Corpus v2, resumable part by part; the manifest and corpus.json as ``generate_corpus_v2`` writes them."""
    from inference.synthetic import corpus_v2 as cv2

    (corpus / "slides").mkdir(parents=True, exist_ok=True)
    (corpus / "parts").mkdir(parents=True, exist_ok=True)
    organs = list(cfg.organs) or None
    parts = cv2.plan_parts(cfg.cases, cfg.seed, organs, multi_share=cfg.multi_share, size=(cfg.size, cfg.size),
                           mpp=cfg.mpp)
    jobs = [(p, str(corpus)) for p in parts]
    todo = sum(not (corpus / "parts" / f"{p['case_id']}.json").is_file() for p in parts)
    log(f"[corpus] {len(parts)} parts, {todo} to render ({_workers(cfg)} processes)")
    t0 = time.perf_counter()
    n = min(_workers(cfg), max(todo, 1))
    if n <= 1:
        files = []
        for i, job in enumerate(jobs):
            files.append(_part_job(job))
            log(f"[corpus] {i + 1}/{len(jobs)} parts ({time.perf_counter() - t0:.0f} s)")
    else:
        with mp.get_context("spawn").Pool(n) as pool:
            files = []
            for i, f in enumerate(pool.imap(_part_job, jobs, chunksize=1)):
                files.append(f)
                if (i + 1) % max(1, len(jobs) // 20) == 0 or i + 1 == len(jobs):
                    log(f"[corpus] {i + 1}/{len(jobs)} parts ({time.perf_counter() - t0:.0f} s)")
    records = [r for f in files for r in json.loads(Path(f).read_text())]
    manifest = corpus / cv2.MANIFEST
    tmp = manifest.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    tmp.replace(manifest)
    params = {"corpus_version": cv2.VERSION, "cases": cfg.cases, "seed": cfg.seed, "size": [cfg.size, cfg.size],
              "mpp": cfg.mpp, "organs": list(organs or cv2.V2_ORGANS), "multi_share": cfg.multi_share,
              "mask_downsample": cv2.MASK_DOWNSAMPLE, "slides": len(records)}
    (corpus / "corpus.json").write_text(json.dumps(params, indent=1))
    splits: dict[str, int] = {}
    strata: dict[str, int] = {}
    for r in records:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
        strata[r["stratum"]] = strata.get(r["stratum"], 0) + 1
    return {"slides": len(records), "splits": splits, "strata": strata}


def build_training_corpus(cfg: DemoV2Config, corpus: Path, log: Callable[[str], object],
                          splits: Sequence[str] = ("train", "val")) -> dict[str, Any]:
    """More training slides for a build: the parts of another corpus (``cfg``: same generator, another seed)
    whose split is train or val, rendered and written as a corpus of their own (manifest of those parts only,
    resumable part by part). Its test and new-site parts are never rendered: they carry the held-out report
    templates and the held-out scanner profile, which no training slide may show. Its atlas is the seed's own,
    so no field is shared with the benchmark corpus's slides."""
    from inference.synthetic import corpus_v2 as cv2

    (corpus / "slides").mkdir(parents=True, exist_ok=True)
    (corpus / "parts").mkdir(parents=True, exist_ok=True)
    organs = list(cfg.organs) or None
    parts = [p for p in cv2.plan_parts(cfg.cases, cfg.seed, organs, multi_share=cfg.multi_share,
                                       size=(cfg.size, cfg.size), mpp=cfg.mpp) if p["split"] in splits]
    jobs = [(p, str(corpus)) for p in parts]
    log(f"[extra] {len(parts)} {'/'.join(splits)} parts of seed {cfg.seed} ({_workers(cfg)} processes)")
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(max(1, min(_workers(cfg), len(jobs)))) as pool:
        files = []
        for i, f in enumerate(pool.imap(_part_job, jobs, chunksize=1)):
            files.append(f)
            log(f"[extra] {i + 1}/{len(jobs)} parts ({time.perf_counter() - t0:.0f} s)")
    records = [r for f in files for r in json.loads(Path(f).read_text())]
    with open(corpus / cv2.MANIFEST, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    params = {"corpus_version": cv2.VERSION, "cases": cfg.cases, "seed": cfg.seed, "size": [cfg.size, cfg.size],
              "mpp": cfg.mpp, "organs": list(organs or cv2.V2_ORGANS), "multi_share": cfg.multi_share,
              "mask_downsample": cv2.MASK_DOWNSAMPLE, "slides": len(records), "splits_rendered": list(splits)}
    (corpus / "corpus.json").write_text(json.dumps(params, indent=1))
    return {"slides": len(records), "seconds": round(time.perf_counter() - t0, 1)}


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def build_augmented_corpus(source: Path, corpus: Path, splits: Sequence[str] = ("train",)) -> dict[str, Any]:
    """A corpus that is a view of ``source``'s slides of ``splits`` (its files linked, not copied): the
    manifest of those records only, for an extra feature copy of them (``demo_v2 augment``). Held-out
    slides are never in it."""
    from inference.synthetic import corpus_v2 as cv2

    corpus.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name in (cv2.MANIFEST, "corpus.json", "parts") or entry.name.startswith("features"):
            continue
        link = corpus / entry.name
        if not link.exists():
            link.symlink_to(entry.resolve())
    lines = [ln for ln in (source / cv2.MANIFEST).read_text().splitlines()
             if ln.strip() and json.loads(ln)["split"] in splits]
    (corpus / cv2.MANIFEST).write_text("\n".join(lines) + "\n")
    params = json.loads((source / "corpus.json").read_text()) | {"view_of": str(source.resolve()),
                                                               "splits_rendered": list(splits),
                                                               "slides": len(lines)}
    (corpus / "corpus.json").write_text(json.dumps(params, indent=1))
    return {"slides": len(lines)}


def build_features(cfg: DemoV2Config, corpus: Path, features: Path, log: Callable[[str], object],
                   augmentation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every tissue patch's features; ``augmentation`` (an `augment.ScannerJitter` dict): from jittered
    patches, a training copy."""
    from inference.augment import build_training_encoder
    from inference.evaluate import extract_v2_features
    from inference.features import load_feature_index

    device = _device(cfg.device)
    spec = {"kind": "builtin", **({"augmentation": augmentation} if augmentation else {})}
    encoder = build_training_encoder(spec, device=device)
    # On CUDA, decoding in processes (no GIL) keeps the encoder fed; on the CPU one process per core, each
    # with one torch thread, batch 16 and a reading thread (same features; no intra-op oversubscription).
    cuda = device == "cuda"
    extract_v2_features(corpus, encoder, features, workers=_workers(cfg), batch_size=512 if cuda else 16, log=log,
                        readers="processes" if cuda else "threads", processes=0 if cuda else _workers(cfg))
    rows = load_feature_index(features)
    n = sum(int(r["n_patches"]) for r in rows)
    return {"slides": len(rows), "patches": n, "patches_per_slide": n / max(len(rows), 1), "device": device,
            "encoder": encoder.spec.get("name", "builtin")}


def train_config(cfg: DemoV2Config) -> Any:
    from inference.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in asdict(cfg).items() if k in names}
    kw.update(seed=cfg.seed, device=_device(cfg.device), max_patches=cfg.max_patches or None,
              freeze_word_embeddings=True, num_workers=min(4, _workers(cfg)),
              threads=None if _device(cfg.device) == "cuda" else _workers(cfg))
    return TrainConfig(**kw)


def build_bundle(cfg: DemoV2Config, corpus: Path, features: Path, bundle: Path,
                 log: Callable[[str], object], stop_after: int | None = None) -> dict[str, Any]:
    import torch

    from inference.bundle import save_bundle
    from inference.demo import encoder_fingerprint
    from inference.encoders import build_encoder
    from inference.qformer import default_text_model_dir
    from inference.train import load_examples, train_stage1

    examples, encoder_spec = load_examples(corpus, features, seed=cfg.seed, stream=True, parts=cfg.parts,
                                           header=cfg.header, own_text=cfg.own_text)
    for extra in cfg.extra_corpora:
        more, spec = load_examples(Path(extra) / "corpus", Path(extra) / "corpus" / FEATURES, seed=cfg.seed,
                                   stream=True, parts=cfg.parts, header=cfg.header, own_text=cfg.own_text)
        if spec.get("name") != encoder_spec.get("name") or spec.get("tiling") != encoder_spec.get("tiling"):
            raise ValueError(f"{extra}: features of another encoder or tiling")
        examples += [e for e in more if e.split in ("train", "val")]
    tcfg = train_config(cfg)
    log(f"[train] {sum(e.split == 'train' for e in examples)} training {'parts' if cfg.parts else 'slides'}, "
        f"{tcfg.epochs} epochs, "
        f"device {tcfg.device}")
    model, tokenizer, history = train_stage1(examples, tcfg, bundle.parent / "checkpoints", resume=True,
                                             progress=sys.stderr.isatty(), stop_after=stop_after)
    for e in history["epochs"]:
        log(f"[train] epoch {e['epoch']}: train {e['train']} val {e['val']} ({e['seconds']} s)")
    save_bundle(bundle, model.cpu(), tokenizer, encoder_spec, name="pathalign-demo-v2", version=cfg.version,
                training={**history["data"], "best_val_loss": history["best_val_loss"], "config": history["config"],
                          "epochs": history["epochs"], "corpus": json.loads((corpus / "corpus.json").read_text())},
                reference_text_dir=default_text_model_dir(), storage_dtype=torch.bfloat16,
                extra={"encoder_fingerprint": encoder_fingerprint(build_encoder(encoder_spec))})
    return {"epochs": len(history["epochs"]), "best_val_loss": history["best_val_loss"]}


def evaluate_bundle(cfg: DemoV2Config, corpus: Path, features: Path, bundle: Path, out: Path,
                    log: Callable[[str], object]) -> dict[str, Any]:
    from inference.bundle import CONFIG_FILE, EVAL_FILE, write_eval
    from inference.evaluate import _bench_slides, benchmark_v2, choose_heatmap_attention, format_benchmark
    from inference.pathalign import PathAlign

    model = PathAlign.load(bundle, device=_device(cfg.device))
    extra = [(Path(x) / "corpus", Path(x) / "corpus" / FEATURES) for x in cfg.extra_corpora]
    # The heatmap's attention, chosen on the validation slides' lesion masks (never on a held-out set).
    val = [s for c, f in [(corpus, features), *extra] for s in _bench_slides(c, f) if s["split"] == "val"]
    heatmap = choose_heatmap_attention(model, val)
    log(f"[evaluate] heatmap attention: {heatmap['heatmap_attention']} (validation localisation AUC "
        f"{heatmap['localisation_auc']} on {heatmap['slides']} lesion slides)")
    # Into bundle.json, and into the loaded model's config (which `PathAlign.attention_from` reads): no reload.
    model.bundle.config.update(heatmap_attention=heatmap["heatmap_attention"], heatmap_attention_chosen_on=heatmap)
    config = json.loads((bundle / CONFIG_FILE).read_text())
    config |= {"heatmap_attention": heatmap["heatmap_attention"], "heatmap_attention_chosen_on": heatmap}
    (bundle / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    compare = {}
    for path in cfg.compare_bundles:
        other = PathAlign.load(path, device=_device(cfg.device))
        compare[f"{other.spec['name']} {other.spec['version']} (zero-shot)"] = other
    result = benchmark_v2(corpus, features, model, cv_folds=cfg.cv_folds, seed=cfg.seed, mil_epochs=cfg.mil_epochs,
                          log=log, extra_train=extra, compare=compare, drafts=True)
    table = format_benchmark(result)
    log(table)
    (out / "benchmark-v2.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "benchmark-v2.txt").write_text(table + "\n")
    ev = bundle / EVAL_FILE
    current = json.loads(ev.read_text()) if ev.is_file() else {}
    write_eval(bundle, current | {"benchmark_v2": result})
    return {"headline": headline(result), "heatmap_attention": heatmap}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures from a benchmark result: per set and method, malignant AUC by focal stratum,
    focal diagnosis balanced accuracy and localisation AUC."""
    out: dict[str, Any] = {}
    for name, methods in result["protocols"].get("held-out", {}).items():
        for method, figs in methods.items():
            row = {}
            for stratum in ("<1%", "1-5%", "<5%", "all"):
                f = figs.get(stratum) or {}
                for key in ("malignant_auc", "diagnosis_balanced_accuracy", "localisation_auc"):
                    if key in f:
                        row[f"{stratum} {key}"] = f[key]
            out.setdefault(name, {})[method] = row
    return out


def build(out: str | os.PathLike, cfg: DemoV2Config, log: Callable[[str], object] | None = None,
          until: str | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the build in ``out``; ``until``: stop after that stage; ``stop_after``: end training
    after that many epochs in all (the schedule still spans ``cfg.epochs``; the best epoch so far is saved, and
    the stage is done: a training cut short for time). Returns build.json's content."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(out)
    state = BuildState(out, cfg)
    corpus, bundle = out / "corpus", out / "bundle"
    features = corpus / FEATURES
    steps: list[tuple[str, Callable[[], dict[str, Any] | None]]] = [
        ("corpus", lambda: build_corpus(cfg, corpus, log)),
        ("features", lambda: build_features(cfg, corpus, features, log)),
        ("train", lambda: build_bundle(cfg, corpus, features, bundle, log, stop_after)),
        ("evaluate", lambda: evaluate_bundle(cfg, corpus, features, bundle, out, log)),
    ]
    for name, fn in steps:
        state.run(name, fn, log)
        if name == until:
            break
    return state.data


def _yes_no(text: str) -> bool:
    if text.lower() in ("yes", "true", "1", "on"):
        return True
    if text.lower() in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, not {text!r}")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run or resume the build")
    b.add_argument("--out", required=True)
    b.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    b.add_argument("--until", choices=STAGES, help="stop after this stage")
    b.add_argument("--stop-after", type=int, help="end training after this many epochs in all (resumes the "
                   "checkpoint; the best epoch so far becomes the bundle)")
    defaults = DemoV2Config()
    for f in fields(DemoV2Config):
        value = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, tuple):
            b.add_argument(flag, nargs="*", default=None)
        elif isinstance(value, bool):
            b.add_argument(flag, type=_yes_no, default=None, metavar="yes|no")
        else:
            b.add_argument(flag, type=type(value), default=None)
    x = sub.add_parser("extra", help="render the train/val parts of another seed and extract their features "
                                     "(extra training slides for a build; see build_training_corpus)")
    x.add_argument("--out", required=True)
    x.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    x.add_argument("--seed", type=int, required=True)
    x.add_argument("--cases", type=int)
    a = sub.add_parser("augment", help="an extra feature copy of a build's training slides, encoded from "
                                       "stain- and scanner-jittered patches (augment.ScannerJitter)")
    a.add_argument("--source", required=True, help="a build or extra directory (its corpus/ is read)")
    a.add_argument("--out", required=True)
    a.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    a.add_argument("--seed", type=int, default=1, help="the jitter's seed (one per copy)")
    a.add_argument("--splits", nargs="+", default=["train"])
    s = sub.add_parser("status", help="print build.json")
    s.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.command == "status":
        path = Path(args.out) / STATE_FILE
        if not path.is_file():
            print(f"no build in {args.out}", file=sys.stderr)
            return 1
        print(path.read_text())
        return 0
    if args.command == "extra":
        cfg = preset(args.preset, seed=args.seed, **({"cases": args.cases} if args.cases else {}))
        out = Path(args.out)
        info = build_training_corpus(cfg, out / "corpus", _stderr)
        info["features"] = build_features(cfg, out / "corpus", out / "corpus" / FEATURES, _stderr)
        (out / "extra.json").write_text(json.dumps(info, indent=1, default=float))
        return 0
    if args.command == "augment":
        from inference.augment import ScannerJitter

        cfg = preset(args.preset)
        out = Path(args.out)
        jitter = ScannerJitter(seed=args.seed)
        info = build_augmented_corpus(Path(args.source) / "corpus", out / "corpus", args.splits)
        t0 = time.perf_counter()
        info["features"] = build_features(cfg, out / "corpus", out / "corpus" / FEATURES, _stderr,
                                          augmentation=jitter.to_dict())
        info |= {"augmentation": jitter.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
        (out / "extra.json").write_text(json.dumps(info, indent=1, default=float))
        return 0
    overrides = {f.name: getattr(args, f.name) for f in fields(DemoV2Config) if getattr(args, f.name) is not None}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    cfg = preset(args.preset, **overrides)
    data = build(args.out, cfg, until=args.until, stop_after=args.stop_after)
    print(json.dumps({k: data[k] for k in ("stages", "total_seconds") if k in data}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
