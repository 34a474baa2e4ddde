"""Training a new bundle from the archive's signed-out cases, and comparing it with the active one.

The job (queue "gpu") takes (slide, text) pairs from the registered pair source (the reports app registers
"each signed-out part's reported text with the slides of that part"; this app knows nothing of reports),
reads the slides' cached patch features under the active bundle's
encoder, trains the Q-Former with `inference.train.train_stage1` one epoch at a time (a checkpoint after
each, so a killed worker's retry resumes), writes a bundle next to the others, and measures both the new
and the active bundle on the same held-out cases. The new bundle is registered inactive: a lab admin reads
the comparison and decides whether to switch (the gate: `pipeline.activation_gate`).

Classes: each case's class is the diagnosis category its report states (`TrainingPair.label`) when every case
has one, else its part's organ (`cases.Part.organ`). Training is offered only with at least
TRAIN_MIN_CASES_PER_CLASS signed-out cases in every class (`training_readiness`). The held-out cases are a
deterministic, per-class share of the cases (`heldout_cases`): both bundles are measured on exactly them.
"""
from __future__ import annotations

import hashlib
import math
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

from webapp.cases.models import Part
from webapp.jobs.models import Job
from webapp.jobs.runner import JobFailed, Progress, create_job, job_handler
from webapp.slides.models import Slide

from . import runtime
from .models import ModelBundle
from .pipeline import BundleInvalid, register_bundle

TRAIN = "train_bundle"
HOLDOUT_SHARE = 0.2  # of each class's cases (at least one, and at least one left to train on)
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class TrainingPair:
    slide_id: str
    text: str
    case_id: int
    part_id: int | None
    label: str = ""  # the case's reported diagnosis category, where the report states one


PairSource = Callable[[], list[TrainingPair]]
# Where the pairs come from: registered from above (webapp.reports); tests point it at a synthetic corpus.
pair_source: PairSource | None = None


def register_pair_source(source: PairSource) -> None:
    global pair_source
    pair_source = source


def queue_training(user, name: str, version: str, config: dict | None = None) -> Job:
    with transaction.atomic():
        return create_job(TRAIN, user=user, params={"name": name, "version": version, "config": config or {}})


# --- classes, the minimum, the held-out cases ------------------------------------------------------------
def case_classes(pairs: list[TrainingPair]) -> tuple[str, dict[int, str]]:
    """(basis, {case id: class}): the reported diagnosis category when every case has one, else the organ."""
    labels: dict[int, str] = {}
    for pair in pairs:
        if pair.label:
            labels.setdefault(pair.case_id, pair.label)
    cases = {pair.case_id for pair in pairs}
    if cases and set(labels) == cases:
        return "diagnosis category", labels
    organ_of = dict(Part.objects.filter(pk__in={p.part_id for p in pairs if p.part_id}).values_list("pk", "organ"))
    organs: dict[int, str] = {}
    for pair in pairs:
        organs.setdefault(pair.case_id, organ_of.get(pair.part_id) or "organ unknown")
    return "organ", organs


@dataclass(frozen=True)
class Readiness:
    """Whether training may be offered: signed-out cases per class against the minimum."""

    basis: str  # "diagnosis category" or "organ"
    counts: dict[str, int]  # cases per class
    minimum: int

    @property
    def missing(self) -> dict[str, int]:
        return {label: self.minimum - n for label, n in self.counts.items() if n < self.minimum}

    @property
    def ok(self) -> bool:
        return bool(self.counts) and not self.missing

    def lines(self) -> list[str]:
        """One plain line per class: "colon: 5 cases", "stomach: 3 cases (2 more needed)"."""
        missing = self.missing
        return [f"{label}: {n} case{'s' if n != 1 else ''}" + (f" ({missing[label]} more needed)"
                                                                if label in missing else "")
                for label, n in sorted(self.counts.items())]

    def summary(self) -> str:
        if not self.counts:
            return (f"No signed-out cases with slides yet; training needs at least {self.minimum} signed-out "
                    "cases per class.")
        verdict = "enough to train" if self.ok else "not enough to train"
        return (f"Signed-out cases per {self.basis}: {'; '.join(self.lines())}. Training needs at least "
                f"{self.minimum} signed-out cases per class: {verdict}.")


def training_readiness(pairs: list[TrainingPair] | None = None) -> Readiness:
    if pairs is None:
        if pair_source is None:
            raise ImproperlyConfigured("No training pair source is registered (webapp.reports registers one).")
        pairs = pair_source()
    basis, classes = case_classes(pairs)
    counts: dict[str, int] = {}
    for label in classes.values():
        counts[label] = counts.get(label, 0) + 1
    return Readiness(basis, counts, settings.TRAIN_MIN_CASES_PER_CLASS)


