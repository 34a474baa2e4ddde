"""Procedural H&E-like tissue rendering, driven by organ, diagnosis, grade and findings.

The renderer works in optical-density space, as light does in a brightfield scanner: each pixel holds a
hematoxylin, an eosin and a melanin concentration; the RGB image is Beer-Lambert of their sum
(`rgb = 255 * exp(-(H*h_vec + E*e_vec + M*m_vec))`). Structures are drawn in physical units (microns) and
converted to pixels through the slide's MPP, so two slides of different MPP show the same anatomy at
different pixel sizes.

What differs between diagnoses is what a pathologist would look at: gland architecture (round regular
crypts, elongated crowded tubules, angulated/cribriform malignant glands, small back-to-back acini,
papillary benign prostate glands, compressed slit-like ducts), nests and sheets (basaloid nests with
palisading and clefts, squamous nests with keratin pearls, melanocytic nests with pigment, signet ring
cells), nuclear density, size, pleomorphism, chromatin (hyperchromatic vs vesicular with nucleoli),
mitoses, necrosis, inflammation, mucin and the background (lamina propria, fibromuscular stroma,
desmoplasia, myxoid stroma, adipose tissue, alveolar lung, dermis with epidermis).

Public entry point: `render_tissue(look, height, width, mpp, rng) -> uint8 (H, W, 3)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# Stain optical-density vectors (R, G, B), as in stain deconvolution (Ruifrok-Johnston / Macenko values).
H_VEC = np.array([0.650, 0.704, 0.286], np.float32)
E_VEC = np.array([0.216, 0.801, 0.558], np.float32)
M_VEC = np.array([0.268, 0.570, 0.776], np.float32)  # melanin: brown, close to DAB
BACKGROUND = np.array([243, 242, 240], np.float32)


@dataclass
class Look:
    """The visible parameters of one case: what the renderer may use. No clinical history here."""

    diagnosis: str
    organ: str
    grade_index: int = -1  # index into Diagnosis.grades, -1 when ungraded
    severity: float = 0.0  # grade normalised to 0..1 (0 = lowest grade)
    findings: dict = field(default_factory=dict)
    procedure: str = "biopsy"


# --------------------------------------------------------------------------------------------- primitives
class Shape:
    """An irregular closed blob: an ellipse (rx, ry, angle) with a low-frequency radial perturbation."""

    def __init__(self, cx: float, cy: float, rx: float, ry: float, angle: float, irregular: float,
                 rng: np.random.Generator, infold: float = 0.0):
        self.cx, self.cy, self.rx, self.ry, self.angle = cx, cy, rx, ry, angle
        ks = np.arange(2, 6)
        self.k = ks
        self.amp = irregular * rng.normal(0, 1, len(ks)) / ks
        self.phase = rng.uniform(0, 2 * np.pi, len(ks))
        # Papillary infoldings (benign prostate): a higher harmonic.
        self.infold_k = int(rng.integers(7, 12))
        self.infold = infold
        self.infold_phase = rng.uniform(0, 2 * np.pi)

    def rho(self, t: np.ndarray) -> np.ndarray:
        r = 1 + (self.amp[:, None] * np.cos(self.k[:, None] * t[None] + self.phase[:, None])).sum(0)
        if self.infold:
            r = r - self.infold * (0.5 + 0.5 * np.cos(self.infold_k * t + self.infold_phase)) ** 3
        return np.clip(r, 0.35, None)

    def at(self, t: np.ndarray, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Points at polar angle t and relative radius s (1 = the outline)."""
        r = self.rho(t) * s
        lx, ly = r * self.rx * np.cos(t), r * self.ry * np.sin(t)
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        return self.cx + lx * ca - ly * sa, self.cy + lx * sa + ly * ca

    def polygon(self, s: float = 1.0, n: int = 40) -> list[tuple[float, float]]:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        x, y = self.at(t, s)
        return list(zip(x.tolist(), y.tolist(), strict=True))

    @property
    def mean_r(self) -> float:
        return 0.5 * (self.rx + self.ry)


