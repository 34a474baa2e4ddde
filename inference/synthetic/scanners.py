"""Scanner / stain "profiles" and slide artefacts for the synthetic WSI corpus v2.

A profile is what differs between two labs that stain and scan the same tissue: the stain vectors (a
rotation of hematoxylin and eosin in optical-density space and their strengths), the optics (blur), the
tone curve (gamma), the JPEG quality of the scanner and the tint of the glass. `apply_profile(rgb, profile)`
works on the small atlas fields a slide is composed from, so a 20,000 px slide costs no more per profile.

One profile (``held_out=True``, "site-new") is never used for training slides: the corpus's "new-site"
split is scanned with it alone.

Artefacts (pen marks, tissue folds, air bubbles) are low-resolution fields over the whole slide
(`artefact_fields`), upsampled and applied per band by `apply_artefacts`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .tissue import E_VEC, H_VEC


@dataclass(frozen=True)
class ScannerProfile:
    name: str
    scanner_id: str
    h_rotation_deg: float = 0.0  # rotation of the hematoxylin OD vector (towards blue/purple when > 0)
    e_rotation_deg: float = 0.0  # rotation of the eosin OD vector
    h_scale: float = 1.0
    e_scale: float = 1.0
    gamma: float = 1.0
    blur_sigma_px: float = 0.0  # at level 0
    jpeg_quality: int = 80
    glass: tuple[int, int, int] = (243, 242, 240)
    held_out: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: tuple[ScannerProfile, ...] = (
    ScannerProfile("site-a", "SYNTH-A1"),
    ScannerProfile("site-b", "SYNTH-B7", h_rotation_deg=6, e_rotation_deg=-5, h_scale=1.12, e_scale=0.9,
                   gamma=0.92, blur_sigma_px=0.6, jpeg_quality=75, glass=(246, 244, 244)),
    ScannerProfile("site-c", "SYNTH-C3", h_rotation_deg=-5, e_rotation_deg=7, h_scale=0.9, e_scale=1.15,
                   gamma=1.08, blur_sigma_px=1.0, jpeg_quality=70, glass=(238, 240, 241)),
    ScannerProfile("site-new", "SYNTH-N9", h_rotation_deg=11, e_rotation_deg=10, h_scale=1.18, e_scale=1.22,
                   gamma=1.18, blur_sigma_px=1.3, jpeg_quality=62, glass=(240, 238, 232), held_out=True),
)
PROFILE_BY_NAME = {p.name: p for p in PROFILES}
TRAINING_PROFILES = tuple(p for p in PROFILES if not p.held_out)
HELD_OUT_PROFILE = next(p for p in PROFILES if p.held_out)


def _rotate(v: np.ndarray, deg: float, axis: np.ndarray) -> np.ndarray:
    """Rodrigues rotation of a unit vector about `axis`, renormalised and kept non-negative."""
    t = math.radians(deg)
    k = axis / np.linalg.norm(axis)
    r = v * math.cos(t) + np.cross(k, v) * math.sin(t) + k * float(k @ v) * (1 - math.cos(t))
    r = np.clip(r, 0.02, None)
    return r / np.linalg.norm(r)


def stain_matrix(profile: ScannerProfile) -> tuple[np.ndarray, np.ndarray]:
    """(reference 3x3, profile 3x3) OD matrices, rows = H, E, residual."""
    h, e = H_VEC / np.linalg.norm(H_VEC), E_VEC / np.linalg.norm(E_VEC)
    res = np.cross(h, e)
    res = res / np.linalg.norm(res)
    ref = np.stack([h, e, res]).astype(np.float64)
    h2 = _rotate(h, profile.h_rotation_deg, res) * profile.h_scale
    e2 = _rotate(e, profile.e_rotation_deg, res) * profile.e_scale
    return ref, np.stack([h2, e2, res]).astype(np.float64)


def apply_profile(rgb: np.ndarray, profile: ScannerProfile, glass_mask: np.ndarray | None = None) -> np.ndarray:
    """Re-stain and re-scan an (H, W, 3) uint8 field as `profile` would (stain vectors, blur, gamma)."""
    ref, new = stain_matrix(profile)
    x = rgb.astype(np.float32)
    od = -np.log((x + 1.0) / 256.0)
    conc = od.reshape(-1, 3) @ np.linalg.inv(ref).astype(np.float32)
    conc[:, 2] *= 0.5  # the residual channel is mostly noise; keep a little of it
    od2 = (conc @ new.astype(np.float32)).reshape(od.shape)
    out = 256.0 * np.exp(-od2) - 1.0
    if profile.blur_sigma_px > 0:
        out = ndimage.gaussian_filter(out, sigma=(profile.blur_sigma_px, profile.blur_sigma_px, 0), mode="reflect")
    out = 255.0 * np.clip(out / 255.0, 0, 1) ** profile.gamma
    out = np.minimum(out, np.asarray(profile.glass, np.float32))
    if glass_mask is not None:
        out[glass_mask] = profile.glass
    return np.clip(out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- artefacts
PEN_COLOURS = {"blue": (40, 60, 170), "green": (30, 130, 60), "black": (30, 30, 35), "red": (170, 40, 50)}


def artefact_fields(rng: np.random.Generator, lh: int, lw: int, tissue: np.ndarray, f: int) -> dict:
    """Low-resolution (lh, lw) artefact fields and their description (level-0 geometry, for the sidecar).

    pen: alpha in 0..1 with one colour; fold: extra optical density factor (tissue doubled over itself);
    bubble: a rim (darker) and an interior (lighter, slightly blurred look)."""
    pen = np.zeros((lh, lw), np.float32)
    fold = np.zeros((lh, lw), np.float32)
    bubble = np.zeros((lh, lw), np.float32)
    desc: dict = {"pen": [], "folds": [], "bubbles": []}
    colour = "blue"
    if rng.random() < 0.5:  # pen marks: a circle or a few strokes around tissue, as pathologists draw
        colour = str(rng.choice(list(PEN_COLOURS)))
        img = Image.new("L", (lw, lh), 0)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0.15, 0.85) * lw, rng.uniform(0.15, 0.85) * lh
            r = rng.uniform(0.04, 0.1) * min(lw, lh)
            width = max(2, int(round(300 / f)))
            d.ellipse([cx - r, cy - r * 1.2, cx + r, cy + r * 1.2], outline=255, width=width)
            desc["pen"].append({"x": round(cx * f), "y": round(cy * f), "r": round(r * f)})
        pen = ndimage.gaussian_filter(np.asarray(img, np.float32) / 255.0, 0.8) * 0.85
    if rng.random() < 0.4:  # a fold: a narrow band across tissue where it lies double
        img = Image.new("L", (lw, lh), 0)
        d = ImageDraw.Draw(img)
        x0, y0 = rng.uniform(0.2, 0.8) * lw, rng.uniform(0.2, 0.8) * lh
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.15, 0.35) * max(lw, lh)
        x1, y1 = x0 + length * math.cos(ang), y0 + length * math.sin(ang)
        d.line([x0, y0, x1, y1], fill=255, width=max(2, int(round(rng.uniform(300, 900) / f))))
        fold = (np.asarray(img, np.float32) / 255.0) * tissue
        desc["folds"].append({"x0": round(x0 * f), "y0": round(y0 * f), "x1": round(x1 * f), "y1": round(y1 * f)})
    for _ in range(int(rng.integers(0, 3))):  # air bubbles under the coverslip
        cx, cy = rng.uniform(0.1, 0.9) * lw, rng.uniform(0.1, 0.9) * lh
        r = rng.uniform(400, 1500) / f
        yy, xx = np.ogrid[:lh, :lw]
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        bubble = np.maximum(bubble, np.clip(1 - np.abs(dist - r) / max(1.0, 80 / f), 0, 1))
        bubble = np.where((dist < r - 1) & (bubble == 0), -0.5, bubble)  # interior: lighter
        desc["bubbles"].append({"x": round(cx * f), "y": round(cy * f), "r": round(r * f)})
    return {"pen": pen, "pen_colour": colour, "fold": fold, "bubble": bubble, "describe": desc}


def apply_artefacts(band: np.ndarray, fields: dict, sub: tuple[slice, slice], up) -> np.ndarray:
    """Apply the artefact fields to `band` (in place and returned). `sub`: the low-res window of the band,
    `up(lowres_window) -> float32 (rows, cols)` upsamples a window of a low-res field to the band."""
    for key in ("pen", "fold", "bubble"):
        win = fields[key][sub]
        if not np.any(win):
            continue
        a = up(win)
        if key == "pen":
            col = np.asarray(PEN_COLOURS[fields["pen_colour"]], np.float32)
            a = np.clip(a, 0, 1)[..., None]
            band[:] = (band * (1 - a) + col * a).astype(np.uint8)
        elif key == "fold":
            a = np.clip(a, 0, 1)[..., None]
            od = -np.log((band.astype(np.float32) + 1) / 256.0)
            band[:] = np.clip(256 * np.exp(-od * (1 + 0.9 * a)) - 1, 0, 255).astype(np.uint8)
        else:
            rim = np.clip(a, 0, 1)[..., None]
            inside = np.clip(-a, 0, 1)[..., None]
            x = band.astype(np.float32)
            x = x * (1 - 0.45 * rim) + inside * 0.25 * (250 - x)
            band[:] = np.clip(x, 0, 255).astype(np.uint8)
    return band
