"""The published pathology foundation models as complete encoder specs: point at the directory, name the model.

    build_encoder({"preset": "virchow2", "path": "/models/Virchow2"})
    python -m inference.encoders --list            # the table below
    python -m inference.encoders --show uni2-h     # one preset's complete spec (JSON)

Each preset says everything `inference.encoders.build_encoder` needs and nothing is guessed at load time:
the architecture (timm model name and keyword arguments, layer classes named by strings; or the
transformers class; or CONCH's tower), the pooling (CLS, CLS + mean of the patch tokens, the pooler), the
normalisation, the input size, the output width and the tiling it was trained at (`tiling`: microns per
pixel and patch side at that resolution; a bundle trained on its features carries the tiling on). The
values follow the authors' model cards and loaders (and TRIDENT's, which loads all of them); the file
names are those of the published repositories. A directory that lacks a weight, holds an unexpected one
or one of another shape is refused with the keys named (`EncoderLoadError`).

`expand_preset({"preset": NAME, "path": DIR, ...overrides})` merges overrides over the preset
(`model_kwargs` and `arch` key by key), which is how the tests build tiny random-init models of each
architecture family; the result records the preset's name.
"""
from __future__ import annotations

import copy
from typing import Any

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
OPENAI_CLIP = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
HOPTIMUS = {"mean": [0.707223, 0.578729, 0.703617], "std": [0.211883, 0.230117, 0.177517]}
HIBOU = {"mean": [0.7068, 0.5755, 0.722], "std": [0.195, 0.2316, 0.1816]}
AT_20X = {"mpp": 0.5, "patch_size": 224}  # 224 px at 0.5 um/px (20x): what these models were trained on

