"""Slide -> patch features: tiling, parallel patch reading and batched encoding; corpus feature caches.

API (stable; the web app's feature cache uses these too):

- `SlideFeatures`: features float32 Tensor [N, D], coords int64 ndarray [N, 2] (level-0 x, y of each patch's
  top-left corner), patch_size_level0 (patch side in level-0 pixels), patch_size (the encoder's input side),
  target_mpp, slide_mpp, dimensions (level-0 width, height), encoder_spec, n_candidates (tissue patches
  before the cap) and timings (read_seconds: reading time summed over threads; read_wait_seconds: time the
  encoder waited for patches; encode_seconds; wall_seconds).
  `.save(path, extra=None, dtype=torch.float32)` / `SlideFeatures.load(path)` use safetensors with JSON
  metadata; `dtype` is the storage dtype of the features (float16 halves the file), and `load` always
  gives float32 back, so whatever is computed from a loaded copy is the same on every load.
- `read_meta(path) -> FeaturesMeta` (also `SlideFeatures.meta_of(path)`): a file's metadata, its patch count
  and storage dtype, without reading the tensors; `FeaturesMeta.matches(encoder_spec)` checks a cache file.
- `Features = SlideFeatures | HasFeatures | torch.Tensor | np.ndarray` what the model API accepts as one
  slide's patch features; `features_tensor(features) -> Tensor [N, D] float32`.
- `extract_slide_features(slide, encoder, patch_size=224, target_mpp=1.0, max_patches=None, batch_size=64,
   workers=4, fallback_mpp=None, min_tissue=0.4, progress=None) -> SlideFeatures`.
- `extract_corpus_features(manifest_path, encoder, out_dir, max_patches=256, workers=4, ...) -> Path`: one
  `<case_id>_<part>.safetensors` per manifest record plus `index.jsonl` (one line per slide: slide,
  features file, n_patches, split, diagnosis, case_id) and `encoder.json` (the encoder spec and dim).
  Slides whose cache file already holds features from the same encoder and tiling are skipped.
- `load_feature_index(out_dir) -> list[dict]` (each with an absolute `features_path`).

Progress is reported through `inference.progress.Progress`: ``progress(done, total)``, ints.

Reading runs on a thread pool with one OpenSlide handle per thread (OpenSlide releases the GIL while it
decodes), keeping a window of patches in flight so the encoder is never starved.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .encoders import PatchEncoder
from .progress import Progress
from .slides import PatchGrid, open_slide, patch_grid, read_patch

__all__ = [
    "Features",
    "FeaturesMeta",
    "HasFeatures",
    "Progress",
    "SlideFeatures",
    "encode_grid",
    "extract_corpus_features",
    "extract_slide_features",
    "features_tensor",
    "load_feature_index",
    "read_meta",
]

META_KEY = "slide_features"  # the safetensors metadata entry that holds the JSON below
STORAGE_DTYPES: dict[torch.dtype, str] = {torch.float32: "float32", torch.float16: "float16",
                                          torch.bfloat16: "bfloat16"}
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass
class SlideFeatures:
    features: torch.Tensor  # float32 [N, D]
    coords: np.ndarray  # int64 [N, 2], level-0 (x, y) of each patch's top-left corner
    # Two sizes, both in pixels: `patch_size_level0` is the patch's side on the slide at level 0 (what
    # coords, heatmaps and evidence boxes use; 448 for 224 px at 1.0 mpp on a 0.5 mpp scan), `patch_size`
    # the side of the image the encoder was given (the tiling request, resized to this).
    patch_size_level0: int
    patch_size: int
    target_mpp: float
    slide_mpp: float
    dimensions: tuple[int, int]  # level-0 (width, height)
    encoder_spec: dict[str, Any] = field(default_factory=dict)
    n_candidates: int = 0
    read_seconds: float = 0.0
    read_wait_seconds: float = 0.0
    encode_seconds: float = 0.0
    wall_seconds: float = 0.0
    path: Path | None = None  # the file these features were loaded from (None when freshly computed)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def meta(self) -> dict[str, Any]:
        """Everything but the tensors, JSON-ready (what `save` writes into the file's metadata)."""
        return {k: getattr(self, k) for k in ("patch_size_level0", "patch_size", "target_mpp", "slide_mpp",
                                              "encoder_spec", "n_candidates", "read_seconds",
                                              "read_wait_seconds", "encode_seconds", "wall_seconds")} | {
            "dimensions": list(self.dimensions)}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None,
             dtype: torch.dtype = torch.float32) -> Path:
        """Write atomically (a reader never sees half a file); features stored as `dtype`."""
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(STORAGE_DTYPES.values())}; got {dtype}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = self.meta() | {"dtype": STORAGE_DTYPES[dtype]} | ({"extra": extra} if extra else {})
        # A unique temporary name: several workers (processes, hosts) may cache the same slide at once.
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        save_file({"features": self.features.detach().to("cpu", dtype).contiguous(),
                   "coords": torch.from_numpy(np.ascontiguousarray(self.coords, dtype=np.int64))},
                  str(tmp), metadata={META_KEY: json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SlideFeatures:
        """Read a file written by `save` (any storage dtype, and files from before dtypes were recorded):
        features always float32, coords int64."""
        meta = _raw_meta(path)
        tensors = load_file(str(path))
        known = {f.name for f in fields(cls)} - {"features", "coords", "path"}
        kwargs = {k: v for k, v in meta.items() if k in known}  # a newer writer's extra keys are skipped
        try:
            kwargs["dimensions"] = tuple(kwargs["dimensions"])
            return cls(features=tensors["features"].float(), coords=tensors["coords"].numpy().astype(np.int64),
                       path=Path(path), **kwargs)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: incomplete slide-features metadata ({exc!r})") from None

    @staticmethod
    def meta_of(path: str | Path) -> FeaturesMeta:
        """Same as `read_meta(path)`."""
        return read_meta(path)


@dataclass(frozen=True)
class FeaturesMeta:
    """What a features file says about itself, read without loading its tensors."""

    n_patches: int
    dim: int  # D, the feature width
    dtype: str  # storage dtype of the features: "float32", "float16" or "bfloat16"
    encoder_spec: dict[str, Any]
    patch_size_level0: int
    patch_size: int
    target_mpp: float
    slide_mpp: float
    dimensions: tuple[int, int]
    n_candidates: int
    extra: dict[str, Any]

    def matches(self, encoder_spec: Mapping[str, Any]) -> bool:
        """Were these features made by an encoder with this spec? (compared as JSON, key order aside)"""
        return _spec_key(self.encoder_spec) == _spec_key(encoder_spec)


def read_meta(path: str | Path) -> FeaturesMeta:
    """The metadata of a file written by `SlideFeatures.save`. ValueError if it is not one (or unreadable
    as safetensors); FileNotFoundError if it is missing."""
    meta = _raw_meta(path)
    with safe_open(str(path), "pt") as fh:
        shape = fh.get_slice("features").get_shape()
        stored = _SAFETENSORS_DTYPES.get(fh.get_slice("features").get_dtype(), "float32")
    try:
        return FeaturesMeta(
            n_patches=int(shape[0]), dim=int(shape[1]) if len(shape) > 1 else 0,
            dtype=str(meta.get("dtype", stored)), encoder_spec=dict(meta["encoder_spec"]),
            patch_size_level0=int(meta["patch_size_level0"]), patch_size=int(meta["patch_size"]),
            target_mpp=float(meta["target_mpp"]), slide_mpp=float(meta["slide_mpp"]),
            dimensions=(int(meta["dimensions"][0]), int(meta["dimensions"][1])),
            n_candidates=int(meta.get("n_candidates", 0)), extra=dict(meta.get("extra") or {}),
        )
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: incomplete slide-features metadata ({exc!r})") from None


def _raw_meta(path: str | Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), "pt") as fh:
            text = (fh.metadata() or {}).get(META_KEY)
            names = set(fh.keys())
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if text is None or not {"features", "coords"} <= names:
        raise ValueError(f"{path} was not written by SlideFeatures.save (no {META_KEY!r} metadata)")
    return json.loads(text)


def _spec_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(json.loads(json.dumps(dict(spec))), sort_keys=True)  # tuples -> lists, as stored


@runtime_checkable
class HasFeatures(Protocol):
    """Anything that carries one slide's patch features as ``.features`` (a float Tensor [N, D])."""

    @property
    def features(self) -> torch.Tensor: ...


# One slide's patch features as the model API takes them: SlideFeatures (or any HasFeatures), or [N, D].
Features = SlideFeatures | HasFeatures | torch.Tensor | np.ndarray


def features_tensor(features: Features) -> torch.Tensor:
    """[N, D] float32 tensor from SlideFeatures (or any HasFeatures), a tensor or an array."""
    if isinstance(features, torch.Tensor):
        x = features
    elif isinstance(features, np.ndarray):
        x = torch.as_tensor(np.ascontiguousarray(features))
    elif isinstance(features, HasFeatures):
        x = torch.as_tensor(features.features)
    else:
        raise TypeError(f"expected SlideFeatures, a Tensor or an ndarray; got {type(features).__name__}")
    x = x.float()
    if x.dim() != 2:
        raise ValueError(f"expected patch features [N, D], got shape {tuple(x.shape)}")
    return x


class _ThreadSlides:
    """One OpenSlide handle per reading thread (handles are not shared across threads)."""

    def __init__(self, path: str):
        self.path = path
        self.local = threading.local()
        self.handles = []
        self.lock = threading.Lock()

    def get(self):
        h = getattr(self.local, "slide", None)
        if h is None:
            h = open_slide(self.path)
            self.local.slide = h
            with self.lock:
                self.handles.append(h)
        return h

    def close(self) -> None:
        for h in self.handles:
            h.close()
        self.handles.clear()


def encode_grid(path: str | Path, grid: PatchGrid, encoder: PatchEncoder, batch_size: int | None = None,
                workers: int = 4, progress: Progress | None = None,
                readers: str = "threads") -> tuple[torch.Tensor, dict[str, float]]:
    """Read the grid's patches in parallel and encode them in batches; returns (features, timings).

    `readers="threads"`: a thread pool, one OpenSlide handle per thread (OpenSlide releases the GIL while it
    decodes). `readers="processes"`: `workers` spawned processes decode chunks of patches (no GIL at all:
    what a GPU needs so that reading never starves it). Either way a window of patches stays in flight and
    the features stay on the encoder's device until the end (no host sync per batch). `batch_size` None:
    the encoder's default (256 on CUDA, 64 on the CPU)."""
    n = len(grid)
    timings = {"read_seconds": 0.0, "read_wait_seconds": 0.0, "encode_seconds": 0.0}
    if n == 0:
        if progress:
            progress(0, 0)
        return torch.zeros(0, encoder.dim), timings
    if readers not in ("threads", "processes"):
        raise ValueError(f"readers must be 'threads' or 'processes', got {readers!r}")
    bs = int(batch_size or encoder.default_batch_size())
    outs: list[torch.Tensor] = []
    done = 0

    def encode(batch: np.ndarray) -> None:
        nonlocal done
        t0 = time.perf_counter()
        outs.append(encoder.encode_on_device(batch, batch_size=bs))
        timings["encode_seconds"] += time.perf_counter() - t0
        done += len(batch)
        if progress:
            progress(done, n)

    if readers == "processes":
        _encode_with_processes(path, grid, bs, workers, timings, encode)
    else:
        _encode_with_threads(path, grid, bs, workers, timings, encode)
    return torch.cat(outs).float().cpu(), timings  # the one device -> host copy


def _encode_with_threads(path, grid: PatchGrid, bs: int, workers: int, timings: dict, encode) -> None:
    n = len(grid)
    slides = _ThreadSlides(str(path))
    read_lock = threading.Lock()

    def read_one(i: int) -> np.ndarray:
        t0 = time.perf_counter()
        img = read_patch(slides.get(), grid, *grid.coords[i])
        dt = time.perf_counter() - t0
        with read_lock:
            timings["read_seconds"] += dt
        return img

    window = max(2 * bs, 4 * max(1, workers))  # patches in flight: enough to cover one encode step
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="patch-read") as pool:
            pending: deque = deque()
            nxt = 0
            while nxt < n and len(pending) < window:
                pending.append(pool.submit(read_one, nxt))
                nxt += 1
            batch: list[np.ndarray] = []
            while pending:
                t0 = time.perf_counter()
                batch.append(pending.popleft().result())
                timings["read_wait_seconds"] += time.perf_counter() - t0
                while nxt < n and len(pending) < window:
                    pending.append(pool.submit(read_one, nxt))
                    nxt += 1
                if len(batch) == bs or not pending:
                    encode(np.stack(batch))
                    batch = []
    finally:
        slides.close()


