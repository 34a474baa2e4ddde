"""The web app's one boundary to the model library: which bundle is active, the process-cached model, the
patch-feature cache, and the generation settings. Other apps call only these:

    active_bundle() -> ModelBundle | None          the bundle that embeds new slides
    search_bundle() -> ModelBundle | None          the bundle whose rows search reads (see below)
    get_model(bundle=None) -> PathAlign            loaded once per process (after a fork: once per child)
    slide_features(slide, bundle=None, progress=None) -> SlideFeatures   cached on disk, extracted on first use
    generation_config() -> GenerationConfig        the drafting settings (DRAFT_NUM_BEAMS, ...)

Features live in VAR_DIR/features/<bundle>/<slide>.safetensors, written by `SlideFeatures.save` in float16,
extracted with the bundle's tiling (bundle.json), the slide's resolution (the file's um/px when plausible,
else the lab admin's; unknown: the job refuses) and MAX_PATCHES_PER_SLIDE. Each file records its
`features_key` (encoder, SHA-256 of the encoder's weight files, tiling, cap) and the um/px it was made at;
a file whose key or um/px differs is re-made, never reused. Bundles with the same key share files (a hard
link), so re-embedding the archive with a newly trained Q-Former does not re-tile.

torch and the model library are imported inside these functions: web processes that never touch a model
(most page views) do not pay for loading them.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from .models import ModelBundle

if TYPE_CHECKING:
    from inference.features import SlideFeatures
    from inference.generation import GenerationConfig
    from inference.pathalign import PathAlign
    from inference.progress import Progress

log = logging.getLogger(__name__)

_lock = threading.Lock()
_models: OrderedDict[tuple, PathAlign] = OrderedDict()


class NoModel(Exception):
    """No model bundle is registered (or the asked-for one is gone)."""


# --- which bundle ------------------------------------------------------------------------------------
def active_bundle() -> ModelBundle | None:
    return ModelBundle.objects.filter(is_active=True).first()


def search_bundle() -> ModelBundle | None:
    """The bundle search reads: the active one once the whole archive has its embeddings; until then the
    newest bundle that was complete (the old rows stay usable while a re-embed runs); else the active."""
    active = active_bundle()
    if active is not None and active.archive_complete_at is not None:
        return active
    complete = ModelBundle.objects.filter(archive_complete_at__isnull=False).order_by("-archive_complete_at")
    return complete.first() or active


def _resolve(bundle: ModelBundle | int | None) -> ModelBundle:
    if isinstance(bundle, ModelBundle):
        return bundle
    found = active_bundle() if bundle is None else ModelBundle.objects.filter(pk=bundle).first()
    if found is None:
        raise NoModel("No model bundle is active. A lab admin can register one under Models.")
    return found


# --- bundle files ------------------------------------------------------------------------------------
def read_bundle_config(path: str | os.PathLike) -> dict:
    """bundle.json of a bundle directory (FileNotFoundError / ValueError when it is not a bundle)."""
    from inference.bundle import read_bundle_config as read  # torch: see the module docstring

    return read(path)


def read_eval(path: str | os.PathLike) -> dict:
    from inference.bundle import read_eval as read  # torch: see the module docstring

    return read(path)


# --- the model ---------------------------------------------------------------------------------------
def device() -> str:
    """INFERENCE_DEVICE (PATHALIGN_DEVICE), else the (one) GPU this worker sees, else the CPU.

    One worker process per GPU: start each with CUDA_VISIBLE_DEVICES=<n>, so "cuda" is that GPU.
    """
    if settings.INFERENCE_DEVICE:
        return settings.INFERENCE_DEVICE
    import torch  # see the module docstring

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(path: str | os.PathLike, device: str, compile_encoder: bool = False) -> PathAlign:
    """A bundle loaded from its local directory, not cached (registration checks, training comparisons)."""
    from inference.pathalign import PathAlign  # torch: see the module docstring

    return PathAlign.load(path, device=device, compile_encoder=compile_encoder)


def get_model(bundle: ModelBundle | int | None = None) -> PathAlign:
    """The loaded model of `bundle` (default: the active one), loaded once per process.

    The key includes the process id: a Celery prefork child never reuses a model (or CUDA context) its
    parent loaded before the fork; it loads its own on first use.
    """
    bundle = _resolve(bundle)
    key = (os.getpid(), bundle.pk, bundle.path)
    with _lock:
        model = _models.get(key)
        if model is not None:
            _models.move_to_end(key)
            return model
        log.info("loading model bundle %s from %s on %s", bundle, bundle.path, device())
        model = load_model(bundle.path, device(), compile_encoder=settings.COMPILE_ENCODER)
        _models[key] = model
        for stale in [k for k in _models if k[0] != os.getpid()]:
            del _models[stale]
        while len(_models) > settings.MAX_CACHED_MODELS:
            _models.popitem(last=False)
        return model


def forget_models() -> None:
    """Drop every cached model (tests, and after a bundle's files were replaced)."""
    with _lock:
        _models.clear()


def generation_config() -> GenerationConfig:
    """How drafts are generated here: DRAFT_NUM_BEAMS, DRAFT_MAX_NEW_TOKENS and DRAFT_CANDIDATES, the rest the
    library's."""
    from inference.generation import GenerationConfig  # torch: see the module docstring

    return GenerationConfig(num_beams=settings.DRAFT_NUM_BEAMS, max_new_tokens=settings.DRAFT_MAX_NEW_TOKENS,
                            candidates=settings.DRAFT_CANDIDATES)


# --- patch features ----------------------------------------------------------------------------------
def features_dir(bundle: ModelBundle) -> Path:
    return Path(settings.VAR_DIR) / "features" / bundle.cache_key


def features_path(slide, bundle: ModelBundle) -> Path:
    return features_dir(bundle) / f"{slide.pk}.safetensors"


class ResolutionUnknown(ValueError):
    """The slide's microns per pixel are missing or implausible and no lab admin has set them."""


def features_key(bundle: ModelBundle) -> str:
    """What the bundle's features are made of (inference.bundle.features_key): encoder, the SHA-256 of its
    weight files (memoised per file by size and mtime), tiling, and the patch cap."""
    from inference.bundle import features_key as key  # torch: see the module docstring

    try:
        config = read_bundle_config(bundle.path)
    except (FileNotFoundError, ValueError):  # a row without files (tests, a removed bundle): its spec alone
        config = {"encoder": bundle.encoder}
    return key(config, settings.MAX_PATCHES_PER_SLIDE)


def _fresh(path: Path, key: str, mpp: float | None) -> bool:
    """Was this cache file made with these weights, tiling and cap, at this slide resolution?"""
    from inference.features import read_meta

    try:
        meta = read_meta(path)
    except (OSError, ValueError):
        return False
    if meta.extra.get("features_key") != key:
        return False
    return mpp is None or "mpp" not in meta.extra or abs(float(meta.extra["mpp"]) - mpp) < 1e-9


def _share_from_sibling(slide, bundle: ModelBundle, target: Path, key: str, mpp: float | None) -> bool:
    """Hard-link another bundle's cached features when they were made with the same features key."""
    for other in ModelBundle.objects.exclude(pk=bundle.pk):
        source = features_path(slide, other)
        if not source.exists() or not _fresh(source, key, mpp):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except FileExistsError:
            pass
        except OSError:  # another filesystem: copy instead
            shutil.copyfile(source, target)
        return True
    return False


def slide_features(
    slide, bundle: ModelBundle | int | None = None, progress: Progress | None = None
) -> SlideFeatures:
    """The slide's patch features under `bundle`'s encoder and tiling: from the disk cache when made with the
    same features key and resolution, or extracted (tiling + patch encoder) and cached. `progress(done,
    total)` is called with patch counts during extraction. ResolutionUnknown when the slide has no usable
    um/px."""
    import torch  # see the module docstring

    from inference.features import SlideFeatures

    bundle = _resolve(bundle)
    mpp = slide.effective_mpp
    key = features_key(bundle)
    path = features_path(slide, bundle)
    if path.exists() and not _fresh(path, key, mpp):
        log.info("cached features %s were made with other weights, tiling or resolution; extracting again", path)
        path.unlink(missing_ok=True)
    if path.exists() or _share_from_sibling(slide, bundle, path, key, mpp):
        try:
            return SlideFeatures.load(path)
        except Exception as exc:  # noqa: BLE001 - a damaged (or older-format) cache file is re-made, not fatal
            log.warning("cached features %s unreadable (%s); extracting again", path, exc)
            path.unlink(missing_ok=True)
    if mpp is None:
        raise ResolutionUnknown(
            "The slide's resolution is unknown (its file gives no plausible microns per pixel); a lab admin "
            "can set it on the slide page, and analysis starts then.")
    model = get_model(bundle)
    extracted = model.extract(
        slide.path, progress=progress, mpp=mpp, max_patches=settings.MAX_PATCHES_PER_SLIDE,
        batch_size=settings.EMBED_BATCH_SIZE or None, readers=reader_mode(model))
    # float16 halves the disk; the embedding is always computed from the stored copy, so a cached and a
    # fresh run give identical results. `save` is atomic: a reader never sees half a file.
    extracted.save(path, extra={"slide": str(slide.pk), "features_key": key, "mpp": mpp}, dtype=torch.float16)
    return SlideFeatures.load(path)


def reader_mode(model: PathAlign) -> str:
    """How this process reads patches for `model`: PATCH_READERS resolved for its device and this process
    ("processes" needs a non-daemonic process: the gpu worker runs `--pool solo`)."""
    from inference.features import resolve_readers

    return resolve_readers(settings.PATCH_READERS, model.device)


IN_FLIGHT = 3  # slides in flight (iter_slide_features' in_flight): two read ahead while one is encoded


def slides_features_in_flight(slides, bundle: ModelBundle | int | None = None):
    """Patch features of several slides with the next slide's tissue mask and patches read while the current
    one is encoded (`inference.features.iter_slide_features`). Yields `(slide, features or exception, info)`
    in order: cached slides first (no reading), then the extracted ones, each cached as `slide_features`
    does. `info`: readers, and for extracted slides `read_started`/`features_at` (epoch seconds: when its
    tissue planning began and when its last patch was encoded) and the read/encode seconds. A slide that
    fails to read yields its exception; the slides after it are extracted by a fresh pipeline."""
    import time

    import torch  # see the module docstring

    from inference.features import SlideFeatures, iter_slide_features

    bundle = _resolve(bundle)
    model = get_model(bundle)
    readers = reader_mode(model)
    key = features_key(bundle)
    todo = []
    for slide in slides:
        mpp = slide.effective_mpp
        path = features_path(slide, bundle)
        if path.exists() and not _fresh(path, key, mpp):
            path.unlink(missing_ok=True)
        if path.exists() or _share_from_sibling(slide, bundle, path, key, mpp):
            try:
                yield slide, SlideFeatures.load(path), {"readers": "cached"}
                continue
            except Exception as exc:  # noqa: BLE001 - a damaged cache file is re-made
                log.warning("cached features %s unreadable (%s); extracting again", path, exc)
                path.unlink(missing_ok=True)
        if mpp is None:
            yield slide, ResolutionUnknown(
                "The slide's resolution is unknown (its file gives no plausible microns per pixel); a lab admin "
                "can set it on the slide page, and analysis starts then."), {"readers": readers}
            continue
        todo.append((slide, mpp, path))
    t = model.tiling
    while todo:
        stream = iter_slide_features(
            [str(slide.path) for slide, _, _ in todo], model.encoder, patch_size=t["patch_size"],
            target_mpp=t["mpp"], max_patches=settings.MAX_PATCHES_PER_SLIDE,
            batch_size=settings.EMBED_BATCH_SIZE or None, min_tissue=t["min_tissue"], overlap=t["overlap"],
            mpps=[mpp for _, mpp, _ in todo], readers=readers, in_flight=IN_FLIGHT)
        while todo:
            slide, mpp, path = todo[0]
            try:
                extracted = next(stream)
            except (ValueError, OSError, RuntimeError) as exc:  # this slide's reading failed: the rest go on
                todo.pop(0)
                yield slide, exc, {"readers": readers}
                break
            todo.pop(0)
            now = time.time()
            info = {"readers": readers, "read_started": round(now - extracted.wall_seconds, 4),
                    "features_at": round(now, 4), "read_seconds": round(extracted.read_seconds, 3),
                    "read_wait_seconds": round(extracted.read_wait_seconds, 3),
                    "encode_seconds": round(extracted.encode_seconds, 3)}
            extracted.save(path, extra={"slide": str(slide.pk), "features_key": key, "mpp": mpp},
                           dtype=torch.float16)
            yield slide, SlideFeatures.load(path), info
        stream.close()
