"""Training a new bundle from the archive's signed-out cases, and comparing it with the active one.

The job (queue "gpu") takes (slide, text) pairs from the registered pair source (the reports app registers
"each signed-out part's reported text with the slides of that part"; this app knows nothing of reports),
reads the slides' cached patch features under the active bundle's
encoder, trains the Q-Former with `inference.train.train_stage1` one epoch at a time (a checkpoint after
each, so a killed worker's retry resumes), writes a bundle next to the others, and measures both the new
and the active bundle on the same held-out cases. The new bundle is registered inactive: a lab admin reads
the comparison and decides whether to switch.
"""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from webapp.jobs.models import Job
from webapp.jobs.runner import JobFailed, Progress, create_job, job_handler
from webapp.slides.models import Slide

from . import runtime
from .models import ModelBundle
from .pipeline import BundleInvalid, register_bundle

TRAIN = "train_bundle"
MIN_PAIRS = 8


@dataclass(frozen=True)
class TrainingPair:
    slide_id: str
    text: str
    case_id: int
    part_id: int | None


PairSource = Callable[[], list[TrainingPair]]
# Where the pairs come from: registered from above (webapp.reports); tests point it at a synthetic corpus.
pair_source: PairSource | None = None


def register_pair_source(source: PairSource) -> None:
    global pair_source
    pair_source = source


def queue_training(user, name: str, version: str, config: dict | None = None) -> Job:
    with transaction.atomic():
        return create_job(TRAIN, user=user, params={"name": name, "version": version, "config": config or {}})


def heldout_figures(model, examples) -> dict:
    """Paired retrieval on held-out examples: recall@1/5 both ways (query-max similarity, as ITC)."""
    from inference import metrics  # numpy and torch: loaded in the training worker only

    if len(examples) < 2:
        return {"n": len(examples)}
    queries = np.stack([model.embed(e.features).queries for e in examples])  # [M, Q, E]
    texts = model.embed_text([e.text for e in examples])  # [M, E]
    sim = np.einsum("mqe,ne->mnq", queries, texts).max(axis=2)  # [slides, texts]
    i2t = metrics.recall_at_k(sim, ks=(1, 5))
    t2i = metrics.recall_at_k(sim.T, ks=(1, 5))
    return {"n": len(examples), "i2t_r1": i2t["R@1"], "i2t_r5": i2t["R@5"], "t2i_r1": t2i["R@1"],
            "t2i_r5": t2i["R@5"]}


def _bundle_dir(name: str, version: str) -> Path:
    return Path(settings.MODEL_BUNDLE_DIR) / f"{slugify(name)}-{slugify(version)}"


@job_handler(TRAIN, queue="gpu", time_limit=settings.TRAIN_TIME_LIMIT)
def train_bundle_job(job: Job, progress: Progress) -> dict:
    import torch  # the model library loads only in the worker that trains (see runtime's docstring)

    from inference.bundle import save_bundle, write_eval
    from inference.train import Example, TrainConfig, assign_split, train_stage1

    name = str(job.params.get("name") or "pathalign-local")[:100]
    version = str(job.params.get("version") or timezone.now().strftime("%Y%m%d-%H%M"))[:40]
    existing = ModelBundle.objects.filter(name=name, version=version).first()
    if existing is not None:
        if existing.training.get("source", "").endswith(f"(job {job.pk})"):  # a retry after registration
            return {"bundle": existing.pk, "bundle_name": str(existing),
                    "comparison": existing.eval_figures.get("heldout_comparison", {})}
        raise JobFailed(f"A bundle named {name} {version} already exists; choose another version.")
    base = runtime.active_bundle()
    if base is None:
        raise JobFailed("Training reads the patch features of the active bundle's encoder: activate one first.")
    if pair_source is None:
        raise ImproperlyConfigured("No training pair source is registered (webapp.reports registers one).")
    pairs = pair_source()
    if len(pairs) < MIN_PAIRS:
        raise JobFailed(f"Only {len(pairs)} slide/report pairs from signed-out cases; at least {MIN_PAIRS} needed.")
    overrides = {k: v for k, v in (job.params.get("config") or {}).items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**overrides)
    slides = Slide.objects.in_bulk([p.slide_id for p in pairs])
    examples = []
    for i, pair in enumerate(pairs):
        slide = slides.get(pair.slide_id) or slides.get(_uuid(pair.slide_id))
        if slide is None:
            continue
        progress(0.3 * i / len(pairs), f"Patch features {i + 1}/{len(pairs)}")
        try:
            feats = runtime.slide_features(slide, base)
        except (ValueError, OSError):
            continue  # an unreadable slide is left out, not the whole training
        if len(feats) == 0:
            continue
        # Split by case, so no case has slides on both sides of the held-out line.
        split = assign_split(f"case-{pair.case_id}", cfg.seed)
        examples.append(Example(feats.features, pair.text, {"split": split, "slide": str(slide.pk),
                                                            "case": pair.case_id}))
    held = {e.record["case"] for e in examples if e.split == "test"}
    train_cases = sorted({e.record["case"] for e in examples if e.split == "train"})
    if len(held) < 2 and len(train_cases) >= 4:
        # A small archive can leave the test split (nearly) empty: hold out two cases so a comparison exists.
        for case in train_cases[-(2 - len(held)):]:
            for e in examples:
                if e.record["case"] == case:
                    e.record["split"] = "test"
    if sum(e.split == "train" for e in examples) < 2:
        raise JobFailed("Too few usable training slides after the held-out split.")
    work = Path(settings.VAR_DIR) / "training" / f"job-{job.pk}"
    history: dict = {}
    for epoch in range(1, cfg.epochs + 1):  # one epoch per call: progress, and resume after a crash
        model, tokenizer, history = train_stage1(examples, cfg, work / "checkpoints", resume=True,
                                                 progress=False, stop_after=epoch)
        progress(0.3 + 0.55 * epoch / cfg.epochs, f"Trained epoch {epoch}/{cfg.epochs}")
    out = _bundle_dir(name, version)
    staging = out.with_name(out.name + f".tmp-{job.pk}")
    shutil.rmtree(staging, ignore_errors=True)
    training = {**history.get("data", {}), "best_val_loss": history.get("best_val_loss"),
                "config": asdict(cfg), "source": f"archive: {len(examples)} signed-out slides (job {job.pk})"}
    save_bundle(staging, model.cpu(), tokenizer, base.encoder, name=name, version=version, training=training)
    progress(0.9, "Comparing with the active bundle on held-out cases")
    heldout = [e for e in examples if e.split == "test"]
    with torch.no_grad():
        new_figures = heldout_figures(runtime.load_model(staging, runtime.device()), heldout)
        base_figures = heldout_figures(runtime.get_model(base), heldout)
    comparison = {"heldout_cases": len({e.record["case"] for e in heldout}), "new": new_figures,
                  "active": base_figures, "active_bundle": str(base)}
    write_eval(staging, {"heldout_comparison": comparison})
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    try:
        bundle = register_bundle(out, user=job.created_by)
    except BundleInvalid as exc:
        raise JobFailed(f"The trained bundle could not be registered: {exc}") from None
    shutil.rmtree(work, ignore_errors=True)
    return {"bundle": bundle.pk, "bundle_name": str(bundle), "examples": len(examples), "comparison": comparison}


def _uuid(value: str):
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