def _encode_with_processes(path, grid: PatchGrid, bs: int, workers: int, timings: dict, encode) -> None:
    import multiprocessing

    from .slides import read_chunk, reader_init

    n = len(grid)
    chunk = max(4, min(64, bs // max(1, workers)))
    starts = list(range(0, n, chunk))
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold a CUDA context
    with ProcessPoolExecutor(max(1, workers), mp_context=ctx, initializer=reader_init,
                             initargs=(str(path), grid.level, grid.read_size, grid.patch_size)) as pool:
        window = max(2, 2 * max(1, workers), (2 * bs) // chunk)
        pending: deque = deque()
        nxt = 0
        while nxt < len(starts) and len(pending) < window:
            pending.append(pool.submit(read_chunk, grid.coords[starts[nxt]:starts[nxt] + chunk]))
            nxt += 1
        buffered: list[np.ndarray] = []
        have = 0
        while pending:
            t0 = time.perf_counter()
            images, seconds = pending.popleft().result()
            timings["read_wait_seconds"] += time.perf_counter() - t0
            timings["read_seconds"] += seconds
            while nxt < len(starts) and len(pending) < window:
                pending.append(pool.submit(read_chunk, grid.coords[starts[nxt]:starts[nxt] + chunk]))
                nxt += 1
            buffered.append(images)
            have += len(images)
            while have >= bs or (not pending and have):
                stacked = np.concatenate(buffered)
                encode(stacked[:bs])
                rest = stacked[bs:]
                buffered, have = ([rest] if len(rest) else []), len(rest)


def extract_slide_features(slide_path: str | Path, encoder: PatchEncoder, patch_size: int = 224,
                           target_mpp: float = 1.0, max_patches: int | None = None, batch_size: int | None = None,
                           workers: int = 4, fallback_mpp: float | None = None, min_tissue: float = 0.4,
                           progress: Progress | None = None, overlap: int = 0, mpp: float | None = None,
                           readers: str = "threads") -> SlideFeatures:
    """Tissue mask -> patch grid at target_mpp -> parallel reads -> batched encoding.

    `mpp` overrides the file's microns per pixel (a value set for this slide); `readers` "threads" or
    "processes" (decoding in worker processes: see `encode_grid`)."""
    t_start = time.perf_counter()
    slide = open_slide(slide_path)
    try:
        grid = patch_grid(slide, patch_size=patch_size, target_mpp=target_mpp, max_patches=max_patches,
                          min_tissue=min_tissue, fallback_mpp=fallback_mpp, overlap=overlap, mpp=mpp)
    finally:
        slide.close()
    feats, timings = encode_grid(slide_path, grid, encoder, batch_size, workers, progress, readers=readers)
    return SlideFeatures(features=feats, coords=grid.coords.copy(), patch_size_level0=grid.patch_size_level0,
                         patch_size=grid.patch_size, target_mpp=grid.target_mpp, slide_mpp=grid.slide_mpp,
                         dimensions=grid.dimensions, encoder_spec=dict(encoder.spec),
                         n_candidates=grid.n_candidates, wall_seconds=time.perf_counter() - t_start, **timings)


def _feature_name(rec: dict) -> str:
    if "case_id" in rec:
        return f"{rec['case_id']}_{rec.get('part', 'A')}.safetensors"
    return Path(rec["slide"]).stem + ".safetensors"


def extract_corpus_features(manifest_path: str | Path, encoder: PatchEncoder, out_dir: str | Path,
                            max_patches: int | None = 256, workers: int = 4, batch_size: int = 64,
                            patch_size: int = 224, target_mpp: float = 1.0, fallback_mpp: float | None = None,
                            overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Features for every slide of a corpus manifest, cached as safetensors; returns out_dir/index.jsonl."""
    from .synthetic.corpus import load_manifest  # local import: the corpus module is data-side only

    records = load_manifest(manifest_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiling = {"mpp": target_mpp, "patch_size": patch_size, "overlap": 0, "min_tissue": 0.4}
    (out / "encoder.json").write_text(json.dumps({"spec": encoder.spec, "dim": encoder.dim, "tiling": tiling},
                                                 indent=2))
    index = []
    for i, rec in enumerate(records):
        path = out / _feature_name(rec)
        fresh = False
        if path.exists() and not overwrite:
            try:
                meta = read_meta(path)
                fresh = (meta.matches(encoder.spec) and meta.patch_size == patch_size
                         and meta.target_mpp == target_mpp and meta.extra.get("max_patches") == max_patches)
            except (OSError, ValueError):
                fresh = False
        if not fresh:
            sf = extract_slide_features(rec["slide_path"], encoder, patch_size, target_mpp, max_patches,
                                        batch_size, workers, fallback_mpp)
            sf.save(path, extra={"max_patches": max_patches, "slide": rec["slide"]})
            n = len(sf)
        else:
            n = meta.n_patches
        index.append({"slide": rec["slide"], "features": path.name, "n_patches": int(n),
                      "split": rec.get("split"), "diagnosis": rec.get("diagnosis"), "case_id": rec.get("case_id"),
                      "part": rec.get("part")})
        if progress:
            progress(i + 1, len(records))
    if progress and not records:
        progress(0, 0)
    idx = out / "index.jsonl"
    with open(idx, "w") as fh:
        for row in index:
            fh.write(json.dumps(row) + "\n")
    return idx


def load_feature_index(out_dir: str | Path) -> list[dict]:
    """Rows of a corpus feature cache's index.jsonl, each with an absolute `features_path`."""
    out = Path(out_dir)
    if out.is_file():
        out = out.parent
    rows = []
    with open(out / "index.jsonl") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                row["features_path"] = str((out / row["features"]).resolve())
                rows.append(row)
    return rows
