"""Patch encoders behind one interface: images in, one feature vector per patch out.

API (stable):

- `PatchEncoder(nn.Module)`: `.dim`, `.spec` (complete, JSON-able: `build_encoder(spec)` rebuilds the same
  encoder), `.input_size`, `.weight_files` (the files its weights came from), `.preprocess(images) -> float
  [N, 3, S, S]` on the encoder's device, `forward(x) -> [N, dim]`, `encode(images, batch_size=None) -> float32
  CPU Tensor [N, dim]` and `encode_on_device(images, batch_size=None) -> Tensor [N, dim]` on the encoder's
  device (no host sync: what the slide pipeline uses). `images`: uint8 ndarray or tensor [N, H, W, 3] (RGB),
  any H, W.
- `build_encoder(spec, device="cpu", dtype=None, compile=False) -> PatchEncoder`. On CUDA the neural kinds
  hold bf16 weights (`dtype` overrides); `compile=True` wraps the network in `torch.compile`. spec["kind"]:
  - "builtin" (default name "he-texture-v1"): `HETextureEncoder`, described below. No weights.
  - "random": a randomly initialised conv net (seeded). A baseline for probes and benches, not a model.
  - "hf": any local Hugging Face vision model directory: `{"kind": "hf", "path": DIR, "pooling": "cls" |
    "mean" | "cls+mean" | "pooler", "model_class": optional transformers class name, "mean", "std",
    "input_size"}`; mean/std/size from DIR's preprocessor_config.json unless given; none at all is an error.
  - "timm": `{"kind": "timm", "model_name": ..., "path": DIR or "weights": FILE, "model_kwargs": {...},
    "pooling": "head" | "cls" | "cls+mean" | "mean", "mean": [...], "std": [...], "input_size": 224}`;
    layer classes are named by strings (`"mlp_layer": "SwiGLUPacked"`, `"act_layer": "SiLU"`), so every spec
    is JSON. mean and std are required (timm's defaults for an untrained model are not the model's).
  - "conch": CONCH v1 (the open_clip CoCa layout its authors publish: `visual.trunk.*`, the attentional
    pooler, `text.*`) and CONCH v1.5 (`trunk.*`, `attn_pool_contrast.*`): the image tower only.
  - `{"preset": NAME, "path": DIR}`: a published foundation model (`inference.presets`, `python -m
    inference.encoders --list`), expanded into the complete spec above.
- Loading is strict: a missing file, a missing or unexpected weight and a wrong shape are an
  `EncoderLoadError` that names them (only parts a preset declares unused, e.g. CONCH's text tower, are
  skipped, and they are listed in the spec).
- `weights_fingerprint(spec) -> str`: SHA-256 over the weight files a spec loads ("" for weightless kinds),
  memoised per file by (size, mtime); the feature caches are keyed by it.
- `ensure_torchvision_importable()`: lets timm import next to a CPU torch when PyPI's CUDA torchvision is
  installed (see its docstring).

Nothing here downloads anything: every path must exist locally.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import math
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Images = np.ndarray | torch.Tensor  # uint8 RGB patches [N, H, W, 3] (or one [H, W, 3])
CPU_BATCH, CUDA_BATCH = 64, 256  # default encode batch sizes


class EncoderLoadError(ValueError):
    """Weights that do not fit the encoder: the message names the missing, unexpected or mis-shaped keys."""


class PatchEncoder(nn.Module):
    """Base class: subclasses set dim, spec, input_size and implement forward on preprocessed input."""

    dim: int
    input_size: int
    # Neural encoders hold bf16 weights on CUDA; the built-in one keeps fp32 (it measures small
    # differences in optical density that bf16 would round away).
    autocast: bool = True

    def __init__(self, spec: dict[str, Any], input_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.input_size = int(input_size)
        self.weight_files: list[Path] = []
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the network's weights are held in (bf16 on CUDA for the neural kinds)."""
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def default_batch_size(self) -> int:
        return CUDA_BATCH if self.device.type == "cuda" else CPU_BATCH

    def _to_float(self, images: Images) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, S, S] in 0..1 on the encoder's device, resized to input_size.

        The uint8 batch crosses to the GPU (a quarter of the float bytes) from pinned memory without a
        host sync; conversion and resizing run on the device."""
        x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got {tuple(x.shape)}")
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def preprocess(self, images: Images) -> torch.Tensor:
        return (self._to_float(images) - self.mean) / self.std

    @torch.no_grad()
    def encode_on_device(self, images: Images, batch_size: int | None = None) -> torch.Tensor:
        """Features [N, dim] left on the encoder's device (float32): no host sync per batch."""
        n = len(images)
        if n == 0:
            return torch.zeros(0, self.dim, device=self.device)
        bs = int(batch_size or self.default_batch_size())
        dtype = self.compute_dtype
        use_amp = self.autocast and self.device.type == "cuda" and dtype == torch.float32
        outs = []
        for i in range(0, n, bs):
            x = self.preprocess(images[i:i + bs]).to(dtype)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                outs.append(self(x).float())
        return torch.cat(outs)

    @torch.no_grad()
    def encode(self, images: Images, batch_size: int | None = None) -> torch.Tensor:
        """float32 CPU features [N, dim] for uint8 images [N, H, W, 3]."""
        return self.encode_on_device(images, batch_size).cpu()