class Canvas:
    """Stain concentration maps for one image, plus a queue of nuclei drawn at the end in one pass."""

    def __init__(self, height: int, width: int, mpp: float, rng: np.random.Generator):
        self.h, self.w, self.mpp, self.rng = height, width, mpp, rng
        self.hema = np.zeros((height, width), np.float32)
        self.eos = np.zeros((height, width), np.float32)
        self.mel = np.zeros((height, width), np.float32)
        self.tissue = np.zeros((height, width), bool)
        self._nuclei: list[tuple[np.ndarray, ...]] = []
        self._noise: dict[float, np.ndarray] = {}

    def px(self, microns: float) -> float:
        return microns / self.mpp

    # -- fields
    def noise(self, cell_um: float, fresh: bool = False) -> np.ndarray:
        """Smooth noise with unit-ish std whose features are about cell_um across (cached per scale)."""
        if not fresh and cell_um in self._noise:
            return self._noise[cell_um]
        cell = max(self.px(cell_um), 1.0)
        lh, lw = int(self.h / cell) + 3, int(self.w / cell) + 3
        small = self.rng.standard_normal((lh, lw)).astype(np.float32)
        # One resize to a little more than the canvas (one low-res cell = `cell` px), then crop.
        size = (max(self.w, int(round(lw * cell))), max(self.h, int(round(lh * cell))))
        field_ = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))[:self.h, :self.w]
        field_ = field_ * np.float32(1.0 / (field_[::7, ::7].std() + 1e-6))
        if not fresh:
            self._noise[cell_um] = field_
        return field_

    def polygons_mask(self, polys: list[list[tuple[float, float]]]) -> np.ndarray:
        img = Image.new("L", (self.w, self.h), 0)
        draw = ImageDraw.Draw(img)
        for p in polys:
            if len(p) >= 3:
                draw.polygon(p, fill=255)
        return np.asarray(img) > 0

    def paint(self, mask: np.ndarray, e: float, h: float, texture: float = 0.12, cell_um: float = 6.0) -> None:
        """Set cytoplasm/stroma stain over mask, with a mottled texture."""
        n = self.noise(cell_um)
        np.copyto(self.eos, np.clip(e * (1 + texture * n), 0, None), where=mask)
        np.copyto(self.hema, np.clip(h * (1 + texture * n), 0, None), where=mask)

    def clear(self, mask: np.ndarray, h: float = 0.015, e: float = 0.02) -> None:
        self.hema[mask] = h
        self.eos[mask] = e

    # -- nuclei
    def add_nuclei(self, x, y, a, b, theta=None, intensity=1.3, vesicular=0.0) -> None:
        """Queue nuclei: centres (px), semi-axes a (long) and b (short) in px, orientation, stain amount."""
        x = np.asarray(x, np.float32).ravel()
        n = len(x)
        if n == 0:
            return

        def full(v):
            return np.broadcast_to(np.asarray(v, np.float32), (n,)).astype(np.float32)

        if theta is None:
            theta = self.rng.uniform(0, np.pi, n)
        self._nuclei.append((x, full(y), full(a), np.minimum(full(b), full(a)), full(theta),
                             full(intensity), full(vesicular)))

    def render_nuclei(self) -> None:
        if not self._nuclei:
            return
        x, y, a, b, th, inten, ves = (np.concatenate(c) for c in zip(*self._nuclei, strict=True))
        self._nuclei = []
        keep = (x > -30) & (x < self.w + 30) & (y > -30) & (y < self.h + 30)
        x, y, a, b, th, inten, ves = (v[keep] for v in (x, y, a, b, th, inten, ves))
        a = np.maximum(a, 0.8)
        b = np.maximum(b, 0.6)
        acc = np.zeros(self.h * self.w, np.float64)
        edges = [3, 5, 8, 12, 18, 28, 60]
        lo = 0.0
        for hi in edges:
            sel = np.nonzero((a > lo) & (a <= hi))[0]
            lo = hi
            if len(sel) == 0:
                continue
            half = int(math.ceil(hi)) + 1
            offs = np.arange(-half, half + 1, dtype=np.float32)
            offs_i = offs.astype(np.int64)
            s = len(offs)
            step = max(1, 3_000_000 // (s * s))
            for i0 in range(0, len(sel), step):
                j = sel[i0:i0 + step]
                x0, y0 = np.floor(x[j]), np.floor(y[j])
                fx, fy = x[j] - x0, y[j] - y0
                dx = offs[None, None, :] - fx[:, None, None]
                dy = offs[None, :, None] - fy[:, None, None]
                c, sn = np.cos(th[j])[:, None, None], np.sin(th[j])[:, None, None]
                u = (dx * c + dy * sn) / a[j][:, None, None]
                v = (-dx * sn + dy * c) / b[j][:, None, None]
                r = np.sqrt(u * u + v * v)
                edge = np.clip((1 - r) * b[j][:, None, None] * 1.3 + 0.5, 0, 1)
                vs = ves[j][:, None, None]
                rim = 0.45 + 0.55 * np.clip((r - 0.45) / 0.4, 0, 1)
                nucleolus = np.exp(-(r / 0.22) ** 2)
                val = edge * ((1 - vs) + vs * (0.8 * rim + 1.1 * nucleolus))
                val *= inten[j][:, None, None] * (0.78 + 0.44 * self.rng.random(val.shape, dtype=np.float32))
                px = x0.astype(np.int64)[:, None, None] + offs_i[None, None, :]
                py = y0.astype(np.int64)[:, None, None] + offs_i[None, :, None]
                ok = (px >= 0) & (px < self.w) & (py >= 0) & (py < self.h) & (val > 0.02)
                flat = (py * self.w + px)[ok]
                acc += np.bincount(flat, weights=val[ok], minlength=self.h * self.w)
        nuc = np.minimum(acc.reshape(self.h, self.w).astype(np.float32), 2.4)
        self.hema += nuc
        # Nuclei hide the cytoplasm behind them a little.
        self.eos *= 1 - 0.25 * np.minimum(nuc, 1.0)

    # -- output
    def to_rgb(self, stain_h: float = 1.0, stain_e: float = 1.0) -> np.ndarray:
        # One channel at a time, in place: full-size temporaries cost more than the arithmetic here.
        glass = ~self.tissue
        has_mel = bool(self.mel.any())
        out = np.empty((self.h, self.w, 3), np.uint8)
        od = np.empty_like(self.hema)
        tmp = np.empty_like(self.hema)
        for ch in range(3):
            np.multiply(self.hema, -H_VEC[ch] * stain_h, out=od)
            np.multiply(self.eos, E_VEC[ch] * stain_e, out=tmp)
            od -= tmp
            if has_mel:
                np.multiply(self.mel, M_VEC[ch], out=tmp)
                od -= tmp
            np.exp(od, out=od)
            od *= 255.0
            # Glass background outside tissue; white air/fat spaces inside read the same.
            np.minimum(od, BACKGROUND[ch], out=od)
            np.copyto(od, BACKGROUND[ch], where=glass)
            out[..., ch] = od
        return out


# ------------------------------------------------------------------------------------------- placement
def jittered_grid(c: Canvas, spacing_um: float, jitter: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Hexagonal-ish point lattice over the canvas with random jitter (points in px)."""
    sp = c.px(spacing_um)
    ys = np.arange(sp / 2, c.h, sp * 0.866, dtype=np.float32)
    xs = np.arange(0, c.w + sp, sp, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * sp / 2
    gx, gy = gx.ravel(), gy.ravel()
    gx = gx + c.rng.normal(0, jitter * sp, gx.shape).astype(np.float32)
    gy = gy + c.rng.normal(0, jitter * sp, gy.shape).astype(np.float32)
    return gx, gy


def points_in(c: Canvas, mask: np.ndarray, spacing_um: float, keep: float = 1.0,
              jitter: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    x, y = jittered_grid(c, spacing_um, jitter)
    xi, yi = np.clip(x.astype(np.int64), 0, c.w - 1), np.clip(y.astype(np.int64), 0, c.h - 1)
    ok = mask[yi, xi]
    if keep < 1.0:
        ok &= c.rng.random(len(x)) < keep
    return x[ok], y[ok]


def fill_nuclei(c: Canvas, mask: np.ndarray, spacing_um: float, a_um: float, b_um: float | None = None,
                pleo: float = 0.1, intensity: float = 1.3, vesicular: float = 0.0, keep: float = 1.0,
                theta: float | np.ndarray | None = None, jitter: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    x, y = points_in(c, mask, spacing_um, keep, jitter)
    n = len(x)
    b_um = a_um if b_um is None else b_um
    size = np.exp(c.rng.normal(0, pleo, n))
    a = c.px(a_um) * size * np.exp(c.rng.normal(0, pleo * 0.5, n))
    b = c.px(b_um) * size
    if theta is not None and np.ndim(theta) == 0:
        theta = np.full(n, theta) + c.rng.normal(0, 0.15, n)
    inten = intensity * np.exp(c.rng.normal(0, 0.08 + pleo * 0.5, n))
    c.add_nuclei(x, y, a, b, theta, inten, vesicular)
    return x, y


def scatter_shapes(c: Canvas, region: np.ndarray, spacing_um: float, r_um: tuple[float, float],
                   aspect: tuple[float, float] = (1.0, 1.3), irregular: float = 0.08,
                   angle: float | None = None, angle_jitter: float = 0.3, keep: float = 1.0,
                   jitter: float = 0.25, infold: float = 0.0) -> list[Shape]:
    """Shapes centred on a jittered lattice inside `region` (the centre and 4 rim points must be inside)."""
    x, y = points_in(c, region, spacing_um, keep, jitter)
    shapes = []
    for cx, cy in zip(x.tolist(), y.tolist(), strict=True):
        r = c.px(c.rng.uniform(*r_um))
        asp = c.rng.uniform(*aspect)
        ang = c.rng.uniform(0, np.pi) if angle is None else angle + c.rng.normal(0, angle_jitter)
        sh = Shape(cx, cy, r * math.sqrt(asp), r / math.sqrt(asp), ang, irregular, c.rng, infold)
        px_, py_ = sh.at(np.array([0, np.pi / 2, np.pi, 1.5 * np.pi]), 1.0)
        pxi, pyi = np.clip(px_.astype(int), 0, c.w - 1), np.clip(py_.astype(int), 0, c.h - 1)
        if region[pyi, pxi].sum() >= 3:
            shapes.append(sh)
    return shapes


@dataclass
class GlandStyle:
    epi_um: float = 14.0  # epithelium thickness
    cyto_e: float = 0.28
    cyto_h: float = 0.08
    lumen: str = "clear"  # clear | mucin | necrosis | secretion
    necrosis_frac: float = 0.0  # share of glands with dirty necrosis in the lumen
    goblet: float = 0.0  # goblet cell density 0..1
    nuc_a_um: float = 4.0  # radial semi-axis
    nuc_b_um: float = 2.2
    nuc_spacing_um: float = 5.5
    strat: float = 0.1  # 0 = basal single row, 1 = stratified through the whole thickness
    depth: float = 0.25  # where the nuclei sit (0 = outer edge, 1 = lumen)
    pleo: float = 0.08
    intensity: float = 1.3
    vesicular: float = 0.0
    basal_layer: bool = False  # a second, flattened basal (myoepithelial) cell layer
    cribriform: float = 0.0  # share of glands with several punched-out lumens
    corpora: float = 0.0  # share of lumens with corpora amylacea
    parietal: float = 0.0  # mottled pink/purple oxyntic cytoplasm


def draw_glands(c: Canvas, shapes: list[Shape], st: GlandStyle) -> np.ndarray:
    """Draw glands (epithelium ring + lumen + nuclei); returns the mask of everything the glands cover."""
    if not shapes:
        return np.zeros((c.h, c.w), bool)
    outer = Image.new("L", (c.w, c.h), 0)
    inner = Image.new("L", (c.w, c.h), 0)
    do, di = ImageDraw.Draw(outer), ImageDraw.Draw(inner)
    nec = Image.new("L", (c.w, c.h), 0)
    dn = ImageDraw.Draw(nec)
    epi = c.px(st.epi_um)
    crib_nuclei_regions = []
    corpora = []
    for sh in shapes:
        do.polygon(sh.polygon(1.0), fill=255)
        t_rel = min(0.85, epi / max(sh.mean_r, 1.0))
        s_in = 1 - t_rel
        if st.cribriform and c.rng.random() < st.cribriform and sh.mean_r > c.px(30):
            # Several round punched-out lumens in a solid epithelial cake.
            k = int(c.rng.integers(4, 10))
            for _ in range(k):
                tt, ss = c.rng.uniform(0, 2 * np.pi), math.sqrt(c.rng.uniform(0.0, 0.55))
                lx, ly = sh.at(np.array([tt]), ss)
                rr = c.px(c.rng.uniform(5, 11))
                di.ellipse([lx[0] - rr, ly[0] - rr, lx[0] + rr, ly[0] + rr], fill=255)
            crib_nuclei_regions.append(sh)
        else:
            di.polygon(sh.polygon(s_in), fill=255)
            if st.necrosis_frac and c.rng.random() < st.necrosis_frac and sh.mean_r > c.px(18):
                dn.polygon(sh.polygon(s_in * 0.92), fill=255)
            if st.corpora and c.rng.random() < st.corpora and s_in * sh.mean_r > c.px(12):
                corpora.append((sh.cx, sh.cy, min(s_in * min(sh.rx, sh.ry) * 0.7, c.px(c.rng.uniform(8, 18)))))
        # Nuclei around the ring.
        per = 2 * np.pi * sh.mean_r * float(sh.rho(np.linspace(0, 2 * np.pi, 16)).mean())
        n = max(6, int(per / c.px(st.nuc_spacing_um)))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) + c.rng.uniform(0, 2 * np.pi)
        t = t + c.rng.normal(0, 0.3 * 2 * np.pi / n, n)
        d = np.clip(st.depth + st.strat * c.rng.uniform(0, 0.7, n), 0.08, 0.92)
        s = 1 - d * t_rel
        x, y = sh.at(t, s)
        theta = np.arctan2(y - sh.cy, x - sh.cx)
        size = np.exp(c.rng.normal(0, st.pleo, n))
        c.add_nuclei(x, y, c.px(st.nuc_a_um) * size, c.px(st.nuc_b_um) * size, theta,
                     st.intensity * np.exp(c.rng.normal(0, 0.08 + st.pleo * 0.5, n)), st.vesicular)
        if st.basal_layer:
            nb = max(4, int(per / c.px(10)))
            tb = np.linspace(0, 2 * np.pi, nb, endpoint=False) + c.rng.uniform(0, 1)
            xb, yb = sh.at(tb, 1 - 0.07 * t_rel)
            c.add_nuclei(xb, yb, c.px(3.8), c.px(1.3), np.arctan2(yb - sh.cy, xb - sh.cx) + np.pi / 2, 1.5)
        if st.goblet:
            ng = int(n * st.goblet * 0.5)
            if ng:
                tg = c.rng.uniform(0, 2 * np.pi, ng)
                xg, yg = sh.at(tg, 1 - 0.6 * t_rel)
                rg = c.px(c.rng.uniform(3.5, 5.0, ng))
                c.goblets = getattr(c, "goblets", []) + [(xg, yg, rg)]
    outer_m, inner_m = np.asarray(outer) > 0, np.asarray(inner) > 0
    ring = outer_m & ~inner_m
    c.paint(ring, st.cyto_e, st.cyto_h, texture=0.15)
    if st.parietal:
        # Oxyntic glands: bright pink parietal cells mixed with basophilic chief cells.
        mix = c.noise(9.0) > 0.2
        c.paint(ring & mix, 0.62, 0.05, texture=0.1)
        c.paint(ring & ~mix, 0.2, 0.26, texture=0.1)
    if crib_nuclei_regions:
        solid = c.polygons_mask([sh.polygon(0.85) for sh in crib_nuclei_regions]) & ring
        fill_nuclei(c, solid, st.nuc_spacing_um * 1.6, st.nuc_a_um * 0.8, st.nuc_b_um * 1.1, st.pleo,
                    st.intensity, st.vesicular)
    lumen = inner_m
    if st.lumen == "mucin":
        c.paint(lumen, 0.05, 0.16, texture=0.5, cell_um=4)
    elif st.lumen == "secretion":
        c.paint(lumen, 0.22, 0.03, texture=0.3, cell_um=4)
    else:
        c.clear(lumen)
    nec_m = np.asarray(nec) > 0
    if nec_m.any():
        necrosis(c, nec_m)
    for cx, cy, r in corpora:
        corpora_amylacea(c, cx, cy, r)
    goblets = getattr(c, "goblets", [])
    if goblets:
        xg = np.concatenate([g[0] for g in goblets])
        yg = np.concatenate([g[1] for g in goblets])
        rg = np.concatenate([g[2] for g in goblets])
        vac = blobs_mask(c, xg, yg, rg, rg * 0.85)
        c.paint(vac & ring, 0.03, 0.1, texture=0.4, cell_um=3)
        c.goblets = []
    return outer_m


def blobs_mask(c: Canvas, x: np.ndarray, y: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    img = Image.new("L", (c.w, c.h), 0)
    d = ImageDraw.Draw(img)
    for xi, yi, ai, bi in zip(x.tolist(), y.tolist(), np.broadcast_to(rx, x.shape).tolist(),
                              np.broadcast_to(ry, x.shape).tolist(), strict=True):
        d.ellipse([xi - ai, yi - bi, xi + ai, yi + bi], fill=255)
    return np.asarray(img) > 0


def necrosis(c: Canvas, mask: np.ndarray) -> None:
    """Eosinophilic granular debris with nuclear dust (karyorrhexis)."""
    c.paint(mask, 0.5, 0.12, texture=0.35, cell_um=3)
    x, y = points_in(c, mask, 5.0, keep=0.5, jitter=0.5)
    c.add_nuclei(x, y, c.px(c.rng.uniform(0.5, 1.4, len(x))), c.px(0.6), None, 1.6)


def corpora_amylacea(c: Canvas, cx: float, cy: float, r: float) -> None:
    yy, xx = np.ogrid[:c.h, :c.w]
    y0, y1, x0, x1 = int(max(cy - r, 0)), int(min(cy + r + 1, c.h)), int(max(cx - r, 0)), int(min(cx + r + 1, c.w))
    if y1 <= y0 or x1 <= x0:
        return
    d = np.sqrt((yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2)
    inside = d < r
    rings = 0.55 + 0.2 * np.sin(d / max(c.px(2.0), 1) * 2 * np.pi)
    c.eos[y0:y1, x0:x1][inside] = rings[inside]
    c.hema[y0:y1, x0:x1][inside] = 0.08


def mitoses(c: Canvas, mask: np.ndarray, per_mm2: float) -> None:
    area_mm2 = mask.sum() * (c.mpp / 1000) ** 2
    n = c.rng.poisson(per_mm2 * area_mm2)
    if n == 0:
        return
    ys, xs = np.nonzero(mask[::4, ::4])
    if len(xs) == 0:
        return
    pick = c.rng.integers(0, len(xs), n)
    x, y = xs[pick] * 4.0, ys[pick] * 4.0
    th = c.rng.uniform(0, np.pi, n)
    # Metaphase plates and anaphase pairs: dense, dark, rod-like chromatin.
    c.add_nuclei(x, y, c.px(4.0), c.px(1.2), th, 2.6)
    pair = c.rng.random(n) < 0.4
    off = c.px(4.5)
    c.add_nuclei(x[pair] + off * np.cos(th[pair] + np.pi / 2), y[pair] + off * np.sin(th[pair] + np.pi / 2),
                 c.px(3.5), c.px(1.1), th[pair], 2.6)


def lymphocytes(c: Canvas, mask: np.ndarray, density: float, spacing_um: float = 9.0) -> None:
    if density > 0:
        fill_nuclei(c, mask, spacing_um, 3.0, 3.0, pleo=0.06, intensity=1.7, keep=min(density, 1.0), jitter=0.5)


def voronoi_walls(c: Canvas, mask: np.ndarray, cell_um: float, wall_um: float) -> np.ndarray:
    """Network of thin walls around polygonal spaces (fat cells, alveoli), computed at low resolution."""
    f = 4
    lh, lw = (c.h + f - 1) // f, (c.w + f - 1) // f
    sp = c.px(cell_um) / f
    seeds = np.zeros((lh, lw), np.int32)
    ys = np.arange(sp / 2, lh, sp * 0.866)
    xs = np.arange(0, lw + sp, sp)
    gx, gy = np.meshgrid(xs, ys)
    gx = gx + (np.arange(len(ys))[:, None] % 2) * sp / 2
    gx = (gx.ravel() + c.rng.normal(0, 0.28 * sp, gx.size)).astype(int)
    gy = (gy.ravel() + c.rng.normal(0, 0.28 * sp, gy.size)).astype(int)
    ok = (gx >= 0) & (gx < lw) & (gy >= 0) & (gy < lh)
    seeds[gy[ok], gx[ok]] = np.arange(1, ok.sum() + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[iy, ix]
    wall = np.zeros((lh, lw), np.float32)
    wall[:, 1:] += lab[:, 1:] != lab[:, :-1]
    wall[1:, :] += lab[1:, :] != lab[:-1, :]
    wall = ndimage.gaussian_filter((wall > 0).astype(np.float32), max(wall_um / c.mpp / f / 2.5, 0.5))
    big = np.asarray(Image.fromarray(wall).resize((lw * f, lh * f), Image.Resampling.BILINEAR))[:c.h, :c.w]
    return (big > 0.12 + 0.04 * c.noise(20.0)) & mask


# ------------------------------------------------------------------------------------------- tissue layout
def tissue_mask(c: Canvas, procedure: str, coverage: tuple[float, float] = (0.35, 0.6)) -> np.ndarray:
    """Tissue fragments with irregular borders: strips for needle cores, a few bits for biopsies,
    one large piece for excisions and resections."""
    rng = c.rng
    f = 16
    lh, lw = c.h // f + 1, c.w // f + 1
    yy, xx = np.mgrid[:lh, :lw].astype(np.float32)
    field_ = np.full((lh, lw), -1.0, np.float32)
    if "core" in procedure or "needle" in procedure:
        n, shapes = int(rng.integers(1, 3)), "strip"
    elif procedure in ("excision", "resection", "lumpectomy", "lobectomy", "wedge resection", "polypectomy"):
        n, shapes = 1, "big"
    elif procedure in ("shave biopsy", "punch biopsy"):
        n, shapes = 1, "big"
    else:
        n, shapes = int(rng.integers(2, 5)), "bits"
    for i in range(n):
        if shapes == "strip":
            cx = lw * (i + 0.5) / n + rng.normal(0, lw * 0.04)
            cy = lh * 0.5 + rng.normal(0, lh * 0.05)
            rx, ry, ang = lw * rng.uniform(0.12, 0.2) / n, lh * rng.uniform(0.4, 0.47), rng.normal(0, 0.12)
        elif shapes == "big":
            cx, cy = lw * rng.uniform(0.42, 0.58), lh * rng.uniform(0.42, 0.58)
            rx, ry, ang = lw * rng.uniform(0.33, 0.45), lh * rng.uniform(0.3, 0.42), rng.uniform(0, np.pi)
        else:
            cx = lw * ((i % 2) + 0.5) / 2 + rng.normal(0, lw * 0.05)
            cy = lh * ((i // 2) + 0.5) / max(1, (n + 1) // 2) + rng.normal(0, lh * 0.05)
            rx = lw * rng.uniform(0.16, 0.24)
            ry = lh * rng.uniform(0.14, 0.22) / max(1, (n + 1) // 2) * 1.6
            ang = rng.uniform(0, np.pi)
        ca, sa = math.cos(ang), math.sin(ang)
        u = ((xx - cx) * ca + (yy - cy) * sa) / rx
        v = (-(xx - cx) * sa + (yy - cy) * ca) / ry
        field_ = np.maximum(field_, 1 - np.sqrt(u * u + v * v))
    low_noise = ndimage.gaussian_filter(rng.standard_normal((lh, lw)).astype(np.float32), 2.5)
    field_ = field_ + 0.16 * low_noise / (low_noise.std() + 1e-6)
    big = np.asarray(Image.fromarray(field_).resize((lw * f, lh * f), Image.Resampling.BICUBIC))[:c.h, :c.w]
    big = big + 0.03 * c.noise(30.0)  # fine ragged edge
    # Keep a margin of glass around the tissue.
    m = int(min(c.h, c.w) * 0.03)
    big[:m], big[-m:], big[:, :m], big[:, -m:] = -1, -1, -1, -1
    # Pick the threshold that lands the tissue fraction in the target range.
    target = rng.uniform(*coverage)
    thr = float(np.quantile(big[::4, ::4], 1 - target))
    return big > max(thr, -0.2)


def stroma(c: Canvas, mask: np.ndarray, e: float, h: float, wavelength_um: float = 14.0, contrast: float = 0.3,
           waviness: float = 1.0, angle: float | None = None) -> None:
    """Collagen: wavy eosinophilic bundles as a phase-modulated stripe pattern."""
    ang = c.rng.uniform(0, np.pi) if angle is None else angle
    yy, xx = np.ogrid[:c.h, :c.w]
    lam = c.px(wavelength_um)
    phase = (xx * math.cos(ang) + yy * math.sin(ang)).astype(np.float32) * (2 * np.pi / lam)
    phase = phase + waviness * 2.5 * c.noise(60.0)
    stripes = 0.5 + 0.5 * np.sin(phase)
    val = e * (1 - contrast + contrast * 2 * stripes * (0.75 + 0.25 * c.noise(20.0)))
    np.copyto(c.eos, np.clip(val, 0.02, None), where=mask)
    np.copyto(c.hema, np.float32(h) * (1 + 0.2 * c.noise(6.0)), where=mask)


def fibroblasts(c: Canvas, mask: np.ndarray, spacing_um: float = 30.0, keep: float = 0.6,
                angle: float | None = None) -> None:
    fill_nuclei(c, mask, spacing_um, 6.0, 1.3, pleo=0.15, intensity=1.4, keep=keep,
                theta=angle, jitter=0.5)


def region(c: Canvas, mask: np.ndarray, frac: float, cell_um: float = 250.0) -> np.ndarray:
    """A smooth-bordered sub-region holding about `frac` of `mask`."""
    if frac >= 0.999:
        return mask.copy()
    if frac <= 0.001:
        return np.zeros_like(mask)
    n = c.noise(cell_um, fresh=True)
    vals = n[mask]
    if vals.size == 0:
        return mask.copy()
    thr = np.quantile(vals[:: max(1, vals.size // 20000)], 1 - frac)
    return mask & (n > thr)


# ------------------------------------------------------------------------------------------- organ recipes
def _colon(c: Canvas, look: Look, T: np.ndarray) -> None:
    g = look.severity
    infl = {"none": 0.15, "mild": 0.3, "moderate": 0.5, "severe": 0.75}[look.findings.get("inflammation", "none")]
    if look.diagnosis == "colon_normal":
        stroma(c, T, 0.26, 0.07, 10, 0.15)
        lymphocytes(c, T, infl + 0.15, 11)
        shapes = scatter_shapes(c, T, 100, (30, 38), (1.0, 1.35), 0.05)
        glands = draw_glands(c, shapes, GlandStyle(epi_um=17, cyto_e=0.22, cyto_h=0.07, goblet=0.9,
                                                   nuc_a_um=4.2, nuc_b_um=2.0, nuc_spacing_um=5.5, strat=0.05,
                                                   depth=0.15, intensity=1.25))
        if look.findings.get("lymphoid_aggregates"):
            agg = aggregate(c, T & ~glands)
            lymphocytes(c, agg, 0.95, 7.5)
    elif look.diagnosis == "colon_tubular_adenoma":
        stroma(c, T, 0.26, 0.08, 10, 0.15)
        lymphocytes(c, T, 0.3, 11)
        ang = c.rng.uniform(0, np.pi)
        shapes = scatter_shapes(c, T, 72, (22, 28), (2.2, 3.4), 0.08, angle=ang, angle_jitter=0.25, jitter=0.15)
        glands = draw_glands(c, shapes, GlandStyle(
            epi_um=20, cyto_e=0.28, cyto_h=0.16, goblet=0.15 * (1 - g), nuc_a_um=6.5, nuc_b_um=1.9,
            nuc_spacing_um=3.6, strat=0.55 + 0.35 * g, depth=0.2, intensity=1.65, pleo=0.08 + 0.1 * g,
            vesicular=0.3 * g))
        mitoses(c, glands, 15 + 25 * g)
    else:  # adenocarcinoma
        des = T
        stroma(c, des, 0.34, 0.11, 9, 0.45, waviness=1.6)
        fibroblasts(c, des, 26, 0.6)
        lymphocytes(c, des, 0.12, 12)
        keep = (1.0, 0.8, 0.5)[max(look.grade_index, 0)]
        shapes = scatter_shapes(c, T, 95, (20, 60), (1.0, 2.3), 0.3, keep=keep, jitter=0.3)
        necro = 0.6 if look.findings.get("necrosis") else 0.0
        glands = draw_glands(c, shapes, GlandStyle(
            epi_um=24, cyto_e=0.3, cyto_h=0.17, lumen="clear", necrosis_frac=necro, nuc_a_um=7.0, nuc_b_um=3.8,
            nuc_spacing_um=4.6, strat=0.8, depth=0.2, pleo=0.22 + 0.1 * g, intensity=1.35, vesicular=0.6,
            cribriform=0.45 if look.findings.get("cribriform") else 0.0))
        tumor = glands
        if look.grade_index >= 2:
            nests = solid_nests(c, T & ~glands, 0.35, (15, 45), 90)
            c.paint(nests, 0.3, 0.17)
            fill_nuclei(c, nests, 11, 6.5, 4.5, 0.3, 1.3, 0.6)
            tumor = tumor | nests
        if look.findings.get("mucin"):
            pools = region(c, T & ~tumor, 0.18, 120)
            c.paint(pools, 0.05, 0.17, texture=0.5, cell_um=5)
        mitoses(c, tumor, 30 + 40 * g)


def aggregate(c: Canvas, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask[::16, ::16])
    if len(xs) == 0:
        return np.zeros_like(mask)
    i = int(c.rng.integers(0, len(xs)))
    r = c.px(c.rng.uniform(90, 150))
    sh = Shape(xs[i] * 16.0, ys[i] * 16.0, r, r * c.rng.uniform(0.7, 1.0), c.rng.uniform(0, np.pi), 0.1, c.rng)
    return c.polygons_mask([sh.polygon()]) & mask


def solid_nests(c: Canvas, mask: np.ndarray, frac: float, r_um: tuple[float, float], spacing_um: float,
                irregular: float = 0.3, aspect: tuple[float, float] = (1.0, 2.5)) -> np.ndarray:
    shapes = scatter_shapes(c, mask, spacing_um, r_um, aspect, irregular, keep=frac)
    return c.polygons_mask([s.polygon() for s in shapes]) & c.tissue


def _stomach(c: Canvas, look: Look, T: np.ndarray) -> None:
    g = look.severity
    if look.diagnosis == "stomach_normal":
        stroma(c, T, 0.27, 0.07, 10, 0.15)
        lymphocytes(c, T, 0.2, 11)
        shapes = scatter_shapes(c, T, 58, (22, 27), (1.0, 1.5), 0.06, jitter=0.15)
        draw_glands(c, shapes, GlandStyle(epi_um=17, nuc_a_um=3.2, nuc_b_um=3.0, nuc_spacing_um=9.5,
                                          depth=0.45, strat=0.1, intensity=1.3, parietal=1.0))
    elif look.diagnosis == "stomach_chronic_gastritis":
        stroma(c, T, 0.24, 0.08, 10, 0.15)
        lymphocytes(c, T, 0.75 + 0.2 * g, 7.0)
        shapes = scatter_shapes(c, T, 125, (24, 34), (1.0, 1.8), 0.1)
        glands = draw_glands(c, shapes, GlandStyle(epi_um=18, cyto_e=0.12, cyto_h=0.12, nuc_a_um=3.4,
                                                   nuc_b_um=2.6, nuc_spacing_um=6.5, depth=0.12, strat=0.05,
                                                   intensity=1.3))
        # Neutrophils (activity): small multilobed nuclei in the epithelium and lamina propria.
        x, y = points_in(c, T, 14, keep=0.12 + 0.35 * g)
        for dx, dy in ((-1.5, 0), (1.5, 0.8), (0.2, -1.6)):
            c.add_nuclei(x + c.px(dx), y + c.px(dy), c.px(1.4), c.px(1.2), None, 1.8)
        if look.findings.get("lymphoid_aggregates", True):
            agg = aggregate(c, T & ~glands)
            lymphocytes(c, agg, 1.0, 6.5)
    else:  # signet ring cell carcinoma
        stroma(c, T, 0.25, 0.08, 10, 0.2)
        lymphocytes(c, T, 0.2, 12)
        shapes = scatter_shapes(c, T, 220, (22, 30), (1.0, 1.6), 0.1, keep=0.35)
        glands = draw_glands(c, shapes, GlandStyle(epi_um=18, cyto_e=0.12, cyto_h=0.12, nuc_a_um=3.4,
                                                   nuc_b_um=2.6, nuc_spacing_um=6.5, depth=0.12, intensity=1.3))
        tumor = region(c, T & ~glands, 0.85, 300)
        x, y = points_in(c, tumor, 15, keep=0.9, jitter=0.25)
        r = c.px(c.rng.uniform(7.0, 10.0, len(x)))
        vac = blobs_mask(c, x, y, r, r * c.rng.uniform(0.8, 1.0, len(x)))
        # Rim of pink cytoplasm around a large pale-grey mucin vacuole.
        c.paint(blobs_mask(c, x, y, r * 1.15, r * 1.1), 0.32, 0.1)
        c.paint(vac, 0.04, 0.1, texture=0.3, cell_um=4)
        ang = c.rng.uniform(0, 2 * np.pi, len(x))
        nx, ny = x + 0.8 * r * np.cos(ang), y + 0.8 * r * np.sin(ang)
        c.add_nuclei(nx, ny, c.px(5.0) * c.rng.uniform(0.8, 1.3, len(x)), c.px(1.9), ang + np.pi / 2,
                     1.75 * c.rng.uniform(0.85, 1.15, len(x)))
        if look.findings.get("mucin"):
            pools = region(c, tumor, 0.15, 90)
            c.paint(pools & ~vac, 0.05, 0.15, texture=0.5, cell_um=5)


def _prostate(c: Canvas, look: Look, T: np.ndarray) -> None:
    ang = c.rng.uniform(0, np.pi)
    stroma(c, T, 0.44, 0.08, 22, 0.3, waviness=0.6, angle=ang)
    fibroblasts(c, T, 22, 0.55, angle=ang)
    if look.diagnosis == "prostate_benign":
        if look.findings.get("inflammation", "none") != "none":
            lymphocytes(c, region(c, T, 0.3), 0.6, 9)
        shapes = scatter_shapes(c, T, 190, (50, 80), (1.0, 1.6), 0.12, infold=0.22, jitter=0.2)
        draw_glands(c, shapes, GlandStyle(epi_um=15, cyto_e=0.13, cyto_h=0.03, nuc_a_um=3.4, nuc_b_um=3.0,
                                          nuc_spacing_um=7, depth=0.45, strat=0.15, intensity=1.25,
                                          basal_layer=True,
                                          corpora=0.4 if look.findings.get("corpora_amylacea") else 0.0))
        return
    grade = look.grade_index if look.grade_index >= 0 else 0
    primary, secondary = [(3, 3), (3, 4), (4, 3), (4, 4), (4, 5)][grade]
    sub = region(c, T, 0.68, 200)
    for pattern, m in ((primary, sub), (secondary, T & ~sub)):
        small = GlandStyle(epi_um=9, cyto_e=0.3, cyto_h=0.15, lumen="clear", nuc_a_um=4.2, nuc_b_um=3.7,
                           nuc_spacing_um=7.5, depth=0.5, strat=0.05, pleo=0.12, intensity=1.2, vesicular=0.95)
        if pattern == 3:
            shapes = scatter_shapes(c, m, 46, (13, 20), (1.0, 1.4), 0.08, jitter=0.2)
            draw_glands(c, shapes, small)
        elif pattern == 4:
            shapes = scatter_shapes(c, m, 110, (35, 60), (1.0, 1.6), 0.2, jitter=0.2)
            small.cribriform = 0.85
            small.epi_um = 14
            draw_glands(c, shapes, small)
        else:
            sheet = region(c, m, 0.8, 80)
            c.paint(sheet, 0.3, 0.15)
            fill_nuclei(c, sheet, 11, 4.5, 4.0, 0.2, 1.3, 0.95)
    mitoses(c, T, 5 + 20 * look.severity)


def _breast(c: Canvas, look: Look, T: np.ndarray) -> None:
    g = look.severity
    if look.diagnosis == "breast_fibroadenoma":
        ang = c.rng.uniform(0, np.pi)
        stroma(c, T, 0.19, 0.1, 16, 0.12, waviness=0.8, angle=ang)
        fill_nuclei(c, T, 18, 4.0, 1.6, 0.15, 1.2, keep=0.7, theta=ang, jitter=0.5)
        shapes = scatter_shapes(c, T, 150, (30, 45), (6.0, 11.0), 0.25, angle=ang, angle_jitter=0.5)
        draw_glands(c, shapes, GlandStyle(epi_um=9, cyto_e=0.3, cyto_h=0.12, nuc_a_um=3.0, nuc_b_um=2.4,
                                          nuc_spacing_um=5.5, depth=0.45, strat=0.2, intensity=1.4,
                                          basal_layer=True))
        return
    fat = region(c, T, 0.2, 220)
    stroma(c, T & ~fat, 0.47, 0.06, 12, 0.5, waviness=1.4)
    fibroblasts(c, T & ~fat, 35, 0.5)
    walls = voronoi_walls(c, fat, 85, 2.5)
    c.clear(fat & ~walls)
    c.paint(walls, 0.42, 0.05, texture=0.1)
    tum = T & ~fat
    tubule_keep = (0.7, 0.35, 0.08)[max(look.grade_index, 0)]
    shapes = scatter_shapes(c, tum, 90, (16, 28), (1.0, 1.8), 0.2, keep=tubule_keep)
    tubules = draw_glands(c, shapes, GlandStyle(epi_um=11, cyto_e=0.36, cyto_h=0.12, nuc_a_um=4.5 + 2 * g,
                                                nuc_b_um=3.8 + 1.5 * g, nuc_spacing_um=7, depth=0.5,
                                                pleo=0.12 + 0.2 * g, intensity=1.3, vesicular=0.3 + 0.5 * g))
    nests = solid_nests(c, tum & ~tubules, 0.5 + 0.35 * g, (14, 40 + 60 * g), 85, 0.35, (1.0, 3.0))
    c.paint(nests, 0.36, 0.12)
    if look.findings.get("necrosis"):
        big = ndimage.binary_erosion(nests[::4, ::4], iterations=max(1, int(c.px(14) / 4)))
        core = np.asarray(Image.fromarray(big).resize((c.w, c.h), Image.Resampling.NEAREST))
        necrosis(c, core & nests)
        nests = nests & ~core
    fill_nuclei(c, nests, 12 + 2 * g, 4.5 + 2.2 * g, 3.8 + 1.6 * g, 0.12 + 0.22 * g, 1.3, 0.3 + 0.5 * g)
    mitoses(c, nests | tubules, 10 + 80 * g)


def _lung(c: Canvas, look: Look, T: np.ndarray) -> None:
    g = look.severity
    if look.diagnosis == "lung_normal":
        walls = voronoi_walls(c, T, 120, 5)
        c.clear(T & ~walls)
        c.paint(walls, 0.36, 0.06, texture=0.15)
        x, y = points_in(c, walls, 14, keep=0.45)
        c.add_nuclei(x, y, c.px(3.8), c.px(1.8), None, 1.3)
        if look.findings.get("inflammation", "none") != "none":
            lymphocytes(c, region(c, walls, 0.4), 0.5, 8)
        # A few alveolar macrophages in air spaces: pale pink cells with a small nucleus.
        x, y = points_in(c, T & ~walls, 60, keep=0.25)
        mac = blobs_mask(c, x, y, c.px(7.0), c.px(6.0))
        c.paint(mac, 0.3, 0.05)
        c.add_nuclei(x, y, c.px(3.0), c.px(2.5), None, 1.1)
        return
    if look.diagnosis == "lung_adenocarcinoma":
        lepidic = region(c, T, (0.75, 0.35, 0.15)[max(look.grade_index, 0)], 200)
        walls = voronoi_walls(c, lepidic, 110, 9)
        c.clear(lepidic & ~walls)
        c.paint(walls, 0.34, 0.07)
        # Hobnail tumour cells lining the alveolar walls.
        edge = walls & ~ndimage.binary_erosion(walls, iterations=2)
        fill_nuclei(c, edge, 6.5, 4.3 + g, 3.4 + g, 0.18 + 0.15 * g, 1.35, 0.6)
        rest = T & ~lepidic
        stroma(c, rest, 0.36, 0.1, 10, 0.4)
        fibroblasts(c, rest, 30, 0.5)
        solid_frac = (0.0, 0.15, 0.55)[max(look.grade_index, 0)]
        solid = region(c, rest, solid_frac, 120)
        shapes = scatter_shapes(c, rest & ~solid, 75, (18, 34), (1.0, 1.7), 0.18)
        mucin = "mucin" if look.findings.get("mucin") else "clear"
        glands = draw_glands(c, shapes, GlandStyle(epi_um=12, cyto_e=0.3, cyto_h=0.12, lumen=mucin,
                                                   nuc_a_um=4.5 + g, nuc_b_um=3.6 + g, nuc_spacing_um=7,
                                                   depth=0.4, pleo=0.16 + 0.15 * g, intensity=1.3,
                                                   vesicular=0.7))
        c.paint(solid, 0.3, 0.12)
        fill_nuclei(c, solid, 13, 5.5, 4.5, 0.3, 1.3, 0.7)
        if look.findings.get("mucin"):
            # Intracytoplasmic mucin droplets in solid areas.
            x, y = points_in(c, solid, 30, keep=0.5)
            c.paint(blobs_mask(c, x, y, c.px(4.0), c.px(3.5)) & solid, 0.05, 0.14, texture=0.3, cell_um=3)
        mitoses(c, glands | solid | edge, 10 + 40 * g)
        return
    # squamous cell carcinoma
    alv = region(c, T, 0.18, 250)
    walls = voronoi_walls(c, alv, 110, 6)
    c.clear(alv & ~walls)
    c.paint(walls, 0.36, 0.06)
    rest = T & ~alv
    stroma(c, rest, 0.33, 0.1, 10, 0.4)
    fibroblasts(c, rest, 30, 0.5)
    lymphocytes(c, rest, 0.25, 12)
    shapes = scatter_shapes(c, rest, 260, (70, 130), (1.0, 2.0), 0.25, jitter=0.2)
    nests = c.polygons_mask([s.polygon() for s in shapes]) & rest
    c.paint(nests, 0.62, 0.05, texture=0.12, cell_um=10)
    # Basaloid periphery of each nest.
    rim = nests & ~ndimage.binary_erosion(nests[::2, ::2], iterations=max(1, int(c.px(10) / 2))).repeat(
        2, 0).repeat(2, 1)[:c.h, :c.w]
    c.paint(rim, 0.32, 0.14)
    core = nests & ~rim
    pearls = []
    n_pearls = (3, 2, 1)[max(look.grade_index, 0)] if look.findings.get("keratin_pearls", True) else 0
    for sh in shapes:
        for _ in range(n_pearls):
            tt, ss = c.rng.uniform(0, 2 * np.pi), c.rng.uniform(0, 0.5)
            px_, py_ = sh.at(np.array([tt]), ss)
            pearls.append((float(px_[0]), float(py_[0]), c.px(c.rng.uniform(18, 40))))
    pmask = np.zeros_like(nests)
    for cx, cy, r in pearls:
        keratin_pearl(c, cx, cy, r, pmask)
    pmask &= nests
    if look.findings.get("necrosis"):
        nec = region(c, core & ~pmask, 0.18, 60)
        necrosis(c, nec)
        core = core & ~nec
    fill_nuclei(c, core & ~pmask, 15 - 2 * g, 5.2 + 1.5 * g, 4.4 + 1.2 * g, 0.15 + 0.15 * g, 1.3, 0.5)
    fill_nuclei(c, rim, 7.5, 4.5, 3.2, 0.12, 1.55, 0.2)
    mitoses(c, nests, 20 + 40 * g)


def keratin_pearl(c: Canvas, cx: float, cy: float, r: float, pmask: np.ndarray) -> None:
    """Concentric whorls of glassy, bright-eosinophilic keratin."""
    y0, y1, x0, x1 = int(max(cy - r, 0)), int(min(cy + r + 1, c.h)), int(max(cx - r, 0)), int(min(cx + r + 1, c.w))
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2).astype(np.float32)
    inside = d < r
    whorl = 0.8 + 0.25 * np.sin(d / max(c.px(3.0), 1) * 2 * np.pi)
    sl = (slice(y0, y1), slice(x0, x1))
    c.eos[sl][inside] = whorl[inside]
    c.hema[sl][inside] = 0.02
    pmask[sl] |= inside
    # Flattened nuclei caught in the outer whorls.
    n = max(3, int(r / c.px(4)))
    t = c.rng.uniform(0, 2 * np.pi, n)
    rr = r * c.rng.uniform(0.55, 0.95, n)
    c.add_nuclei(cx + rr * np.cos(t), cy + rr * np.sin(t), c.px(4.5), c.px(1.1), t + np.pi / 2, 1.2)


def _skin(c: Canvas, look: Look, T: np.ndarray) -> None:
    g = look.severity
    # Epidermis: a band under the top edge of the tissue, with rete ridges.
    top = np.where(T.any(0), T.argmax(0), c.h).astype(np.float32)
    top = ndimage.uniform_filter1d(top, 15)
    xs = np.arange(c.w, dtype=np.float32)
    thick = c.px(55) + c.px(30) * np.maximum(0, np.sin(xs / c.px(60) * np.pi + c.rng.uniform(0, 6))) ** 2
    rows = np.arange(c.h, dtype=np.float32)[:, None]
    depth = rows - top[None, :]
    corneum = (depth >= 0) & (depth < c.px(12)) & T
    epi = (depth >= c.px(12)) & (depth < thick[None, :]) & T
    dermis = T & ~epi & ~corneum
    stroma(c, dermis, 0.5, 0.05, 28, 0.55, waviness=1.8)
    fibroblasts(c, dermis, 45, 0.5)
    c.paint(corneum, 0.45, 0.03, texture=0.4, cell_um=3)
    c.paint(epi, 0.4, 0.06, texture=0.1)
    fill_nuclei(c, epi, 10.5, 3.6, 3.0, 0.1, 1.25)
    basal = epi & (depth > thick[None, :] - c.px(9))
    fill_nuclei(c, basal, 6, 3.6, 2.4, 0.1, 1.6, theta=np.pi / 2)
    upper = dermis & (depth < thick[None, :] + c.px(350))
    if look.diagnosis == "skin_basal_cell_carcinoma":
        shapes = scatter_shapes(c, upper, 260, (70, 150), (1.0, 1.8), 0.28, jitter=0.25)
        halo = c.polygons_mask([s.polygon(1.18) for s in shapes]) & dermis
        cleft = c.polygons_mask([s.polygon(1.06) for s in shapes]) & dermis
        nests = c.polygons_mask([s.polygon() for s in shapes]) & dermis
        c.paint(halo & ~cleft, 0.2, 0.11, texture=0.3, cell_um=5)  # mucinous stroma around the nests
        c.clear(cleft & ~nests)  # retraction artefact
        c.paint(nests, 0.13, 0.2, texture=0.1)
        fill_nuclei(c, nests, 6.5, 4.4, 3.1, 0.1, 1.65)
        for sh in shapes:  # peripheral palisading
            per = 2 * np.pi * sh.mean_r
            n = int(per / c.px(4.5))
            t = np.linspace(0, 2 * np.pi, n, endpoint=False)
            x, y = sh.at(t, 1 - c.px(5) / sh.mean_r)
            c.add_nuclei(x, y, c.px(5.0), c.px(2.0), np.arctan2(y - sh.cy, x - sh.cx), 1.75)
        mitoses(c, nests, 25)
    elif look.diagnosis == "skin_melanoma":
        tumor = region(c, dermis & (depth < thick[None, :] + c.px(700)), 0.8, 250)
        c.paint(tumor, 0.3, 0.06, texture=0.15)
        fill_nuclei(c, tumor, 17, 6.5, 5.3, 0.28, 1.25, 0.95)
        # Pagetoid spread: scattered large atypical cells in the epidermis.
        x, y = points_in(c, epi, 40, keep=0.35)
        cells = blobs_mask(c, x, y, c.px(8), c.px(7)) & epi
        c.paint(cells, 0.12, 0.05)
        c.add_nuclei(x, y, c.px(5.5), c.px(4.8), None, 1.3, 0.9)
        pig = {"none": 0.0, "mild": 0.35, "moderate": 0.7, "severe": 1.1}.get(
            str(look.findings.get("pigment", "moderate")), 0.7)
        granules = np.clip(c.noise(3.0, fresh=True) - 0.6, 0, None) * np.clip(c.noise(40.0) + 0.7, 0, None)
        np.copyto(c.mel, pig * granules, where=tumor | cells)
        mitoses(c, tumor, 40 + 40 * g)
    else:  # intradermal nevus: nests of small uniform cells, maturing with depth
        zone = dermis & (depth < thick[None, :] + c.px(450))
        shapes = scatter_shapes(c, zone, 85, (25, 45), (1.0, 1.6), 0.15, jitter=0.2)
        nests = c.polygons_mask([s.polygon() for s in shapes]) & dermis
        c.paint(nests, 0.25, 0.08)
        shallow = nests & (depth < thick[None, :] + c.px(180))
        deep = nests & ~shallow
        fill_nuclei(c, shallow, 8.5, 3.4, 3.2, 0.05, 1.35)
        fill_nuclei(c, deep, 9, 3.6, 1.8, 0.05, 1.3)
        pig = {"none": 0.0, "mild": 0.25, "moderate": 0.45, "severe": 0.6}.get(
            str(look.findings.get("pigment", "mild")), 0.25)
        granules = np.clip(c.noise(3.0, fresh=True) - 0.8, 0, None)
        np.copyto(c.mel, pig * granules, where=shallow)


RECIPES = {"colon": _colon, "stomach": _stomach, "prostate": _prostate, "breast": _breast, "lung": _lung,
           "skin": _skin}


def render_tissue(look: Look, height: int, width: int, mpp: float, rng: np.random.Generator,
                  full: bool = False) -> np.ndarray:
    """Render one field of tissue for `look` as an (height, width, 3) uint8 RGB image; `full`: tissue
    everywhere (no glass), for tiling into larger slides."""
    c = Canvas(height, width, mpp, rng)
    c.tissue = np.ones((height, width), bool) if full else tissue_mask(c, look.procedure)
    RECIPES[look.organ](c, look, c.tissue)
    c.render_nuclei()
    # Staining varies between labs and batches: scale H and E a little per slide.
    return c.to_rgb(stain_h=float(rng.uniform(0.85, 1.15)), stain_e=float(rng.uniform(0.82, 1.18)))
