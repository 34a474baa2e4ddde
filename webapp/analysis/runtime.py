"""The model at run time: which bundle is active, the process-cached model, and cached patch features.

Other apps (report drafting, classification) call only these:

    active_bundle() -> ModelBundle | None          the bundle that embeds new slides
    search_bundle() -> ModelBundle | None          the bundle whose rows search reads (see below)
    get_model(bundle=None) -> PathAlign            loaded once per process (after a fork: once per child)
    slide_features(slide, bundle=None) -> SlideFeatureSet   cached on disk, extracted on first use

Features live in VAR_DIR/features/<bundle>/<slide>.safetensors ("features" [N, D] float16, "coords"
[N, 2] int32, metadata: encoder spec and the level-0 patch size). Bundles with the same encoder spec
share them (a hard link), so re-embedding the archive with a newly trained Q-Former does not re-tile.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings

from .models import ModelBundle

if TYPE_CHECKING:  # torch and the model library load only where a model is used
    import torch

    from inference.pathalign import PathAlign

log = logging.getLogger(__name__)
MAX_CACHED_MODELS = int(os.environ.get("PATHALIGN_MAX_CACHED_MODELS", 2))

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


# --- the model ---------------------------------------------------------------------------------------
def device() -> str:
    """PATHALIGN_DEVICE, else the (one) GPU this worker sees, else the CPU.

    One worker process per GPU: start each with CUDA_VISIBLE_DEVICES=<n>, so "cuda" is that GPU.
    """
    chosen = os.environ.get("PATHALIGN_DEVICE")
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
        from inference.pathalign import PathAlign

        log.info("loading model bundle %s from %s on %s", bundle, bundle.path, device())
        model = PathAlign.load(bundle.path, device=device())
        _models[key] = model
        for stale in [k for k in _models if k[0] != os.getpid()]:
            del _models[stale]
        while len(_models) > MAX_CACHED_MODELS:
            _models.popitem(last=False)
        return model


def forget_models() -> None:
    """Drop every cached model (tests, and after a bundle's files were replaced)."""
    with _lock:
        _models.clear()


# --- patch features ----------------------------------------------------------------------------------
@dataclass
class SlideFeatureSet:
    """A slide's patch features as the model library takes them (`.features`), with where they came from."""

    features: torch.Tensor  # [N, D] float32
    coords: np.ndarray  # [N, 2] int, level-0 top-left of each patch
    patch_size: int  # patch side in level-0 pixels
    path: Path  # the cache file

    def __len__(self) -> int:
        return int(self.features.shape[0])


def features_dir(bundle: ModelBundle) -> Path:
    return Path(settings.VAR_DIR) / "features" / bundle.cache_key


def features_path(slide, bundle: ModelBundle) -> Path:
    return features_dir(bundle) / f"{slide.pk}.safetensors"


def _encoder_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def _load_cached(path: Path) -> SlideFeatureSet:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        features = handle.get_tensor("features").float()
        coords = handle.get_tensor("coords").numpy().astype(np.int64)
    return SlideFeatureSet(features, coords, int(meta.get("patch_size", 0)), path)


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
                import shutil

                shutil.copyfile(source, target)
            return True
    return False


def _fraction_reporter(progress: Callable[[float, str], None] | None) -> Callable[..., None] | None:
    """Adapt the library's progress callback (done, total) or (fraction[, message]) to ours."""
    if progress is None:
        return None

    def report(*args: Any, **kwargs: Any) -> None:
        numbers = [a for a in args if isinstance(a, int | float)]
        text = next((a for a in args if isinstance(a, str)), "")
        if len(numbers) >= 2 and numbers[1]:
            fraction = numbers[0] / numbers[1]
            text = text or f"{int(numbers[0])}/{int(numbers[1])} patches"
        elif numbers:
            fraction = float(numbers[0])
        else:
            return
        progress(max(0.0, min(1.0, fraction)), text or "Encoding patches")

    return report


def _patch_size_of(extracted: Any) -> int:
    for holder in (extracted, getattr(extracted, "grid", None)):
        for name in ("patch_size_level0", "patch_size_l0"):
            value = getattr(holder, name, None)
            if value:
                return int(value)
    return int(getattr(extracted, "patch_size", 0) or 0)


def slide_features(
    slide, bundle: ModelBundle | int | None = None, progress: Callable[[float, str], None] | None = None
) -> SlideFeatureSet:
    """The slide's patch features under `bundle`'s encoder: from the disk cache, or extracted (tiling +
    patch encoder) and cached. `progress(fraction, message)` is called during extraction."""
    bundle = _resolve(bundle)
    path = features_path(slide, bundle)
    if path.exists() or _share_from_sibling(slide, bundle, path):
        try:
            return _load_cached(path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is re-made, not fatal
            log.warning("cached features %s unreadable (%s); extracting again", path, exc)
            path.unlink(missing_ok=True)
    import torch
    from safetensors.torch import save_file

    model = get_model(bundle)
    extracted = model.extract(slide.path, progress=_fraction_reporter(progress))
    features = torch.as_tensor(np.asarray(getattr(extracted, "features", extracted))).float()
    coords = np.asarray(getattr(extracted, "coords", np.zeros((features.shape[0], 2))), dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    # float16 halves the disk; the embedding is always computed from the stored copy, so a cached and a
    # fresh run give identical results.
    save_file(
        {"features": features.half().contiguous(), "coords": torch.from_numpy(coords).contiguous()},
        str(temporary),
        metadata={"patch_size": str(_patch_size_of(extracted)), "encoder": json.dumps(bundle.encoder),
                  "slide": str(slide.pk)},
    )
    os.replace(temporary, path)  # atomic: a reader never sees half a file
    return _load_cached(path)
