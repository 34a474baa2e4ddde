"""The analysis pipeline: model bundles, embedding slides into pgvector, and the jobs that do it.

Plain functions that tests call directly; the job handlers at the bottom are what the Celery workers run.
Results are written only at the end of a job, in one transaction (delete-and-insert under a row lock on
the slide), so a slide's job run twice leaves one set of rows and a killed job leaves none.
"""
from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.dispatch import receiver
from django.utils import timezone

from webapp.jobs import runner as jobs
from webapp.jobs.models import ACTIVE_STATES, Job
from webapp.jobs.runner import JobFailed, Progress, create_job, job_handler
from webapp.slides.models import Slide
from webapp.slides.resolution import known_q, resolution_set
from webapp.slides.signals import slide_stored

from . import runtime
from .models import EMBED_DIM, ModelBundle, QueryEmbedding, SlideEmbedding
from .signals import slide_analysed

log = logging.getLogger(__name__)
ANALYZE = "analyze_slide"
REEMBED = "reembed_archive"
QUEUE_BATCH = 500


class BundleInvalid(ValueError):
    """The directory is not a bundle this app can use; the message says why, for the lab admin."""


# --- bundles -----------------------------------------------------------------------------------------
def inspect_bundle(path: str | os.PathLike) -> dict:
    """Check that `path` holds a loadable PathAlign bundle we can store; return its description.

    Loads it once (on the CPU) so a broken bundle is refused here, not later in every job.
    """
    directory = Path(path).expanduser()
    if not directory.is_absolute():
        raise BundleInvalid("Give the bundle's absolute path on the server.")
    if not directory.is_dir():
        raise BundleInvalid(f"{directory} is not a directory on the server.")
    try:
        config = runtime.read_bundle_config(directory)
    except (FileNotFoundError, ValueError) as exc:
        raise BundleInvalid(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. invalid JSON: tell the admin, not a 500
        raise BundleInvalid(f"bundle.json could not be read: {exc}") from None
    embed = (config.get("dims") or {}).get("embed")
    if embed != EMBED_DIM:
        raise BundleInvalid(f"The bundle makes {embed}-d embeddings; this app stores {EMBED_DIM}-d vectors.")
    try:
        model = runtime.load_model(directory, device="cpu")
        spec, figures = model.spec, model.eval_figures
    except Exception as exc:  # noqa: BLE001 - missing weights, wrong shapes, bad tokenizer ...
        raise BundleInvalid(f"The bundle does not load: {type(exc).__name__}: {exc}") from None
    return {
        "path": str(directory.resolve()),
        "name": str(spec["name"])[:100],
        "version": str(spec["version"])[:40],
        "variant": str(spec.get("variant") or "")[:4],
        "encoder": spec.get("encoder") or {},
        "dims": spec.get("dims") or {},
        "eval_figures": figures or {},
        "training": _training_summary(config.get("training") or {}),
    }


def _training_summary(training: dict) -> dict:
    # The per-epoch history can be long; keep what the model page shows.
    keep = ("slides", "bags", "bag", "splits", "train_diagnoses", "patches_per_slide", "patches_per_bag",
            "feature_dim", "best_val_loss", "source")
    return {key: training[key] for key in keep if key in training}


def register_bundle(path: str | os.PathLike, user=None, activate: bool = False) -> ModelBundle:
    """Validate and record a bundle directory; optionally make it the active one."""
    info = inspect_bundle(path)
    if ModelBundle.objects.filter(path=info["path"]).exists():
        raise BundleInvalid(f"{info['path']} is already registered.")
    if ModelBundle.objects.filter(name=info["name"], version=info["version"]).exists():
        raise BundleInvalid(f"A bundle named {info['name']} {info['version']} is already registered.")
    try:
        with transaction.atomic():
            bundle = ModelBundle.objects.create(registered_by=user, **info)
    except IntegrityError:
        raise BundleInvalid("That bundle was registered at the same moment by someone else.") from None
    if activate:
        activate_bundle(bundle)
    return bundle


def refresh_eval(bundle: ModelBundle) -> ModelBundle:
    bundle.eval_figures = runtime.read_eval(bundle.path)
    bundle.save(update_fields=["eval_figures"])
    return bundle


def activate_bundle(bundle: ModelBundle) -> ModelBundle:
    """Make `bundle` the one active bundle (the partial unique index allows no second). Unchecked: for
    seeding, the demo and tests; a lab admin's "Make active" goes through the gate (`make_active`)."""
    with transaction.atomic():
        ModelBundle.objects.filter(is_active=True).exclude(pk=bundle.pk).update(is_active=False)
        ModelBundle.objects.filter(pk=bundle.pk).update(is_active=True)
    bundle.refresh_from_db()
    return bundle


# --- the flywheel's gate -----------------------------------------------------------------------------
OVERRIDE_MIN_CHARS = 10  # an override's written reason: a sentence, not "ok"


def _points(fraction: float) -> int:
    return round(abs(fraction) * 100)


def _n_of(figures: dict, key: str) -> str:
    hits = figures.get(f"{key}_hits")
    if hits is None and figures.get(key) is not None and figures.get("n"):
        hits = round(figures[key] * figures["n"])
    return f"{hits} of {figures.get('n', '?')}"


def comparison_lines(comparison: dict | None, active_label: str = "the active one") -> list[str]:
    """The held-out comparison in plain words, one sentence per figure, new bundle first."""
    if not comparison:
        return []
    new, old = comparison.get("new") or {}, comparison.get("active") or {}
    if new.get("i2t_r1") is None or old.get("i2t_r1") is None:
        return [f"Only {new.get('n', 0)} held-out slides: too few to compare."]
    lines = []
    rows = [("i2t_r1", "finds the right report first for", "held-out slides"),
            ("i2t_r5", "has the right report among its first five for", "held-out slides"),
            ("label_accuracy", f"names the right {comparison.get('class_basis') or 'class'} for", "held-out slides")]
    for key, verb, what in rows:
        if new.get(key) is None or old.get(key) is None:
            continue
        delta = new[key] - old[key]
        verdict = ("the same" if _points(delta) == 0 else
                   f"{'better' if delta > 0 else 'worse'} by {_points(delta)} points")
        lines.append(f"The new bundle {verb} {_n_of(new, key)} {what}; {active_label} for {_n_of(old, key)}: "
                     f"{verdict}.")
    return lines


@dataclass(frozen=True)
class Gate:
    """Whether "Make active" may switch to a bundle without an override, and why (in plain words)."""

    allowed: bool
    reason: str
    new_r1: float | None = None
    active_r1: float | None = None
    margin: float = 0.0
    compared_with: str = ""

    def details(self) -> dict:
        """What the audit event records."""
        return {"gate": self.reason, "new_r1": self.new_r1, "active_r1": self.active_r1, "margin": self.margin,
                "compared_with": self.compared_with}


class ActivationRefused(Exception):
    def __init__(self, gate: Gate):
        super().__init__(gate.reason)
        self.gate = gate


def activation_gate(bundle: ModelBundle, active: ModelBundle | None = None) -> Gate:
    """The rule: with no active bundle, or for the active one itself, nothing to compare. Otherwise the
    bundle's held-out comparison (written by the training job) must be against the bundle active now, and
    its slide -> report R@1 may be below the active bundle's by at most BUNDLE_MAX_REGRESSION. Anything else
    needs an override with a written reason."""
    margin = float(settings.BUNDLE_MAX_REGRESSION)
    active = active if active is not None else ModelBundle.objects.filter(is_active=True).first()
    if active is None:
        return Gate(True, "No bundle is active yet, so there is nothing to compare it with.", margin=margin)
    if active.pk == bundle.pk:
        return Gate(True, "This bundle is the active one.", margin=margin)
    stated = f"the margin is {_points(margin)} points of R@1"
    comparison = (bundle.eval_figures or {}).get("heldout_comparison") or {}
    new, old = comparison.get("new") or {}, comparison.get("active") or {}
    if not comparison:
        return Gate(False, f"This bundle has no held-out comparison with the active bundle {active.key} (it was "
                           "registered from disk, not trained here): making it active needs an override with "
                           "a reason.", margin=margin)
    compared_with = str(comparison.get("active_bundle_key") or comparison.get("active_bundle") or "")
    if comparison.get("active_bundle_id") != active.pk:
        return Gate(False, f"This bundle was compared with {compared_with or 'another bundle'}, but {active.key} "
                           "is active now: making it active needs an override with a reason.",
                    margin=margin, compared_with=compared_with)
    new_r1, old_r1 = new.get("i2t_r1"), old.get("i2t_r1")
    if new_r1 is None or old_r1 is None:
        return Gate(False, f"The held-out set ({new.get('n', 0)} slides) was too small to compare: making it "
                           "active needs an override with a reason.", margin=margin, compared_with=compared_with)
    delta = float(new_r1) - float(old_r1)
    figures = {"new_r1": float(new_r1), "active_r1": float(old_r1), "margin": margin,
               "compared_with": compared_with}
    if delta < -margin - 1e-9:
        return Gate(False, f"On the held-out cases the new bundle finds the right report first for "
                           f"{_n_of(new, 'i2t_r1')} slides against {_n_of(old, 'i2t_r1')} for {active.key}: "
                           f"worse by {_points(delta)} points of R@1; {stated}, so making it active needs an "
                           "override with a reason.", **figures)
    word = "better" if delta > 0 else "not worse than the margin"
    return Gate(True, f"On the held-out cases the new bundle is {word} ({_n_of(new, 'i2t_r1')} against "
                      f"{_n_of(old, 'i2t_r1')} for {active.key}); {stated}.", **figures)


def make_active(bundle: ModelBundle, *, override_reason: str = "") -> tuple[Gate, bool]:
    """A lab admin's "Make active": through the gate, or past it with a written reason.

    Returns (gate, overridden); raises ActivationRefused when the gate says no and no reason is given.
    Checked under a lock on the bundle rows, so the gate is judged against the bundle that is active when
    the switch happens."""
    reason = (override_reason or "").strip()
    with transaction.atomic():
        list(ModelBundle.objects.select_for_update().filter(Q(is_active=True) | Q(pk=bundle.pk)))
        bundle.refresh_from_db()
        gate = activation_gate(bundle)
        overridden = not gate.allowed
        if overridden and len(reason) < OVERRIDE_MIN_CHARS:
            raise ActivationRefused(gate)
        activate_bundle(bundle)
    return gate, overridden


def coverage(bundle: ModelBundle) -> tuple[int, int]:
    """(slides with an embedding by `bundle`, all slides)."""
    return SlideEmbedding.objects.filter(bundle=bundle).count(), Slide.objects.count()


def mark_complete_if_done(bundle: ModelBundle) -> bool:
    """Record the moment every slide has an embedding from `bundle`; search may then switch to it."""
    if bundle.archive_complete_at is not None:
        return True
    missing = Slide.objects.filter(known_q()).exclude(  # a slide waiting for its um/px cannot be embedded yet
        Exists(SlideEmbedding.objects.filter(slide=OuterRef("pk"), bundle=bundle)))
    if missing.exists():
        return False
    ModelBundle.objects.filter(pk=bundle.pk, archive_complete_at__isnull=True).update(
        archive_complete_at=timezone.now()
    )
    bundle.refresh_from_db()
    return True


# --- embedding one slide -----------------------------------------------------------------------------
def pack_heatmap(coords: np.ndarray, attention: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, coords=np.asarray(coords, np.int32), attention=np.asarray(attention, np.float32))
    return buffer.getvalue()


def embed_slide(slide: Slide, bundle: ModelBundle, progress: Progress, job: Job | None = None) -> SlideEmbedding:
    """Features (cached or extracted) -> Q-Former -> one SlideEmbedding + its query rows, written at once."""
    started = time.perf_counter()
    if not slide.path.exists():
        raise JobFailed(f"The slide file is missing from the store ({slide.file_path}).")
    progress(0.02, "Loading the model")
    model = runtime.get_model(bundle)
    progress(0.05, "Tiling and encoding patches")
    try:
        features = runtime.slide_features(
            slide, bundle, progress=lambda done, total: progress(0.05 + 0.8 * done / max(total, 1),
                                                                 f"Encoding patches ({done}/{total})"))
    except runtime.ResolutionUnknown as exc:
        raise JobFailed(str(exc)) from None
    except (ValueError, OSError) as exc:  # unreadable slide, no MPP, no tissue ...
        raise JobFailed(f"Could not extract patch features: {exc}") from None
    return save_embedding(slide, bundle, model, features, progress, job=job, started=started)


def save_embedding(slide: Slide, bundle: ModelBundle, model, features, progress: Progress, job: Job | None = None,
                   started: float | None = None) -> SlideEmbedding:
    """The Q-Former over a slide's patch features, written in one transaction (the end of `embed_slide`)."""
    started = time.perf_counter() if started is None else started
    if len(features) == 0:
        raise JobFailed("No tissue was found on the slide, so there is nothing to embed.")
    progress(0.88, f"Embedding {len(features)} patches")
    embedding = model.embed(features)
    progress(0.95, "Saving the embeddings")
    with transaction.atomic():
        Slide.objects.select_for_update().filter(pk=slide.pk).first()  # one writer per slide at a time
        row, _ = SlideEmbedding.objects.update_or_create(
            slide=slide,
            bundle=bundle,
            defaults={
                "embedding": embedding.slide.astype(np.float32),
                "n_patches": len(features),
                "patch_size": features.patch_size_level0,
                "heatmap": pack_heatmap(features.coords, embedding.attention),
                "seconds": round(time.perf_counter() - started, 2),
                "job": job,
            },
        )
        QueryEmbedding.objects.filter(slide=slide, bundle=bundle).delete()
        QueryEmbedding.objects.bulk_create(
            QueryEmbedding(slide=slide, bundle=bundle, index=i, embedding=vector.astype(np.float16))
            for i, vector in enumerate(embedding.queries)
        )
    # Receivers (reports: triage) must never fail the analysis itself.
    slide_analysed.send_robust(sender=Slide, slide=slide, bundle=bundle, model=model, embedding=embedding)
    mark_complete_if_done(bundle)
    return row


# --- queueing ----------------------------------------------------------------------------------------
def queue_slide_analysis(slide: Slide, user=None, bundle: ModelBundle | None = None) -> Job | None:
    """Queue the embedding job of `slide` (by the active bundle); None when no bundle is active yet."""
    bundle = bundle or runtime.active_bundle()
    if bundle is None:
        log.info("slide %s not queued for analysis: no active model bundle", slide.pk)
        return None
    if slide.resolution_unknown:  # waits for a lab admin's um/px (resolution_set queues it then)
        log.info("slide %s not queued for analysis: resolution unknown", slide.pk)
        return None
    with transaction.atomic():
        return create_job(ANALYZE, slide=slide, case=slide.part.case, user=user, params={"bundle": bundle.pk})


@receiver(slide_stored, dispatch_uid="analysis_queue_new_slide")
def on_slide_stored(sender, slide: Slide, user=None, **kwargs) -> None:
    """Every new slide is queued for analysis on the gpu queue, without anyone asking."""
    try:
        queue_slide_analysis(slide, user=user)
    except Exception:  # noqa: BLE001 - never break an upload because analysis could not be queued
        log.exception("could not queue analysis of slide %s", slide.pk)


@receiver(resolution_set, dispatch_uid="analysis_queue_after_resolution_set")
def on_resolution_set(sender, slide: Slide, user=None, **kwargs) -> None:
    """A lab admin set the slide's um/px: the analysis that waited for it is queued now."""
    try:
        queue_slide_analysis(slide, user=user)
    except Exception:  # noqa: BLE001 - setting the resolution must not fail because queueing did
        log.exception("could not queue analysis of slide %s", slide.pk)


def latest_job(slide: Slide) -> Job | None:
    return Job.objects.filter(slide=slide, kind=ANALYZE).order_by("-created_at", "-pk").first()


def queue_reembed(bundle: ModelBundle, user=None) -> Job:
    """A background job that queues one embedding job per slide lacking `bundle`'s embedding."""
    with transaction.atomic():
        return create_job(REEMBED, user=user, params={"bundle": bundle.pk})


# --- job handlers ------------------------------------------------------------------------------------
def _bundle_of(job: Job) -> ModelBundle:
    bundle_id = job.params.get("bundle")
    bundle = ModelBundle.objects.filter(pk=bundle_id).first() if bundle_id else runtime.active_bundle()
    if bundle is None:
        raise JobFailed("No model bundle is active; a lab admin can register one under Models.")
    return bundle


SLIDES_PER_PASS = 8  # at most this many queued analyses run in one pass of the gpu worker (docs/analysis.md)


@job_handler(ANALYZE, queue="gpu", time_limit=settings.ANALYZE_TIME_LIMIT)
def analyze_slide_job(job: Job, progress: Progress) -> dict:
    """One slide's analysis; with more analyses by the same bundle queued, up to SLIDES_PER_PASS - 1 of them
    are taken along and run in the same pass with their slides in flight (`analyze_in_flight`)."""
    if job.slide_id is None:
        raise JobFailed("The job names no slide.")
    slide = Slide.objects.select_related("part__case").get(pk=job.slide_id)
    bundle = _bundle_of(job)
    if slide.path.exists() and not slide.resolution_unknown:
        companions = jobs.take_along(job, SLIDES_PER_PASS - 1,
                                     Q(params__bundle=bundle.pk, slide__isnull=False) & ~Q(slide_id=slide.pk))
        seen = set()
        for companion in list(companions):  # a slide queued twice: one of its jobs runs now, the other later
            if companion.job.slide_id in seen:
                jobs.release(job, companion, "had the same slide in this pass")
                companions.remove(companion)
            seen.add(companion.job.slide_id)
        if companions:
            return analyze_in_flight(job, slide, bundle, progress, companions)
    started = time.perf_counter()
    row = embed_slide(slide, bundle, progress, job=job)
    return _result(bundle, row, {"readers": runtime.reader_mode(runtime.get_model(bundle)),
                                 "seconds": round(time.perf_counter() - started, 2)})


def _result(bundle: ModelBundle, row: SlideEmbedding, info: dict) -> dict:
    return {"bundle": bundle.pk, "bundle_name": str(bundle), "patches": row.n_patches, "seconds": row.seconds,
            **info}


def _finish_one(slide: Slide, bundle: ModelBundle, model, features, info: dict, progress: Progress,
                job: Job) -> dict:
    """One slide of a pass: its features (or the error reading them) -> Q-Former -> its rows and result."""
    if isinstance(features, runtime.ResolutionUnknown):
        raise JobFailed(str(features))
    if isinstance(features, BaseException):
        raise JobFailed(f"Could not extract patch features: {features}")
    started = time.perf_counter()
    row = save_embedding(slide, bundle, model, features, progress, job=job)
    return _result(bundle, row, {**info, "saved_at": round(time.time(), 4),
                                 "embed_seconds": round(time.perf_counter() - started, 2)})


def analyze_in_flight(lead: Job, slide: Slide, bundle: ModelBundle, progress: Progress,
                      companions: list[jobs.Companion]) -> dict:
    """The lead's slide and its companions' slides through one reading pipeline: while one slide is
    encoded, the next one's tissue mask is planned and its patches read (runtime.slides_features_in_flight).
    Each slide's job keeps its own progress, result or error, recorded as soon as its slide is saved (a
    cancelled or failed slide does not stop the others); a companion the pass never reached (the model did
    not load, the lead was cancelled before reading began) goes back to the queue."""
    by_slide = {c.job.slide_id: c for c in companions}
    batch = [lead.pk, *[c.job.pk for c in companions]]
    try:
        progress(0.02, "Loading the model")
        model = runtime.get_model(bundle)
        order = [slide.pk, *[c.job.slide_id for c in companions]]
        slides = sorted([slide, *Slide.objects.filter(pk__in=list(by_slide)).select_related("part__case")],
                        key=lambda s: order.index(s.pk))
        progress(0.05, f"Reading patches: slide 1 of {len(slides)} in this pass")
        for position, other in enumerate(list(slides[1:]), start=2):
            c = by_slide[other.pk]
            note = f"Reading patches: slide {position} of {len(slides)} in this pass (with job #{lead.pk})"
            if jobs.conclude_early(lead, c, lambda c=c, note=note: c.progress(0.05, note)):
                slides.remove(other)  # cancelled meanwhile
        for position, (other, features, info) in enumerate(runtime.slides_features_in_flight(slides, bundle)):
            info = {**info, "batch": batch, "position": position}
            # Each job's outcome is recorded as soon as its slide is saved (the lead's too): users see it done
            # while the pass goes on with the next slides.
            if other.pk == slide.pk:
                jobs.conclude_own(lead, progress, lambda o=other, f=features, i=info: _finish_one(
                    o, bundle, model, f, i, progress, lead))
            else:
                c = by_slide[other.pk]
                jobs.conclude(lead, c, lambda o=other, f=features, i=info, c=c: _finish_one(
                    o, bundle, model, f, i, c.progress, c.job))
            for waiting in companions:  # the time limit of each slide still to come counts from now
                if not waiting.done:
                    waiting.its_turn()
    finally:
        for companion in companions:
            jobs.release(lead, companion, "stopped before reaching its slide")
    return {}  # the lead's own result was recorded by conclude_own


@job_handler(REEMBED, queue="default")
def reembed_archive_job(job: Job, progress: Progress) -> dict:
    """Fan out: one short, idempotent job per slide, so several GPU workers share the archive and the old
    bundle's rows keep serving search until the new bundle covers every slide."""
    bundle = _bundle_of(job)
    has_row = Exists(SlideEmbedding.objects.filter(slide=OuterRef("pk"), bundle=bundle))
    pending = Exists(
        Job.objects.filter(slide=OuterRef("pk"), kind=ANALYZE, state__in=ACTIVE_STATES, params__bundle=bundle.pk)
    )
    todo = list(Slide.objects.filter(known_q()).exclude(has_row).exclude(pending).values_list("pk", flat=True))
    queued = 0
    for start in range(0, len(todo), QUEUE_BATCH):
        with transaction.atomic():
            batch = Slide.objects.filter(pk__in=todo[start : start + QUEUE_BATCH]).select_related("part__case")
            for slide in batch:
                create_job(ANALYZE, slide=slide, case=slide.part.case,
                           user=job.created_by, params={"bundle": bundle.pk, "reembed": job.pk})
                queued += 1
        progress(queued / max(len(todo), 1), f"Queued {queued} of {len(todo)} slides")
    complete = mark_complete_if_done(bundle)
    return {"bundle": bundle.pk, "queued": queued, "complete": complete}