_VIRCHOW_KWARGS = {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "",
                   "dynamic_img_size": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
_HOPTIMUS_KWARGS = {"img_size": 224, "num_classes": 0, "global_pool": "token", "init_values": 1e-5,
                    "dynamic_img_size": False}

PRESETS: dict[str, dict[str, Any]] = {
    "phikon": {
        "kind": "hf", "title": "Phikon (Owkin)", "source": "owkin/phikon",
        "architecture": "ViT-B/16, transformers ViTModel", "pooling": "cls", **IMAGENET, "input_size": 224,
        "dim": 768, "tiling": AT_20X, "ignore_prefixes": ["pooler."],
    },
    "phikon-v2": {
        "kind": "hf", "title": "Phikon-v2 (Owkin)", "source": "owkin/phikon-v2",
        "architecture": "ViT-L/16, transformers Dinov2Model", "pooling": "cls", **IMAGENET, "input_size": 224,
        "dim": 1024, "tiling": AT_20X,
    },
    "uni": {
        "kind": "timm", "title": "UNI (Mahmood lab)", "source": "MahmoodLab/UNI",
        "architecture": "ViT-L/16, timm", "model_name": "vit_large_patch16_224",
        "model_kwargs": {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                         "dynamic_img_size": True},
        "pooling": "head", **IMAGENET, "input_size": 224, "dim": 1024, "tiling": AT_20X,
        "weight_names": ["pytorch_model.bin", "model.safetensors"],
    },
    "uni2-h": {
        "kind": "timm", "title": "UNI2-h (Mahmood lab)", "source": "MahmoodLab/UNI2-h",
        "architecture": "ViT-H/14, 8 registers, SwiGLU, timm", "model_name": "vit_giant_patch14_224",
        "model_kwargs": {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                         "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                         "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU", "reg_tokens": 8,
                         "dynamic_img_size": True},
        "pooling": "head", **IMAGENET, "input_size": 224, "dim": 1536, "tiling": AT_20X,
        "weight_names": ["pytorch_model.bin", "model.safetensors"],
    },
    "virchow": {
        "kind": "timm", "title": "Virchow (Paige)", "source": "paige-ai/Virchow",
        "architecture": "ViT-H/14, SwiGLU, timm; CLS + mean of patch tokens", "model_name": "vit_huge_patch14_224",
        "model_kwargs": dict(_VIRCHOW_KWARGS), "pooling": "cls+mean", **IMAGENET, "input_size": 224,
        "dim": 2560, "tiling": AT_20X,
    },
    "virchow2": {
        "kind": "timm", "title": "Virchow2 (Paige)", "source": "paige-ai/Virchow2",
        "architecture": "ViT-H/14, 4 registers, SwiGLU, timm; CLS + mean of patch tokens",
        "model_name": "vit_huge_patch14_224", "model_kwargs": {**_VIRCHOW_KWARGS, "reg_tokens": 4},
        "pooling": "cls+mean", **IMAGENET, "input_size": 224, "dim": 2560, "tiling": AT_20X,
    },
    "h-optimus-0": {
        "kind": "timm", "title": "H-optimus-0 (Bioptimus)", "source": "bioptimus/H-optimus-0",
        "architecture": "ViT-g/14, 4 registers, timm", "model_name": "vit_giant_patch14_reg4_dinov2",
        "model_kwargs": dict(_HOPTIMUS_KWARGS), "pooling": "head", **HOPTIMUS, "input_size": 224,
        "dim": 1536, "tiling": AT_20X,
    },
    "h-optimus-1": {
        "kind": "timm", "title": "H-optimus-1 (Bioptimus)", "source": "bioptimus/H-optimus-1",
        "architecture": "ViT-g/14, 4 registers, timm", "model_name": "vit_giant_patch14_reg4_dinov2",
        "model_kwargs": dict(_HOPTIMUS_KWARGS), "pooling": "head", **HOPTIMUS, "input_size": 224,
        "dim": 1536, "tiling": AT_20X,
    },
    "prov-gigapath": {
        "kind": "timm", "title": "Prov-GigaPath tile encoder (Microsoft / Providence)",
        "source": "prov-gigapath/prov-gigapath", "architecture": "ViT-g/16 (DINOv2 giant, patch 16), timm",
        "model_name": "vit_giant_patch14_dinov2",
        "model_kwargs": {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                         "num_heads": 24, "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0},
        "pooling": "head", **IMAGENET, "input_size": 224, "dim": 1536, "tiling": AT_20X,
        "weight_names": ["pytorch_model.bin", "model.safetensors"],
    },
    "hibou-b": {
        "kind": "hf", "title": "Hibou-B (HistAI)", "source": "histai/hibou-b",
        "architecture": "ViT-B/14, 4 registers (DINOv2 with registers), transformers",
        "model_class": "Dinov2WithRegistersModel", "pooling": "pooler", **HIBOU, "input_size": 224, "dim": 768,
        "tiling": AT_20X,
    },
    "hibou-l": {
        "kind": "hf", "title": "Hibou-L (HistAI)", "source": "histai/hibou-L",
        "architecture": "ViT-L/14, 4 registers (DINOv2 with registers), transformers",
        "model_class": "Dinov2WithRegistersModel", "pooling": "pooler", **HIBOU, "input_size": 224, "dim": 1024,
        "tiling": AT_20X,
    },
    "conch-v1": {
        "kind": "conch", "version": "v1", "title": "CONCH v1 (Mahmood lab)", "source": "MahmoodLab/CONCH",
        "architecture": "ViT-B/16 + attentional pooler (open_clip CoCa layout); image tower only",
        **OPENAI_CLIP, "input_size": 448, "dim": 512, "tiling": {"mpp": 0.5, "patch_size": 448},
        "proj_contrast": False,
    },
    "conch-v1.5": {
        "kind": "conch", "version": "v1.5", "title": "CONCH v1.5 (Mahmood lab, TITAN's patch encoder)",
        "source": "MahmoodLab/conchv1_5", "architecture": "ViT-L/16 + attentional pooler, 448 px",
        **IMAGENET, "input_size": 448, "dim": 768, "tiling": {"mpp": 0.5, "patch_size": 512},
        "weight_names": ["pytorch_model_vision.bin", "pytorch_model.bin"],
    },
}

# The two open doors: any timm model and any transformers AutoModel, with an explicit spec.
GENERIC = {
    "timm": {"kind": "timm", "model_name": "<timm name>", "path": "<dir>", "model_kwargs": {}, "pooling": "head",
             "mean": "<3 floats>", "std": "<3 floats>", "input_size": 224, "tiling": AT_20X},
    "hf": {"kind": "hf", "path": "<dir>", "pooling": "cls", "mean": "<3 floats, or preprocessor_config.json>",
           "std": "<3 floats>", "input_size": 224, "tiling": AT_20X},
}

_MERGED = ("model_kwargs", "arch")


def expand_preset(spec: dict[str, Any]) -> dict[str, Any]:
    """{"preset": NAME, "path": DIR, ...} -> the preset's complete spec with the given keys over it."""
    name = spec["preset"]
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; one of {', '.join(sorted(PRESETS))}")
    out = copy.deepcopy(PRESETS[name])
    for key, value in spec.items():
        if key in _MERGED and isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = copy.deepcopy(value)
    out["preset"] = name
    return out


def describe() -> str:
    """The presets as a text table (what `python -m inference.encoders --list` prints)."""
    rows = [("preset", "kind", "width", "input", "tiling", "architecture / source")]
    for name, p in PRESETS.items():
        t = p["tiling"]
        rows.append((name, p["kind"], str(p["dim"]), str(p["input_size"]), f"{t['patch_size']} px @ {t['mpp']} um/px",
                     f"{p['architecture']} ({p['source']})"))
    rows.append(("(any timm)", "timm", "-", "-", "-", "explicit spec: model_name, path, model_kwargs, pooling, mean, std"))
    rows.append(("(any HF)", "hf", "-", "-", "-", "explicit spec: path, pooling, mean/std (or preprocessor_config.json)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return "\n".join(lines + ['', 'use: {"preset": NAME, "path": DIR}; --show NAME prints the complete spec'])