# ---------------------------------------------------------------------------------------------- built-in
def _gauss1d(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


class HETextureEncoder(PatchEncoder):
    """A fixed, hand-designed H&E feature extractor in torch ("he-texture-v1"): no weights, deterministic.

    Why: it needs nothing downloaded, gives identical features on every machine, runs at hundreds of
    patches per second on a CPU, and measures the cues H&E morphology rests on, so the Q-Former can be
    trained and demonstrated anywhere. Real deployments swap in a foundation model (Phikon, UNI, ...).

    What (all on a 224 px patch, ~1 um/px):
    1. Stain deconvolution (Ruifrok-Johnston) of optical density into hematoxylin, eosin and residual.
    2. Colour: per-stain means, exceedance fractions, multi-scale standard deviations, soft histograms of
       H and E and a joint H x E histogram (how much is nuclei, stroma, cytoplasm, mucin, glass).
    3. Nuclei: a scale-normalised Laplacian-of-Gaussian scale space on H (sigma 1-12 px): blob response,
       peak density (nuclear density) per scale, and the distribution of the best scale per blob pixel
       (nuclear size and pleomorphism); mitoses and lymphocytes show up as small very dark blobs.
    4. Eosin and lumen blobs: LoG on E (keratin pearls, eosinophilic nests) and on a soft "white" map
       (lumens, fat, clefts, vacuoles) at several sizes.
    5. Texture and orientation: gradient energy at three scales and structure-tensor coherence (fibrous,
       oriented stroma vs isotropic sheets of cells).
    6. Architecture: fraction of windows (3-31 px) that are white, nuclear-dense or eosin-dense; nuclear
       and eosin density in rings around lumens (glands); heterogeneity over a 4 x 4 grid of the patch.
    Features are scaled to be O(1); downstream models should still normalise (LayerNorm) their input.
    """

    autocast = False
    # Effective LoG scales (px at the input resolution) come from a pyramid: octave o, level sigma s.
    OCTAVES = 4
    LEVEL_SIGMAS = (1.0, 1.5)

    def __init__(self, spec: dict[str, Any] | None = None):
        spec = {"kind": "builtin", "name": "he-texture-v1", "input_size": 224, **(spec or {})}
        super().__init__(spec, spec["input_size"], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        stains = torch.tensor([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.0, 0.0, 0.0]])
        stains[:2] = stains[:2] / stains[:2].norm(dim=1, keepdim=True)
        stains[2] = torch.linalg.cross(stains[0], stains[1])
        stains[2] = stains[2] / stains[2].norm()
        self.register_buffer("stain_inv", torch.linalg.inv(stains), persistent=False)
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("lap", lap.view(1, 1, 3, 3), persistent=False)
        sob = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([sob, sob.T]).unsqueeze(1), persistent=False)
        for s in self.LEVEL_SIGMAS:
            self.register_buffer(f"g{int(s * 10)}", _gauss1d(s), persistent=False)
        with torch.no_grad():
            self.dim = int(self.forward(torch.rand(1, 3, self.input_size, self.input_size)).shape[1])

    def preprocess(self, images: Images) -> torch.Tensor:
        return self._to_float(images)  # 0..1 RGB; the optical-density transform happens in forward

    # -- helpers on [B, C, H, W]
    def _blur(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self._depthwise(x, getattr(self, f"g{int(sigma * 10)}"), separable=True)

    def _conv3(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._depthwise(x, k.view(3, 3), separable=False)

    @staticmethod
    def _depthwise(x: torch.Tensor, k: torch.Tensor, separable: bool) -> torch.Tensor:
        """Same filter on every channel of every image, replicate padding. Batch and channels are folded
        into one grouped convolution in channels_last layout: oneDNN's fast depthwise path on CPU (10-50x
        faster than one-channel or channels-first convolutions here)."""
        b, c, hh, ww = x.shape
        n = b * c
        pad = k.shape[-1] // 2
        y = F.pad(x.reshape(1, n, hh, ww), (pad, pad, pad, pad), mode="replicate")
        y = y.contiguous(memory_format=torch.channels_last)
        if separable:
            y = F.conv2d(y, k.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
            y = F.conv2d(y, k.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
        else:
            y = F.conv2d(y, k.view(1, 1, *k.shape).expand(n, 1, *k.shape), groups=n)
        return y.contiguous().reshape(b, c, hh, ww)

    @staticmethod
    def _max3(x: torch.Tensor) -> torch.Tensor:
        """3x3 max filter (max_pool2d is slow on CPU; a row max_pool1d and shifted maxima are not)."""
        b, c, hh, ww = x.shape
        m = F.max_pool1d(x.reshape(-1, 1, ww), 3, 1, 1).reshape(b, c, hh, ww)
        p = F.pad(m, (0, 0, 1, 1), value=float("-inf"))
        return torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])

    @staticmethod
    def _mean(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1)

    @staticmethod
    def _soft_frac(x: torch.Tensor, t: float, w: float) -> torch.Tensor:
        return torch.sigmoid((x - t) / w).flatten(1).mean(1)

    def _blob_feats(self, L: torch.Tensor, sigma: float, t1: float, t2: float, tp: float) -> list[torch.Tensor]:
        """Stats of one scale-normalised LoG map [B, 1, h, w]: blob response (bright and dark), share of
        strong responses, and peak density (blobs per 1000 input px, x sigma so scales are comparable)."""
        L = L.contiguous()
        peaks = (L == self._max3(L)) & (L > tp)
        scale = (self.input_size / L.shape[-1]) ** 2
        dens = peaks.flatten(1).float().mean(1) / scale * 1e3 * sigma
        return [self._mean(F.relu(L)) * 4, self._mean(F.relu(-L)) * 4, self._soft_frac(L, t1, 0.03),
                self._soft_frac(L, t2, 0.05), torch.log1p(dens * 10)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float RGB in 0..1 [B, 3, S, S] -> features [B, dim]."""
        od = -torch.log((x * 255.0 + 1.0) / 256.0)
        conc = torch.einsum("bchw,cd->bdhw", od, self.stain_inv)
        h, e, r = conc[:, 0:1], conc[:, 1:2], conc[:, 2:3]
        odsum = od.sum(1, keepdim=True)
        gray = x.mean(1, keepdim=True)
        white = torch.sigmoid((0.3 - odsum) / 0.05)
        feats: list[torch.Tensor] = []

        # Pyramid of the maps everything below works on: H, E, white, gray*2, residual, OD/2.
        base = torch.cat([h, e, white, gray * 2, r, odsum / 2], 1)
        pyr = [base]
        for _ in range(self.OCTAVES - 1):
            pyr.append(F.avg_pool2d(pyr[-1], 2))

        # Colour: means, multi-scale spread, exceedance fractions, soft histograms (on a stride-2 subsample).
        feats += list(base.flatten(2).mean(2).unbind(1))
        for i, p in enumerate(pyr):  # level 0 on a stride-2 subsample: same spread, a quarter of the work
            p = p[..., ::2, ::2] if i == 0 else p
            feats += list((p.flatten(2).std(2) * 2).unbind(1))
        hs, es = h[..., ::2, ::2].contiguous(), e[..., ::2, ::2].contiguous()
        feats += [self._soft_frac(hs, t, 0.05) for t in (0.3, 0.6, 0.9, 1.2)]
        feats += [self._soft_frac(es, t, 0.05) for t in (0.2, 0.4, 0.6)]
        hs, es = hs[..., ::2, ::2].contiguous(), es[..., ::2, ::2].contiguous()  # histograms: 56 x 56 samples
        feats += list((self._soft_hist(hs, -0.1, 2.0, 12).mean(2) * 4).unbind(1))
        feats += list((self._soft_hist(es, -0.1, 1.2, 12).mean(2) * 4).unbind(1))
        hj, ej = self._soft_hist(hs, -0.1, 2.0, 6), self._soft_hist(es, -0.1, 1.2, 6)
        feats += list((torch.bmm(hj, ej.transpose(1, 2)).flatten(1) / hj.shape[2] * 6).unbind(1))

        # Scale space: scale-normalised -LoG of H, E and white at sigma = 2^octave * (1, 1.5). Only the
        # nuclear channel is worth full resolution; the rest starts at octave 1 (4x cheaper).
        logs: list[tuple[float, torch.Tensor]] = []
        blurred: dict[int, torch.Tensor] = {}
        for o, p in enumerate(pyr):
            for s in self.LEVEL_SIGMAS:
                g = self._blur(p[:, :1] if o == 0 else p[:, :4], s)
                if s == 1.0:
                    blurred[o] = g
                logs.append((s * 2**o, -self._conv3(g[:, :3], self.lap) * s * s))
        for sigma, L in logs:  # nuclei (H) at every scale
            feats += self._blob_feats(L[:, 0:1], sigma, 0.15, 0.4, 0.25)
        for sigma, L in logs:  # eosinophilic blobs (keratin, nests) and clear spaces (lumens, fat, vacuoles)
            if sigma >= 2:
                feats += self._blob_feats(L[:, 1:2], sigma, 0.1, 0.25, 0.15)[::2]
            if sigma >= 3:
                feats += self._blob_feats(L[:, 2:3], sigma, 0.1, 0.3, 0.2)[::2]
        # Best nuclear scale per blob pixel, on a 1/4-resolution grid: nuclear size distribution.
        q = self.input_size // 4
        stack = torch.cat([F.adaptive_max_pool2d(L[:, 0:1], q) if L.shape[-1] >= q else
                           F.interpolate(L[:, 0:1], size=(q, q), mode="nearest") for _, L in logs], 1)
        best, arg = stack.max(1)
        onehot = F.one_hot(arg, len(logs)).float() * (best > 0.25).float().unsqueeze(-1)
        feats += list((onehot.flatten(1, 2).mean(1) * 4).unbind(1))
        feats.append((best <= 0.25).float().flatten(1).mean(1))

        # Texture and orientation: gradients of H, E, gray at three scales; structure-tensor coherence.
        for o in (1, 2, 3):
            g = blurred[o][:, [0, 1, 3]]
            gx, gy = self._conv3(g, self.sobel[0:1]), self._conv3(g, self.sobel[1:2])
            mag = torch.sqrt(gx * gx + gy * gy + 1e-8) * 2**o * 10
            feats += list(mag.flatten(2).mean(2).unbind(1)) + list(mag.flatten(2).std(2).unbind(1))
            if o < 3:
                for k in (8, 16):
                    jxx, jyy, jxy = (F.avg_pool2d(t, k // 2**o) for t in (gx * gx, gy * gy, gx * gy))
                    tr = jxx + jyy
                    coh = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2 + 1e-12) / (tr + 1e-6)
                    feats += list(coh.flatten(2).mean(2).unbind(1))
                    feats += list(((coh * tr).flatten(2).sum(2) / (tr.flatten(2).sum(2) + 1e-6)).unbind(1))

        # Architecture: share of windows that are clear, nuclear-dense or eosin-dense, at 4 window sizes.
        p1 = pyr[1]  # 112 px
        nuc = torch.sigmoid((p1[:, 0:1] - 0.6) / 0.08)
        eos = torch.sigmoid((p1[:, 1:2] - 0.45) / 0.06)
        masks = torch.cat([p1[:, 2:3], nuc, eos], 1)
        for k in (2, 4, 8, 16):
            p = F.avg_pool2d(masks, k, stride=max(1, k // 2)) if k > 1 else masks
            for c, t in enumerate((0.85, 0.5, 0.7)):
                feats.append(self._soft_frac(p[:, c], t, 0.05))
        # Glands: nuclei and eosin in rings around lumens (at 1/4 resolution).
        p2 = pyr[2]
        lumen = torch.sigmoid((p2[:, 2:3] - 0.8) / 0.05)
        hblob = F.adaptive_max_pool2d(F.relu(logs[4][1][:, 0:1]), q)  # sigma 3 nuclei
        for k in (1, 2, 4):
            ring = F.relu(F.max_pool2d(lumen, 2 * k + 1, 1, k) - lumen)
            area = ring.flatten(1).sum(1) + 1.0
            feats += [(hblob * ring).flatten(1).sum(1) / area * 4, (p2[:, 1:2] * ring).flatten(1).sum(1) / area * 2,
                      self._mean(ring) * 2]
        # Heterogeneity over a 4 x 4 grid.
        grid = F.adaptive_avg_pool2d(torch.cat([p1[:, :3], nuc], 1), 4).flatten(2)  # [B, 4, 16]
        feats += list((grid.std(2) * 3).unbind(1)) + list(grid.amin(2).unbind(1)) + list(grid.amax(2).unbind(1))
        return torch.stack(feats, 1)

    @staticmethod
    def _soft_hist(x: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
        """Triangular-kernel soft histogram weights [B, bins, H*W]."""
        centers = torch.linspace(lo, hi, bins, device=x.device).view(1, bins, 1)
        width = (hi - lo) / (bins - 1)
        return F.relu(1 - (x.flatten(1).unsqueeze(1) - centers).abs() / width)


# ------------------------------------------------------------------------------------------- random conv
class RandomConvEncoder(PatchEncoder):
    """Random-init conv net (seeded): a baseline showing what an encoder that knows nothing gives."""

    autocast = False

    def __init__(self, spec: dict[str, Any] | None = None):
        spec = {"kind": "random", "seed": 0, "dim": 256, "input_size": 224, **(spec or {})}
        super().__init__(spec, spec["input_size"])
        g = torch.Generator().manual_seed(int(spec["seed"]))
        widths = [3, 32, 64, 128, int(spec["dim"])]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            conv = nn.Conv2d(a, b, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2 / (a * 9)))
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.dim = int(spec["dim"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((2, 3))


# ------------------------------------------------------------------------------------------ hf and timm
def ensure_torchvision_importable() -> bool:
    """Make `import torchvision` (and so `import timm`) work next to a CPU-only torch.

    PyPI's Linux torchvision wheel is a CUDA build; with a CPU torch its C extension cannot load and
    torchvision's import then dies registering fake kernels for the missing `torchvision::nms`/`qnms`
    ops. timm imports torchvision unconditionally, so it would be unusable. Defining those two op schemas
    lets the import succeed; the detection ops stay unavailable (no encoder here uses them). A working
    torchvision is left alone. Returns whether torchvision imports.
    """
    mod = sys.modules.get("torchvision", False)
    if mod:
        return True
    if mod is None:  # marked absent by someone else (e.g. inference.bridge); try again properly
        del sys.modules["torchvision"]
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401

        return True
    except RuntimeError:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    for op in ("nms", "qnms"):
        try:
            getattr(torch.ops.torchvision, op)
        except (AttributeError, RuntimeError):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    try:
        import torchvision  # noqa: F401, F811

        try:  # transformers caches "torchvision available?"; refresh it
            from transformers.utils import import_utils

            for fn in ("is_torchvision_available", "is_torchvision_v2_available"):
                cached = getattr(import_utils, fn, None)
                if hasattr(cached, "cache_clear"):
                    cached.cache_clear()
        except ImportError:
            pass
        return True
    except Exception:  # noqa: BLE001 - any failure means unusable; callers raise a clear error
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False


# ------------------------------------------------------------------------------------- strict loading
def _names(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str,
                      ignore_prefixes: Sequence[str] = ()) -> None:
    """`module.load_state_dict(state)` that refuses any difference and says which keys differ.

    Keys starting with one of `ignore_prefixes` (parts of a checkpoint a spec declares unused, e.g. a text
    tower) are dropped first; every other missing or unexpected key and every wrong shape is an error."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): {_names(wrong)}")
    if problems:
        raise EncoderLoadError(f"{what}: the weights do not fit the architecture: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def _weights_file(spec: dict[str, Any], candidates: Sequence[str] = WEIGHT_NAMES) -> Path:
    """The weight file a spec names: `weights` (absolute, or relative to `path`), else the first of
    `candidates` present in `path`. FileNotFoundError naming what was looked for."""
    root = Path(spec["path"]) if spec.get("path") else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"encoder directory not found: {root}")
    if spec.get("weights"):
        f = Path(spec["weights"])
        f = f if f.is_absolute() or root is None else root / f
        if not f.is_file():
            raise FileNotFoundError(f"encoder weights not found: {f}")
        return f
    if root is None:
        raise FileNotFoundError("the encoder spec names no weights: give 'path' (a directory) or 'weights'")
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no weights in {root}: expected one of {', '.join(candidates)}")


def weight_files(spec: dict[str, Any]) -> list[Path]:
    """The files whose bytes define the encoder's weights (empty for the weightless kinds)."""
    spec = resolve_spec(spec)
    kind = spec.get("kind", "builtin")
    if kind in ("builtin", "random"):
        return []
    if kind == "hf":
        root = Path(spec["path"])
        found = sorted(p for p in root.glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
        if not found:
            raise FileNotFoundError(f"no weights in {root}: expected model.safetensors or pytorch_model.bin")
        return [root / "config.json", *found] if (root / "config.json").is_file() else found
    if kind == "timm" and not spec.get("path") and not spec.get("weights"):
        return []  # an explicitly random-init timm model (benches): its seed is in the spec
    return [_weights_file(spec, spec.get("weight_names") or WEIGHT_NAMES)]


_digests: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _digest_lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    with _digest_lock:
        _digests[key] = h.hexdigest()
    return _digests[key]


def weights_fingerprint(spec: dict[str, Any]) -> str:
    """SHA-256 over the encoder's weight files ("" when it has none): same bytes, same fingerprint."""
    files = weight_files(spec)
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- pooling
POOLINGS = ("cls", "mean", "cls+mean", "pooler", "head")


def pool_tokens(tokens: torch.Tensor, pooling: str, prefix_tokens: int = 1) -> torch.Tensor:
    """[B, T, D] tokens -> [B, D] (or [B, 2D] for "cls+mean": the CLS token beside the mean of the patch
    tokens, registers excluded: Virchow's documented embedding)."""
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, prefix_tokens:].mean(1)
    if pooling == "cls+mean":
        return torch.cat([tokens[:, 0], tokens[:, prefix_tokens:].mean(1)], dim=-1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def _require_norm(spec: dict[str, Any], what: str) -> tuple[list[float], list[float]]:
    mean, std = spec.get("mean"), spec.get("std")
    if not mean or not std or len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{what}: the spec must give the model's normalisation, 'mean' and 'std' (3 values "
                         "each): a model normalised with other statistics gives wrong features silently")
    return [float(v) for v in mean], [float(v) for v in std]


# ---------------------------------------------------------------------------------------------- hf
class HFEncoder(PatchEncoder):
    """Any local Hugging Face vision backbone (ViT/Phikon, DINOv2/Phikon-v2, DINOv2 with registers/Hibou,
    ConvNeXt...), loaded strictly."""

    def __init__(self, spec: dict[str, Any]):
        path = Path(spec["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"HF encoder directory not found: {path}")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"HF encoder directory {path} has no config.json")
        weight_files(spec)  # a directory without weights is a FileNotFoundError, not a random model
        ensure_torchvision_importable()
        import transformers
        from transformers import AutoConfig, AutoModel

        proc = {}
        for name in ("preprocessor_config.json", "image_processor_config.json"):
            if (path / name).exists():
                proc = json.loads((path / name).read_text())
                break
        raw = json.loads((path / "config.json").read_text())
        model_class = spec.get("model_class")
        if model_class:
            cls = getattr(transformers, model_class, None)
            if cls is None:
                raise ValueError(f"transformers has no class {model_class!r}")
            cfg_cls = cls.config_class
            fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "auto_map",
                                                                "transformers_version")}
            cfg = cfg_cls(**fields)
        else:
            cls, cfg = AutoModel, AutoConfig.from_pretrained(path, local_files_only=True)
        size = spec.get("input_size") or _proc_size(proc) or getattr(cfg, "image_size", None)
        if isinstance(size, list | tuple):
            size = size[0]
        if not size:
            raise ValueError(f"{path}: no input size in the spec, the preprocessor config or the model config")
        norm = {"mean": spec.get("mean") or proc.get("image_mean"), "std": spec.get("std") or proc.get("image_std")}
        mean, std = _require_norm(norm, f"HF encoder {path}")
        pooling = spec.get("pooling", "cls")
        if pooling not in ("cls", "mean", "cls+mean", "pooler"):
            raise ValueError(f"HF pooling must be cls, mean, cls+mean or pooler; got {pooling!r}")
        ignore = list(spec.get("ignore_prefixes", []))
        full = {**spec, "kind": "hf", "path": str(path), "pooling": pooling, "input_size": int(size),
                "mean": mean, "std": std, "ignore_prefixes": ignore}
        super().__init__(full, int(size), mean, std)
        kwargs: dict[str, Any] = {"local_files_only": True, "output_loading_info": True}
        if model_class:
            kwargs["config"] = cfg
        if getattr(cfg, "model_type", "") in ("vit", "deit") and pooling != "pooler":
            kwargs["add_pooling_layer"] = False
        model, info = cls.from_pretrained(path, **kwargs)
        problems = []
        missing = sorted(info.get("missing_keys") or [])
        unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.startswith(tuple(ignore)))
        wrong = sorted(str(k) for k in info.get("mismatched_keys") or [])
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_names(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
        if wrong:
            problems.append(f"{len(wrong)} wrong shape(s): {_names(wrong)}")
        if problems:
            raise EncoderLoadError(f"HF encoder {path}: the weights do not fit {type(model).__name__}: "
                                   + "; ".join(problems))
        self.model = model.eval()
        self.pooling = pooling
        self.prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.weight_files = weight_files(full)
        self.dim = int(self._probe_dim())
        self.spec["dim"] = self.dim

    def _probe_dim(self) -> int:
        with torch.no_grad():
            return self.forward(torch.zeros(1, 3, self.input_size, self.input_size)).shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.pooling == "pooler" or getattr(out, "last_hidden_state", None) is None:
            return out.pooler_output.flatten(1)
        hs = out.last_hidden_state
        if hs.ndim == 4:  # conv nets: [B, C, H, W]
            return hs.mean((2, 3))
        return pool_tokens(hs, self.pooling, self.prefix_tokens)


def _proc_size(proc: dict) -> int | None:
    for key in ("crop_size", "size"):
        v = proc.get(key)
        if isinstance(v, int):
            return v
        if isinstance(v, dict):
            for k in ("height", "shortest_edge", "width"):
                if k in v:
                    return int(v[k])
    return None


# --------------------------------------------------------------------------------------------- timm
def _layer(name: str) -> Any:
    """A layer class named in a JSON spec: timm.layers.<name> or torch.nn.<name>."""
    import timm.layers

    for module in (timm.layers, nn):
        found = getattr(module, name, None)
        if callable(found):  # a class, or a partial of one (timm's SwiGLUPacked)
            return found
    raise ValueError(f"unknown layer {name!r}: name a class of timm.layers or torch.nn (e.g. SwiGLUPacked, SiLU)")


LAYER_KWARGS = ("mlp_layer", "act_layer", "norm_layer", "embed_layer", "block_fn")


def timm_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON model kwargs -> timm.create_model kwargs (layer names -> classes)."""
    out = dict(model_kwargs)
    for key in LAYER_KWARGS:
        if isinstance(out.get(key), str):
            out[key] = _layer(out[key])
    out.setdefault("num_classes", 0)
    return out


def _check_timm_config(root: Path | None, model_name: str) -> None:
    """A timm hub directory's config.json names its architecture: refuse a preset for another one."""
    if root is None or not (root / "config.json").is_file():
        return
    try:
        arch = json.loads((root / "config.json").read_text()).get("architecture")
    except (ValueError, AttributeError):
        return
    if arch and arch != model_name:
        raise EncoderLoadError(f"{root}/config.json says architecture {arch!r}, but the spec builds "
                               f"{model_name!r}: wrong preset for this directory?")


def _resample_pos_embed(model: nn.Module, state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    """Checkpoints saved at another input size (CONCH v1.5): resample the position table to the model's grid."""
    from timm.layers import resample_abs_pos_embed

    own = dict(model.named_parameters()).get(key)
    if own is None or key not in state or state[key].shape == own.shape:
        return state
    prefix = 0 if getattr(model if "." not in key else model.trunk, "no_embed_class", False) else 1
    grid = (model if "." not in key else model.trunk).patch_embed.grid_size
    state = dict(state)
    state[key] = resample_abs_pos_embed(state[key], new_size=list(grid), num_prefix_tokens=prefix,
                                        interpolation="bicubic", antialias=False, verbose=False)
    return state


class TimmEncoder(PatchEncoder):
    """A timm backbone with a local state dict (UNI, UNI2-h, Virchow, H-optimus, Prov-GigaPath and their like)."""

    def __init__(self, spec: dict[str, Any]):
        if not ensure_torchvision_importable():
            raise RuntimeError("timm needs an importable torchvision; install one matching torch")
        import timm

        name = spec["model_name"]
        root = Path(spec["path"]) if spec.get("path") else None
        random_init = root is None and not spec.get("weights")
        weights = None if random_init else _weights_file(spec, spec.get("weight_names") or WEIGHT_NAMES)
        _check_timm_config(root, name)
        mean, std = _require_norm(spec, f"timm encoder {name}")
        pooling = spec.get("pooling", "head")
        if pooling not in ("head", "cls", "mean", "cls+mean"):
            raise ValueError(f"timm pooling must be head, cls, mean or cls+mean; got {pooling!r}")
        kwargs = timm_kwargs(spec.get("model_kwargs", {}))
        if random_init:
            torch.manual_seed(int(spec.get("seed", 0)))
        model = timm.create_model(name, pretrained=False, **kwargs)
        if weights is not None:
            state = _load_state_dict(weights)
            if spec.get("resample_pos_embed"):
                state = _resample_pos_embed(model, state, "pos_embed")
            load_state_strict(model, state, f"timm encoder {name} from {weights}", spec.get("ignore_prefixes", ()))
        size = spec.get("input_size") or kwargs.get("img_size") or 224
        size = size[-1] if isinstance(size, list | tuple) else size
        full = {**spec, "kind": "timm", "model_name": name, "model_kwargs": dict(spec.get("model_kwargs", {})),
                "pooling": pooling, "input_size": int(size), "mean": mean, "std": std}
        if weights is not None:
            full["weights"] = str(weights)
        super().__init__(full, int(size), mean, std)
        self.model = model.eval()
        self.pooling = pooling
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.weight_files = [weights] if weights is not None else []
        width = int(getattr(model, "num_features", 0))
        self.dim = 2 * width if pooling == "cls+mean" else width
        if not self.dim:
            self.dim = int(self.forward(torch.zeros(1, 3, self.input_size, self.input_size)).shape[1])
        self.spec["dim"] = self.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "head":
            return self.model(x)
        tokens = self.model.forward_features(x)
        return pool_tokens(tokens, self.pooling, self.prefix_tokens)


# -------------------------------------------------------------------------------------------- conch
class _MHAPooler(nn.Module):
    """CONCH v1's AttentionalPooler (open_clip CoCa): learned queries attend to the tokens through
    nn.MultiheadAttention (kdim = the trunk's width). Keys: query, attn.*, ln_q.*, ln_k.*."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, n_queries, d_model]
        x = self.ln_k(x).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[1], -1)
        return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)


class _LinearPooler(nn.Module):
    """CONCH v1.5's AttentionalPooler (TITAN/TRIDENT): bias-free to_q / to_kv / to_out projections."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads = n_head
        inner = (d_model // n_head) * n_head
        self.scale = (d_model // n_head) ** -0.5
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, n_queries, d_model]
        b, h = x.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)  # [B, Q, inner]
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)  # [B, N, inner] each

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], h, -1).transpose(1, 2)  # [B, h, T, d]

        q, k, v = split(q) * self.scale, split(k), split(v)
        sim = q @ k.transpose(-1, -2)
        attn = (sim - sim.amax(-1, keepdim=True).detach()).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, h * q.shape[-1])
        return self.to_out(out)


