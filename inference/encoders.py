"""Patch encoders behind one interface: images in, one feature vector per patch out.

API (stable):

- `PatchEncoder(nn.Module)`: `.dim`, `.spec` (JSON-able dict that `build_encoder` rebuilds it from),
  `.input_size`, `.preprocess(images) -> float [N, 3, S, S]` on the encoder's device, `forward(x) -> [N, dim]`
  and `encode(images, batch_size=64) -> float32 CPU Tensor [N, dim]` (batched, no grad, bf16 autocast on CUDA
  for the neural kinds). `images`: uint8 ndarray or tensor [N, H, W, 3] (RGB), any H, W.
- `build_encoder(spec, device="cpu") -> PatchEncoder`, with spec["kind"] one of:
  - "builtin" (default name "he-texture-v1"): `HETextureEncoder`, described below. No weights.
  - "hf": any local Hugging Face vision model directory, `{"kind": "hf", "path": DIR, "pooling": "cls" |
    "mean" | "pooler"}`; mean/std/size come from DIR's preprocessor_config.json unless given in the spec.
    Loaded with `AutoModel.from_pretrained(DIR, local_files_only=True)` (Phikon is ViTModel + CLS).
  - "timm": `{"kind": "timm", "model_name": "vit_large_patch16_224", "weights": FILE (.safetensors/.bin/.pth),
    "model_kwargs": {...}, "mean": [...], "std": [...], "input_size": 224}`: `timm.create_model(name,
    pretrained=False, num_classes=0, **model_kwargs)` then a local state dict (UNI / Virchow / H-optimus style).
  - "random": a randomly initialised conv net (seeded). A baseline for probes and benches, not a model.
- `ensure_torchvision_importable()`: lets timm import next to a CPU torch when PyPI's CUDA torchvision is
  installed (see its docstring).

Nothing here downloads anything: every path must exist locally.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
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


class PatchEncoder(nn.Module):
    """Base class: subclasses set dim, spec, input_size and implement forward on preprocessed input."""

    dim: int
    input_size: int
    # Neural encoders run under bf16 autocast on CUDA; the built-in one keeps fp32 (it measures small
    # differences in optical density that bf16 would round away).
    autocast: bool = True

    def __init__(self, spec: dict[str, Any], input_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.input_size = int(input_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _to_float(self, images: Images) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, S, S] in 0..1 on the encoder's device, resized to input_size."""
        x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def preprocess(self, images: Images) -> torch.Tensor:
        return (self._to_float(images) - self.mean) / self.std

    @torch.no_grad()
    def encode(self, images: Images, batch_size: int = 64) -> torch.Tensor:
        """float32 CPU features [N, dim] for uint8 images [N, H, W, 3]."""
        n = len(images)
        if n == 0:
            return torch.zeros(0, self.dim)
        outs = []
        use_amp = self.autocast and self.device.type == "cuda"
        for i in range(0, n, batch_size):
            x = self.preprocess(images[i:i + batch_size])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                y = self(x)
            outs.append(y.float().cpu())
        return torch.cat(outs)


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


class HFEncoder(PatchEncoder):
    """Any local Hugging Face vision backbone (ViT, Phikon, DINOv2, ConvNeXt...)."""

    def __init__(self, spec: dict[str, Any]):
        path = Path(spec["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"HF encoder directory not found: {path}")
        ensure_torchvision_importable()
        from transformers import AutoConfig, AutoModel

        proc = {}
        for name in ("preprocessor_config.json", "image_processor_config.json"):
            if (path / name).exists():
                proc = json.loads((path / name).read_text())
                break
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        size = spec.get("input_size") or _proc_size(proc) or getattr(cfg, "image_size", 224)
        if isinstance(size, list | tuple):
            size = size[0]
        mean = spec.get("mean") or proc.get("image_mean") or IMAGENET_MEAN
        std = spec.get("std") or proc.get("image_std") or IMAGENET_STD
        full = {"kind": "hf", "path": str(path), "pooling": spec.get("pooling", "cls"), "input_size": int(size),
                "mean": list(mean), "std": list(std)}
        super().__init__(full, int(size), mean, std)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False) \
            if getattr(cfg, "model_type", "") in ("vit", "dinov2", "deit") else \
            AutoModel.from_pretrained(path, local_files_only=True)
        self.model.eval()
        self.pooling = full["pooling"]
        hidden = getattr(cfg, "hidden_size", None) or (getattr(cfg, "hidden_sizes", None) or [None])[-1]
        self.dim = int(hidden) if hidden else int(self._probe_dim())

    def _probe_dim(self) -> int:
        with torch.no_grad():
            return self.forward(torch.zeros(1, 3, self.input_size, self.input_size)).shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.pooling == "pooler" or getattr(out, "last_hidden_state", None) is None:
            pooled = out.pooler_output
            return pooled.flatten(1)
        hs = out.last_hidden_state
        if hs.ndim == 4:  # conv nets: [B, C, H, W]
            return hs.mean((2, 3))
        if self.pooling == "mean":
            return hs[:, 1:].mean(1)
        return hs[:, 0]


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


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


class TimmEncoder(PatchEncoder):
    """A timm backbone with a local state dict (UNI, Virchow, H-optimus and their like)."""

    def __init__(self, spec: dict[str, Any]):
        if not ensure_torchvision_importable():
            raise RuntimeError("timm needs an importable torchvision; install one matching torch")
        import timm

        weights = Path(spec["weights"]) if spec.get("weights") else None
        if weights is not None and not weights.is_file():
            raise FileNotFoundError(f"timm weights not found: {weights}")
        kwargs = dict(spec.get("model_kwargs", {}))
        kwargs.setdefault("num_classes", 0)
        model = timm.create_model(spec["model_name"], pretrained=False, **kwargs)
        if weights is not None:
            sd = _load_state_dict(weights)
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
            missing, unexpected = model.load_state_dict(sd, strict=bool(spec.get("strict", True)))
            if missing or unexpected:  # only reachable with strict=False
                print(f"timm encoder: {len(missing)} missing, {len(unexpected)} unexpected keys", file=sys.stderr)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        size = spec.get("input_size") or kwargs.get("img_size") or (cfg.get("input_size") or (3, 224, 224))[-1]
        mean = spec.get("mean") or cfg.get("mean") or IMAGENET_MEAN
        std = spec.get("std") or cfg.get("std") or IMAGENET_STD
        full = {"kind": "timm", "model_name": spec["model_name"], "weights": str(weights) if weights else None,
                "model_kwargs": spec.get("model_kwargs", {}), "input_size": int(size), "mean": list(mean),
                "std": list(std)}
        super().__init__(full, int(size), mean, std)
        self.model = model.eval()
        self.dim = int(getattr(model, "num_features", 0)) or int(
            self.forward(torch.zeros(1, 3, self.input_size, self.input_size)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


KINDS = {"builtin": HETextureEncoder, "random": RandomConvEncoder, "hf": HFEncoder, "timm": TimmEncoder}


def build_encoder(spec: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> PatchEncoder:
    """Build (or rebuild from `encoder.spec`) an encoder on `device`, in eval mode."""
    spec = dict(spec or {"kind": "builtin"})
    kind = spec.get("kind", "builtin")
    if kind not in KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; one of {sorted(KINDS)}")
    enc = KINDS[kind](spec)
    return enc.to(device).eval()