def heldout_cases(classes: dict[int, str], seed: int = HOLDOUT_SEED) -> set[int]:
    """The held-out cases: per class, HOLDOUT_SHARE of its cases (at least one, never all of them), picked by
    a hash of the case id, so the same archive always gives the same set whatever the order."""
    by_class: dict[str, list[int]] = {}
    for case, label in classes.items():
        by_class.setdefault(label, []).append(case)
    held: set[int] = set()
    for cases in by_class.values():
        if len(cases) < 2:
            continue
        ranked = sorted(cases, key=lambda c: hashlib.sha256(f"{seed}:case-{c}".encode()).hexdigest())
        held.update(ranked[: min(len(cases) - 1, max(1, math.ceil(HOLDOUT_SHARE * len(cases))))])
    return held


# --- the held-out figures --------------------------------------------------------------------------------
def heldout_figures(model, examples, labels: list[str] | None = None) -> dict:
    """What `model` scores on the held-out examples (each with record["label"] where classes exist):

    slide -> report: of the held-out slides, how many rank their own report's text first (R@1) and in the
    first five (R@5) among the held-out texts (query-max similarity, as ITC; slides of one part share a text,
    counted once); report -> slide the same way; and the label accuracy: zero-shot classification over
    `labels` (the class names as prompts), how many slides get their case's class.
    """
    n = len(examples)
    if n < 2:
        return {"n": n}
    texts = sorted({e.text for e in examples})
    target = np.array([texts.index(e.text) for e in examples])
    queries = np.stack([model.embed(e.features).queries for e in examples])  # [M, Q, E]
    text_emb = model.embed_text(texts)  # [T, E]
    sim = np.einsum("mqe,te->mtq", queries, text_emb).max(axis=2)  # [slides, texts]
    order = np.argsort(-sim, axis=1, kind="stable")
    rank = np.argmax(order == target[:, None], axis=1)  # 0 = its own text first
    t_order = np.argsort(-sim.T, axis=1, kind="stable")  # [texts, slides]
    t_rank = np.array([min(int(np.nonzero(t_order[t] == s)[0][0]) for s in np.nonzero(target == t)[0])
                       for t in range(len(texts))])
    figures: dict = {"n": n, "texts": len(texts)}
    for k in (1, 5):
        figures[f"i2t_r{k}_hits"] = int((rank < k).sum())
        figures[f"i2t_r{k}"] = figures[f"i2t_r{k}_hits"] / n
        figures[f"t2i_r{k}_hits"] = int((t_rank < k).sum())
        figures[f"t2i_r{k}"] = figures[f"t2i_r{k}_hits"] / len(texts)
    labels = sorted(set(labels or []))
    if len(labels) >= 2 and all(e.record.get("label") for e in examples):
        prompts = {label: [label] for label in labels}
        correct = 0
        for e in examples:
            scores = model.classify(e.features, prompts)
            correct += int(max(scores, key=scores.get) == e.record["label"])
        figures.update({"labels": labels, "label_hits": correct, "label_accuracy": correct / n})
    return figures


def _bundle_dir(name: str, version: str) -> Path:
    return Path(settings.MODEL_BUNDLE_DIR) / f"{slugify(name)}-{slugify(version)}"


@job_handler(TRAIN, queue="gpu", time_limit=settings.TRAIN_TIME_LIMIT)
def train_bundle_job(job: Job, progress: Progress) -> dict:
    import torch  # the model library loads only in the worker that trains (see runtime's docstring)

    from inference.bundle import save_bundle, write_eval
    from inference.train import Example, TrainConfig, train_stage1

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
    readiness = training_readiness(pairs)
    if not readiness.ok:
        raise JobFailed(readiness.summary())
    basis, classes = case_classes(pairs)
    held_cases = heldout_cases(classes)
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
        split = "test" if pair.case_id in held_cases else "train"
        label = classes[pair.case_id]
        examples.append(Example(feats.features, pair.text, {"split": split, "slide": str(slide.pk),
                                                            "case": pair.case_id, "label": label,
                                                            "diagnosis": label}))
    heldout = [e for e in examples if e.split == "test"]
    if sum(e.split == "train" for e in examples) < 2 or len({e.record["case"] for e in heldout}) < 2:
        raise JobFailed("Too few readable slides on one side of the held-out line (at least two cases each).")
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
    labels = sorted(set(classes.values()))
    with torch.no_grad():
        new_figures = heldout_figures(runtime.load_model(staging, runtime.device()), heldout, labels)
        base_figures = heldout_figures(runtime.get_model(base), heldout, labels)
    held_ids = sorted({e.record["case"] for e in heldout})
    per_class: dict[str, int] = {}
    for case in held_ids:
        per_class[classes[case]] = per_class.get(classes[case], 0) + 1
    comparison = {"heldout_cases": len(held_ids), "heldout_case_ids": held_ids,
                  "heldout_slides": [e.record["slide"] for e in heldout], "class_basis": basis,
                  "heldout_per_class": per_class, "new": new_figures, "active": base_figures,
                  "active_bundle": str(base), "active_bundle_key": base.key, "active_bundle_id": base.pk}
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
