"""The web app's one boundary to the model library: which bundle is active, the process-cached model, the
patch-feature cache, and the generation settings. Other apps call only these:

    active_bundle() -> ModelBundle | None          the bundle that embeds new slides
    search_bundle() -> ModelBundle | None          the bundle whose rows search reads (see below)
    get_model(bundle=None) -> PathAlign            loaded once per process (after a fork: once per child)
    slide_features(slide, bundle=None, progress=None) -> SlideFeatures   cached on disk, extracted on first use
    generation_config() -> GenerationConfig        the drafting settings (DRAFT_NUM_BEAMS, ...)

Features live in VAR_DIR/features/<bundle>/<slide>.safetensors, written by `SlideFeatures.save` in float16.
Bundles with the same encoder spec share them (a hard link), so re-embedding the archive with a newly
trained Q-Former does not re-tile.

torch and the model library are imported inside these functions: web processes that never touch a model
(most page views) do not pay for loading them.
"""
from __future__ import annotations

import json
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


def load_model(path: str | os.PathLike, device: str) -> PathAlign:
    """A bundle loaded from its local directory, not cached (registration checks, training comparisons)."""
    from inference.pathalign import PathAlign  # torch: see the module docstring

    return PathAlign.load(path, device=device)


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
        model = load_model(bundle.path, device())
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
    """How drafts are generated here: DRAFT_NUM_BEAMS and DRAFT_MAX_NEW_TOKENS, the rest the library's."""
    from inference.generation import GenerationConfig  # torch: see the module docstring

    return GenerationConfig(num_beams=settings.DRAFT_NUM_BEAMS, max_new_tokens=settings.DRAFT_MAX_NEW_TOKENS)


# --- patch features ----------------------------------------------------------------------------------
def features_dir(bundle: ModelBundle) -> Path:
    return Path(settings.VAR_DIR) / "features" / bundle.cache_key


def features_path(slide, bundle: ModelBundle) -> Path:
    return features_dir(bundle) / f"{slide.pk}.safetensors"


def _encoder_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def _share_from_sibling(slide, bundle: ModelBundle, target: Path) -> bool:
    """Hard-link another bundle's cached features when both bundles use the same encoder."""
    key = _encoder_key(bundle.encoder)
    for other in ModelBundle.objects.exclude(pk=bundle.pk):
        if _encoder_key(other.encoder) != key:
            continue
        source = features_path(slide, other)
        if source.exists():
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
    """The slide's patch features under `bundle`'s encoder: from the disk cache, or extracted (tiling +
    patch encoder) and cached. `progress(done, total)` is called with patch counts during extraction."""
    import torch  # see the module docstring

    from inference.features import SlideFeatures

    bundle = _resolve(bundle)
    path = features_path(slide, bundle)
    if path.exists() or _share_from_sibling(slide, bundle, path):
        try:
            return SlideFeatures.load(path)
        except Exception as exc:  # noqa: BLE001 - a damaged (or older-format) cache file is re-made, not fatal
            log.warning("cached features %s unreadable (%s); extracting again", path, exc)
            path.unlink(missing_ok=True)
    extracted = get_model(bundle).extract(slide.path, progress=progress)
    # float16 halves the disk; the embedding is always computed from the stored copy, so a cached and a
    # fresh run give identical results. `save` is atomic: a reader never sees half a file.
    extracted.save(path, extra={"slide": str(slide.pk)}, dtype=torch.float16)
    return SlideFeatures.load(path)