CONCH_V1_DEFAULTS = {  # conch_ViT-B-16.json of mahmoodlab/CONCH
    "embed_dim": 512, "vision_cfg": {"image_size": 448, "patch_size": 16, "layers": 12, "width": 768,
                                     "num_heads": 12, "mlp_ratio": 4, "attn_pooler_heads": 8,
                                     "n_queries_contrast": 1}}
CONCH_V15_DEFAULTS = {"image_size": 448, "patch_size": 16, "layers": 24, "width": 1024, "num_heads": 16,
                      "mlp_ratio": 4, "init_values": 1.0, "embed_dim": 768, "attn_pooler_heads": 8,
                      "n_queries_contrast": 1}
CONCH_V1_UNUSED = ("text.", "text_decoder.", "logit_scale", "visual.attn_pool_caption.", "visual.ln_caption.")


class ConchEncoder(PatchEncoder):
    """CONCH's image tower: timm ViT trunk -> attentional pooler (1 query) -> LayerNorm [-> proj_contrast].

    v1: MahmoodLab/CONCH `pytorch_model.bin` (keys `visual.*`, plus the text tower and the captioning pooler,
    which are declared unused); architecture from `open_clip_config.json` when the directory has one, else
    conch_ViT-B-16. The default feature is `encode_image(x, proj_contrast=False, normalize=False)` (512-d),
    what the authors use for linear probes; `"proj_contrast": true` applies the contrastive projection.
    v1.5: MahmoodLab/conchv1_5 `pytorch_model_vision.bin` (keys `trunk.*`, `attn_pool_contrast.*`,
    `ln_contrast.*`), ViT-L/16 at 448 px, 768-d.
    """

    def __init__(self, spec: dict[str, Any]):
        if not ensure_torchvision_importable():
            raise RuntimeError("timm needs an importable torchvision; install one matching torch")
        from timm.models.vision_transformer import VisionTransformer

        version = spec.get("version", "v1")
        if version not in ("v1", "v1.5"):
            raise ValueError(f"CONCH version must be v1 or v1.5, got {version!r}")
        v1 = version == "v1"
        weights = _weights_file(spec, spec.get("weight_names") or (
            ("pytorch_model.bin",) if v1 else ("pytorch_model_vision.bin", "pytorch_model.bin")))
        root = Path(spec["path"]) if spec.get("path") else weights.parent
        if v1:
            cfg = copy.deepcopy(CONCH_V1_DEFAULTS)
            if (root / "open_clip_config.json").is_file():
                model_cfg = json.loads((root / "open_clip_config.json").read_text()).get("model_cfg", {})
                cfg["embed_dim"] = model_cfg.get("embed_dim", cfg["embed_dim"])
                cfg["vision_cfg"].update(model_cfg.get("vision_cfg", {}))
            cfg["vision_cfg"].update(spec.get("arch", {}))
            vc, embed = cfg["vision_cfg"], int(cfg["embed_dim"])
        else:
            vc = {**CONCH_V15_DEFAULTS, **spec.get("arch", {})}
            embed = int(vc["embed_dim"])
        mean, std = _require_norm(spec, "CONCH encoder")
        size = int(spec.get("input_size") or vc["image_size"])
        trunk = VisionTransformer(img_size=int(vc["image_size"]), patch_size=int(vc["patch_size"]),
                                  embed_dim=int(vc["width"]), depth=int(vc["layers"]), num_heads=int(vc["num_heads"]),
                                  mlp_ratio=float(vc["mlp_ratio"]), num_classes=0, dynamic_img_size=True,
                                  init_values=vc.get("init_values"))
        pooler = (_MHAPooler if v1 else _LinearPooler)(embed, int(vc["width"]), int(vc["attn_pooler_heads"]),
                                                       int(vc["n_queries_contrast"]))
        tower = nn.Module()
        tower.trunk, tower.attn_pool_contrast, tower.ln_contrast = trunk, pooler, nn.LayerNorm(embed)
        proj = bool(spec.get("proj_contrast", False))
        if v1:
            tower.proj_contrast = nn.Parameter(torch.zeros(embed, embed))
        state = _load_state_dict(weights)
        if v1:
            if not any(k.startswith("visual.") for k in state):
                raise EncoderLoadError(f"{weights}: no visual.* keys; not a CONCH v1 (open_clip CoCa) checkpoint")
            ignore = list(spec.get("ignore_prefixes", CONCH_V1_UNUSED))
            state = {k.removeprefix("visual."): v for k, v in state.items() if not k.startswith(tuple(ignore))}
        else:
            ignore = list(spec.get("ignore_prefixes", ()))
            if "trunk.pos_embed" in state and state["trunk.pos_embed"].shape != trunk.pos_embed.shape:
                state = _resample_pos_embed(tower, state, "trunk.pos_embed")
        load_state_strict(tower, state, f"CONCH {version} from {weights}", ignore)
        full = {**spec, "kind": "conch", "version": version, "weights": str(weights), "input_size": size,
                "mean": mean, "std": std, "proj_contrast": proj, "ignore_prefixes": ignore, "dim": embed}
        super().__init__(full, size, mean, std)
        self.tower, self.proj = tower, proj
        self.weight_files = [weights]
        self.dim = embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tower
        pooled = t.ln_contrast(t.attn_pool_contrast(t.trunk.forward_features(x))[:, 0])
        return pooled @ t.proj_contrast if self.proj else pooled


