"""Scanner jitter: stain and scanner augmentation of training patches, before the frozen patch encoder.

Why: a model trained on the slides of a few labs learns their stains and scanners. The patch encoder is
frozen, so the only place to teach the Q-Former that a re-stained, blurrier, more compressed patch is the
same tissue is its input: an extra copy of each training slide's features, encoded from jittered patches
(as HED / stain jitter is used in computational pathology, e.g. Tellez et al. 2019). Inference never
jitters; held-out sets are never jittered.

Each patch gets its own draw (stain-vector rotation and strength, gamma, blur, JPEG quality), keyed by the
patch's pixels and the jitter's seed, so the features are the same numbers on every run and in any order.
The re-staining is `synthetic.scanners.apply_profile`: deconvolve with the reference H&E basis, reconvolve
with the drawn one.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from inference.encoders import Images, PatchEncoder, build_encoder
from inference.synthetic.scanners import ScannerProfile, apply_profile


@dataclass(frozen=True)
class ScannerJitter:
    """Ranges a patch's scanner profile is drawn from (uniform; stain strengths log-uniform).

    The defaults are broad lab-to-lab ranges: stain vectors rotated up to 15 degrees, stain strength x0.8
    to x1.3, gamma 0.8 to 1.3, blur up to 1.6 px at 1 um/px, JPEG quality 55 to 92."""

    seed: int = 0
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.8, 1.3)
    gamma: tuple[float, float] = (0.8, 1.3)
    blur_sigma_px: tuple[float, float] = (0.0, 1.6)
    jpeg_quality: tuple[int, int] = (55, 92)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScannerJitter:
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def draw(self, rng: np.random.Generator) -> ScannerProfile:
        lo, hi = np.log(self.scale[0]), np.log(self.scale[1])
        return ScannerProfile(
            name="jitter", scanner_id="JITTER",
            h_rotation_deg=float(rng.uniform(-self.rotation_deg, self.rotation_deg)),
            e_rotation_deg=float(rng.uniform(-self.rotation_deg, self.rotation_deg)),
            h_scale=float(np.exp(rng.uniform(lo, hi))), e_scale=float(np.exp(rng.uniform(lo, hi))),
            gamma=float(rng.uniform(*self.gamma)), blur_sigma_px=float(rng.uniform(*self.blur_sigma_px)),
            jpeg_quality=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)),
            glass=(255, 255, 255))  # no glass tint: the patch's own glass stays as scanned

    def profile_for(self, patch: np.ndarray) -> ScannerProfile:
        """The profile one patch gets: keyed by its pixels and the seed (same patch, same draw)."""
        key = zlib.crc32(np.ascontiguousarray(patch).tobytes())
        return self.draw(np.random.default_rng([self.seed, key]))

    def apply(self, patch: np.ndarray) -> np.ndarray:
        """One uint8 [H, W, 3] patch, re-stained and re-scanned by its drawn profile (then JPEG round trip)."""
        profile = self.profile_for(patch)
        out = apply_profile(patch, profile)
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=profile.jpeg_quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


class JitteredEncoder(PatchEncoder):
    """A patch encoder that jitters every patch (`ScannerJitter`) before encoding it; its spec is the inner
    encoder's plus ``"augmentation"``, so features made with it are never taken for plain ones."""

    def __init__(self, inner: PatchEncoder, jitter: ScannerJitter) -> None:
        super().__init__({**inner.spec, "augmentation": jitter.to_dict()}, inner.input_size)
        self.inner = inner
        self.jitter = jitter
        self.dim = inner.dim
        self.autocast = inner.autocast
        self.to(inner.device)

    def preprocess(self, images: Images) -> torch.Tensor:
        arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        return self.inner.preprocess(np.stack([self.jitter.apply(p) for p in arr]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def build_training_encoder(spec: dict[str, Any], device: str | torch.device = "cpu") -> PatchEncoder:
    """`encoders.build_encoder`, wrapped in `JitteredEncoder` when the spec carries ``"augmentation"``."""
    spec = dict(spec)
    aug = spec.pop("augmentation", None)
    enc = build_encoder(spec, device=device)
    return JitteredEncoder(enc, ScannerJitter.from_dict(aug)) if aug else enc
