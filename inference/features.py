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
import logging
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

log = logging.getLogger(__name__)

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


READERS = ("threads", "processes", "auto")


def resolve_readers(readers: str, device) -> str:
    """How patches are decoded for an encoder on `device`: "threads" or "processes" as given; "auto" is
    processes on CUDA (decoding never holds the GIL the encoder's feeding thread needs, so reading does not
    starve the GPU) and threads on the CPU (the encoder is the whole cost there; no spawn start-up).

    A daemonic process may not start children (multiprocessing refuses): there it is threads, whatever was
    asked. Celery's prefork pool runs each task in such a process (billiard marks it daemonic for the
    standard library too); a gpu worker started with `--pool threads` (or the command-line tools) gets
    processes."""
    import multiprocessing

    if readers not in READERS:
        raise ValueError(f"readers must be 'threads', 'processes' or 'auto', got {readers!r}")
    if readers == "auto":
        readers = "processes" if torch.device(device).type == "cuda" else "threads"
    if readers == "processes" and multiprocessing.current_process().daemon:
        log.info("patch readers: threads (a daemonic process may not start reader processes)")
        return "threads"
    return readers


def encode_grid(path: str | Path, grid: PatchGrid, encoder: PatchEncoder, batch_size: int | None = None,
                workers: int = 4, progress: Progress | None = None,
                readers: str = "threads") -> tuple[torch.Tensor, dict[str, float]]:
    """Read the grid's patches in parallel and encode them in batches; returns (features, timings).

    `readers="threads"`: a thread pool, one OpenSlide handle per thread (OpenSlide releases the GIL while it
    decodes). `readers="processes"`: `workers` spawned processes decode chunks of patches (no GIL at all:
    what a GPU needs so that reading never starves it); "auto": processes on CUDA, threads on the CPU
    (`resolve_readers`). Either way a window of patches stays in flight and
    the features stay on the encoder's device until the end (no host sync per batch). `batch_size` None:
    the encoder's default (256 on CUDA, 64 on the CPU)."""
    n = len(grid)
    timings = {"read_seconds": 0.0, "read_wait_seconds": 0.0, "encode_seconds": 0.0}
    if n == 0:
        if progress:
            progress(0, 0)
        return torch.zeros(0, encoder.dim), timings
    readers = resolve_readers(readers, encoder.device)
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

    `mpp` overrides the file's microns per pixel (a value set for this slide); `readers` "threads",
    "processes" (decoding in worker processes) or "auto" (processes on CUDA): see `encode_grid`."""
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


class _ThreadReaders:
    """`read_chunk_at` on reading threads, each with its own handles (several slides open per thread)."""

    def __init__(self):
        self.local = threading.local()
        self.caches: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, path: str, level: int, read_size: int, patch_size: int, coords: np.ndarray):
        from .slides import read_chunk_at

        cache = getattr(self.local, "cache", None)
        if cache is None:
            cache = self.local.cache = {}
            with self.lock:
                self.caches.append(cache)
        return read_chunk_at(path, level, read_size, patch_size, coords, cache)

    def close(self) -> None:
        for cache in self.caches:
            for h in cache.values():
                h.close()
            cache.clear()


def _plan(path: str, patch_size: int, target_mpp: float, max_patches: int | None, min_tissue: float,
          fallback_mpp: float | None, overlap: int, mpp: float | None) -> tuple[PatchGrid, float]:
    t0 = time.perf_counter()
    slide = open_slide(path)
    try:
        grid = patch_grid(slide, patch_size=patch_size, target_mpp=target_mpp, max_patches=max_patches,
                          min_tissue=min_tissue, fallback_mpp=fallback_mpp, overlap=overlap, mpp=mpp)
    finally:
        slide.close()
    return grid, t0


def iter_slide_features(slide_paths, encoder: PatchEncoder, patch_size: int = 224, target_mpp: float = 1.0,
                        max_patches: int | None = None, batch_size: int | None = None, workers: int = 4,
                        fallback_mpp: float | None = None, min_tissue: float = 0.4, overlap: int = 0,
                        mpps=None, readers: str = "threads", in_flight: int = 2, chunk: int | None = None,
                        progress: Progress | None = None):
    """`extract_slide_features` for many slides with several in flight: yields SlideFeatures in order.

    While the encoder works on one slide, the next ``in_flight - 1`` slides are planned (tissue mask and
    grid, on a planning thread) and their patches read: reading is one stream of chunks over all slides
    through one pool (threads, or spawned processes with ``readers="processes"``), and an encoder batch may
    hold the end of one slide and the start of the next, so the encoder never waits for a slide boundary.
    Features stay on the encoder's device until their slide is complete (one device -> host copy per slide).
    ``mpps``: per-slide microns-per-pixel overrides (None entries: the file's). Timings per slide:
    read_seconds (its chunks' reading), read_wait_seconds (the encoder waiting for its chunks),
    encode_seconds (its share of the batches), wall_seconds (planning start to last feature; slides overlap).
    ``progress(done_slides, total_slides)``.
    """
    paths = [str(p) for p in slide_paths]
    mpps = list(mpps) if mpps is not None else [None] * len(paths)
    if len(mpps) != len(paths):
        raise ValueError("mpps must have one entry per slide")
    readers = resolve_readers(readers, encoder.device)
    if not paths:
        if progress:
            progress(0, 0)
        return
    bs = int(batch_size or encoder.default_batch_size())
    size = int(chunk or max(4, min(64, bs // max(1, workers))))
    in_flight = max(1, int(in_flight))
    planner = ThreadPoolExecutor(1, thread_name_prefix="slide-plan")
    thread_reader = None
    if readers == "processes":
        import multiprocessing

        from .slides import read_chunk_at

        pool = ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"))
        read_fn = read_chunk_at
    else:
        pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="patch-read")
        read_fn = thread_reader = _ThreadReaders()
    plans: deque = deque()  # (slide index, future of (grid, t0)) planned ahead
    state: dict[int, dict[str, Any]] = {}  # slides being read/encoded
    pending: deque = deque()  # (slide index, n patches, future of (images, seconds))
    window = max(2, 2 * max(1, workers), (2 * bs) // size)
    next_plan = 0
    next_read = (0, 0)  # (slide index, next patch index) of the read cursor
    next_out = 0  # the next slide to yield
    buffered: list[tuple[int, np.ndarray]] = []
    have = 0
    done = 0

    def plan_more() -> None:
        nonlocal next_plan
        while next_plan < len(paths) and next_plan < next_out + in_flight and len(plans) + len(state) < in_flight + 1:
            plans.append((next_plan, planner.submit(_plan, paths[next_plan], patch_size, target_mpp, max_patches,
                                                    min_tissue, fallback_mpp, overlap, mpps[next_plan])))
            next_plan += 1

    def submit_more(block: bool = False) -> None:
        """Keep `window` chunks in flight; a next slide whose plan is not ready yet is waited for only when
        `block` (nothing else to do), so the encoder never waits for a tissue mask."""
        nonlocal next_read
        while len(pending) < window:
            s, start = next_read
            if s >= len(paths) or s >= next_out + in_flight or "error" in state.get(s, {}):
                return
            if s not in state:
                if not plans or plans[0][0] != s:
                    plan_more()
                    if not plans or plans[0][0] != s:
                        return
                if not (block or plans[0][1].done()):
                    return
                try:
                    grid, t0 = plans.popleft()[1].result()
                except Exception as exc:  # raised when its turn comes, after the slides before it
                    state[s] = {"error": exc}
                    return
                state[s] = {"grid": grid, "t0": t0, "outs": [], "encoded": 0, "read": 0.0, "wait": 0.0,
                            "encode": 0.0}
                plan_more()
            grid = state[s]["grid"]
            if start >= len(grid):
                next_read = (s + 1, 0)
                continue
            coords = grid.coords[start:start + size]
            pending.append((s, len(coords), pool.submit(read_fn, paths[s], grid.level, grid.read_size,
                                                        grid.patch_size, coords)))
            next_read = (s, start + len(coords))

    def encode(images: np.ndarray, owners: list[tuple[int, int]]) -> None:
        t0 = time.perf_counter()
        feats = encoder.encode_on_device(images, batch_size=bs)
        dt = time.perf_counter() - t0
        at = 0
        for s, n in owners:
            st = state[s]
            st["outs"].append(feats[at:at + n])
            st["encoded"] += n
            st["encode"] += dt * n / len(images)
            at += n

    def finished(s: int) -> SlideFeatures:
        st = state.pop(s)
        grid = st["grid"]
        feats = torch.cat(st["outs"]).float().cpu() if st["outs"] else torch.zeros(0, encoder.dim)
        return SlideFeatures(features=feats, coords=grid.coords.copy(), patch_size_level0=grid.patch_size_level0,
                             patch_size=grid.patch_size, target_mpp=grid.target_mpp, slide_mpp=grid.slide_mpp,
                             dimensions=grid.dimensions, encoder_spec=dict(encoder.spec),
                             n_candidates=grid.n_candidates, read_seconds=st["read"],
                             read_wait_seconds=st["wait"], encode_seconds=st["encode"],
                             wall_seconds=time.perf_counter() - st["t0"])

    try:
        plan_more()
        while next_out < len(paths):
            submit_more()
            if "error" in state.get(next_out, {}):
                raise state[next_out]["error"]
            if next_out in state and state[next_out]["encoded"] == len(state[next_out]["grid"]) and not any(
                    s == next_out for s, _ in buffered):
                sf = finished(next_out)
                next_out += 1
                done += 1
                if progress:
                    progress(done, len(paths))
                yield sf  # reads of the next slides go on meanwhile
                continue
            if not pending:
                if buffered:  # the end of the data: encode what is left
                    images = np.concatenate([b for _, b in buffered])
                    owners = [(s, len(b)) for s, b in buffered]
                    buffered, have = [], 0
                    encode(images, owners)
                    continue
                before = (next_read, len(state))
                submit_more(block=True)
                if not pending and (next_read, len(state)) == before:
                    raise RuntimeError("slide pipeline stalled")  # not reached: plans are taken in order
                continue
            s, n, fut = pending.popleft()
            t0 = time.perf_counter()
            images, seconds = fut.result()
            state[s]["wait"] += time.perf_counter() - t0
            state[s]["read"] += seconds
            buffered.append((s, images))
            have += n
            submit_more()
            if have >= bs or not pending:
                stacked = np.concatenate([b for _, b in buffered])
                owners = [(o, len(b)) for o, b in buffered]
                take = min(bs, len(stacked))
                # Split ownership at `take` rows; the rest stays buffered.
                head, rest, at = [], [], 0
                for o, m in owners:
                    if at + m <= take:
                        head.append((o, m))
                    elif at < take:
                        head.append((o, take - at))
                        rest.append((o, at + m - take))
                    else:
                        rest.append((o, m))
                    at += m
                encode(stacked[:take], head)
                left = stacked[take:]
                buffered, at = [], 0
                for o, m in rest:
                    buffered.append((o, left[at:at + m]))
                    at += m
                have = len(left)
    finally:
        planner.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
        if thread_reader is not None:
            thread_reader.close()


def _feature_name(rec: dict) -> str:
    if "case_id" in rec:
        return f"{rec['case_id']}_{rec.get('part', 'A')}.safetensors"
    return Path(rec["slide"]).stem + ".safetensors"


def extract_corpus_features(manifest_path: str | Path, encoder: PatchEncoder, out_dir: str | Path,
                            max_patches: int | None = 256, workers: int = 4, batch_size: int = 64,
                            patch_size: int = 224, target_mpp: float = 1.0, fallback_mpp: float | None = None,
                            overwrite: bool = False, progress: Progress | None = None, in_flight: int = 2,
                            readers: str = "threads") -> Path:
    """Features for every slide of a corpus manifest, cached as safetensors; returns out_dir/index.jsonl.

    Slides are extracted with ``in_flight`` of them in the pipeline at once (`iter_slide_features`)."""
    from .synthetic.corpus import load_manifest  # local import: the corpus module is data-side only

    records = load_manifest(manifest_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiling = {"mpp": target_mpp, "patch_size": patch_size, "overlap": 0, "min_tissue": 0.4}
    (out / "encoder.json").write_text(json.dumps({"spec": encoder.spec, "dim": encoder.dim, "tiling": tiling},
                                                 indent=2))
    counts: dict[int, int] = {}
    todo: list[int] = []
    n_done = 0
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
        if fresh:
            counts[i] = meta.n_patches
            n_done += 1
            if progress:
                progress(n_done, len(records))
        else:
            todo.append(i)
    # The slides to extract go through one pipeline with several in flight (reading never waits on a slide
    # boundary); each is saved as soon as it is complete.
    stream = iter_slide_features([records[i]["slide_path"] for i in todo], encoder, patch_size, target_mpp,
                                 max_patches, batch_size, workers, fallback_mpp, in_flight=in_flight,
                                 readers=readers)
    for i, sf in zip(todo, stream, strict=True):
        rec = records[i]
        sf.save(out / _feature_name(rec), extra={"max_patches": max_patches, "slide": rec["slide"]})
        counts[i] = len(sf)
        n_done += 1
        if progress:
            progress(n_done, len(records))
    index = [{"slide": rec["slide"], "features": _feature_name(rec), "n_patches": int(counts[i]),
              "split": rec.get("split"), "diagnosis": rec.get("diagnosis"), "case_id": rec.get("case_id"),
              "part": rec.get("part")} for i, rec in enumerate(records)]
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