# ------------------------------------------------------------------------------------------ building
KINDS = {"builtin": HETextureEncoder, "random": RandomConvEncoder, "hf": HFEncoder, "timm": TimmEncoder,
         "conch": ConchEncoder}


def resolve_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A spec with its preset (if it names one) expanded: the complete description `build_encoder` uses."""
    spec = dict(spec or {"kind": "builtin"})
    if spec.get("preset"):
        from inference.presets import expand_preset

        spec = expand_preset(spec)
    return spec


def build_encoder(spec: dict[str, Any] | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, compile: bool = False) -> PatchEncoder:
    """Build (or rebuild from `encoder.spec`) an encoder on `device`, in eval mode.

    On CUDA the neural kinds hold bf16 weights unless `dtype` says otherwise; `compile=True` compiles the
    network with `torch.compile` (first batches are slow while it compiles)."""
    spec = resolve_spec(spec)
    kind = spec.get("kind", "builtin")
    if kind not in KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; one of {sorted(KINDS)}")
    enc = KINDS[kind](spec)
    stated = spec.get("dim")
    if kind != "random" and isinstance(stated, int) and stated != enc.dim:
        raise EncoderLoadError(f"the spec states {stated}-d features but the model gives {enc.dim}-d "
                               f"({spec.get('preset') or kind}): wrong architecture for these weights?")
    device = torch.device(device)
    if dtype is None and device.type == "cuda" and enc.autocast:
        dtype = torch.bfloat16
    enc = enc.to(device).eval()
    if dtype is not None and enc.autocast:
        for name, child in enc.named_children():
            setattr(enc, name, child.to(dtype))
    if compile:
        for name in ("model", "tower", "net"):
            if isinstance(getattr(enc, name, None), nn.Module):
                setattr(enc, name, torch.compile(getattr(enc, name)))
    return enc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.encoders",
                                     description="Patch encoders: the published foundation-model presets.")
    parser.add_argument("--list", action="store_true", help="print every preset (name, architecture, width)")
    parser.add_argument("--show", metavar="NAME", help="print one preset's complete spec as JSON")
    args = parser.parse_args(argv)
    from inference.presets import PRESETS, describe

    if args.show:
        if args.show not in PRESETS:
            parser.error(f"no preset {args.show!r}; --list shows them")
        print(json.dumps(PRESETS[args.show], indent=2))
        return 0
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
