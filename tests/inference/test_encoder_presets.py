"""Encoder presets: every published foundation model, as a tiny random-init model of the same architecture
family written in that model's published file layout, loads through its preset with the preset's pooling,
normalisation and output width; a checkpoint with a missing key (or a wrong shape) fails naming it."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from inference.encoders import (
    EncoderLoadError,
    build_encoder,
    ensure_torchvision_importable,
    timm_kwargs,
    weights_fingerprint,
)
from inference.presets import PRESETS, expand_preset

assert ensure_torchvision_importable()
import timm  # noqa: E402


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _write_weights(state: dict, path) -> None:
    state = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


# ----------------------------------------------------------------------------------------------- timm
TIMM_TINY = {  # preset -> (tiny architecture overrides, published weight file, tiny output width)
    "uni": ({"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2}, "pytorch_model.bin", 32),
    "uni2-h": ({"img_size": 28, "embed_dim": 48, "depth": 1, "num_heads": 2}, "pytorch_model.bin", 48),
    "virchow": ({"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2}, "model.safetensors", 64),
    "virchow2": ({"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2}, "model.safetensors", 64),
    "h-optimus-0": ({"img_size": 28, "embed_dim": 48, "depth": 1, "num_heads": 2}, "model.safetensors", 48),
    "h-optimus-1": ({"img_size": 28, "embed_dim": 48, "depth": 1, "num_heads": 2}, "model.safetensors", 48),
    "prov-gigapath": ({"img_size": 32, "embed_dim": 48, "depth": 1, "num_heads": 2}, "pytorch_model.bin", 48),
}


def _reference_output(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What each model card says its embedding is, written out independently of the encoder code."""
    out = model(x)
    if name == "virchow":  # class token beside the mean of the 256 patch tokens
        return torch.cat([out[:, 0], out[:, 1:].mean(1)], dim=-1)
    if name == "virchow2":  # tokens 1-4 are registers
        return torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1)
    return out


def _timm_dir(tmp_path, name: str):
    tiny, weight_file, _ = TIMM_TINY[name]
    preset = PRESETS[name]
    kwargs = {**preset["model_kwargs"], **tiny}
    torch.manual_seed(0)
    model = timm.create_model(preset["model_name"], pretrained=False, **timm_kwargs(kwargs)).eval()
    d = tmp_path / name
    d.mkdir()
    # timm's hub layout: config.json names the architecture; the weights beside it.
    (d / "config.json").write_text(json.dumps({"architecture": preset["model_name"], "num_classes": 0,
                                               "model_args": {k: v for k, v in kwargs.items()},
                                               "pretrained_cfg": {"mean": preset["mean"], "std": preset["std"]}}))
    _write_weights(model.state_dict(), d / weight_file)
    return d, model, tiny


@pytest.mark.parametrize("name", sorted(TIMM_TINY))
def test_timm_presets_load_the_published_layout(tmp_path, name):
    d, model, tiny = _timm_dir(tmp_path, name)
    width = TIMM_TINY[name][2]
    size = tiny["img_size"]
    enc = build_encoder({"preset": name, "path": str(d), "model_kwargs": tiny, "input_size": size, "dim": width})
    assert enc.dim == width and enc.spec["preset"] == name
    assert enc.spec["mean"] == PRESETS[name]["mean"] and enc.spec["std"] == PRESETS[name]["std"]
    assert torch.allclose(enc.mean.flatten(), torch.tensor(PRESETS[name]["mean"]))
    imgs = _images(3, size)
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(PRESETS[name]["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(PRESETS[name]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = _reference_output(name, model, x)
    assert torch.allclose(enc.encode(imgs, batch_size=2), ref, atol=1e-5)
    # The complete spec is JSON and rebuilds the same encoder.
    again = build_encoder(json.loads(json.dumps(enc.spec)))
    assert torch.equal(again.encode(imgs), enc.encode(imgs))


def test_timm_presets_full_size_widths_are_the_published_ones():
    """Built on the meta device (no memory, no weights): the full architectures give the stated widths."""
    for name, preset in PRESETS.items():
        if preset["kind"] != "timm":
            continue
        with torch.device("meta"):
            model = timm.create_model(preset["model_name"], pretrained=False, **timm_kwargs(preset["model_kwargs"]))
        width = model.num_features * (2 if preset["pooling"] == "cls+mean" else 1)
        assert width == preset["dim"], name
    assert PRESETS["virchow2"]["dim"] == 2560 and PRESETS["uni2-h"]["dim"] == 1536


def test_missing_key_wrong_shape_missing_file_and_wrong_preset_are_named(tmp_path):
    d, model, tiny = _timm_dir(tmp_path, "virchow2")
    spec = {"preset": "virchow2", "path": str(d), "model_kwargs": tiny, "dim": 64}
    state = model.state_dict()
    broken = {k: v for k, v in state.items() if k != "blocks.0.mlp.fc2.weight"}
    _write_weights(broken, d / "model.safetensors")
    with pytest.raises(EncoderLoadError, match=r"missing key\(s\): blocks\.0\.mlp\.fc2\.weight"):
        build_encoder(spec)
    _write_weights(state | {"reg_token": torch.zeros(1, 2, 32)}, d / "model.safetensors")
    with pytest.raises(EncoderLoadError, match=r"wrong shape\(s\): reg_token \(1, 2, 32\) \(expected \(1, 4, 32\)\)"):
        build_encoder(spec)
    _write_weights(state | {"head.weight": torch.zeros(2, 64)}, d / "model.safetensors")
    with pytest.raises(EncoderLoadError, match="unexpected key.*head.weight"):
        build_encoder(spec)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        build_encoder(spec)
    _write_weights(state, d / "model.safetensors")
    with pytest.raises(EncoderLoadError, match="architecture 'vit_huge_patch14_224'"):
        build_encoder({"preset": "h-optimus-0", "path": str(d), "model_kwargs": tiny})
    with pytest.raises(EncoderLoadError, match="states 2560-d"):  # the tiny model is not the published one
        build_encoder({"preset": "virchow2", "path": str(d), "model_kwargs": tiny})


def test_any_timm_model_needs_its_normalisation(tmp_path):
    d, model, tiny = _timm_dir(tmp_path, "uni")
    spec = {"kind": "timm", "model_name": "vit_large_patch16_224", "path": str(d),
            "model_kwargs": {**PRESETS["uni"]["model_kwargs"], **tiny}}
    with pytest.raises(ValueError, match="'mean' and 'std'"):
        build_encoder(spec)
    enc = build_encoder(spec | {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert enc.dim == 32 and enc.spec["mean"] == [0.5, 0.5, 0.5]


def test_weights_fingerprint_follows_the_bytes(tmp_path):
    d, model, tiny = _timm_dir(tmp_path, "uni")
    spec = {"preset": "uni", "path": str(d), "model_kwargs": tiny}
    first = weights_fingerprint(spec)
    assert len(first) == 64 and weights_fingerprint(spec) == first
    state = {k: v + 1 for k, v in model.state_dict().items()}
    _write_weights(state, d / "pytorch_model.bin")
    assert weights_fingerprint(spec) != first
    assert weights_fingerprint({"kind": "random", "seed": 0}) == ""


# ------------------------------------------------------------------------------------------------ hf
def _hf_dir(tmp_path, name: str):
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )

    d = tmp_path / name
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    if name == "phikon":
        model = ViTModel(ViTConfig(**small, image_size=32, patch_size=16), add_pooling_layer=True)
    elif name == "phikon-v2":
        model = Dinov2Model(Dinov2Config(**small, image_size=28, patch_size=14))
    else:  # Hibou: DINOv2 with 4 registers
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small, image_size=28, patch_size=14,
                                                                   num_register_tokens=4))
    model.eval().save_pretrained(d)
    if name.startswith("hibou"):  # its published config.json: model_type dinov2 + remote-code auto_map
        cfg = json.loads((d / "config.json").read_text())
        cfg.update({"model_type": "dinov2", "architectures": ["Dinov2Model"],
                    "auto_map": {"AutoConfig": "configuration_dinov2.Dinov2Config",
                                 "AutoModel": "modeling_dinov2.Dinov2Model"}})
        (d / "config.json").write_text(json.dumps(cfg))
    size = 32 if name == "phikon" else 28
    preset = PRESETS[name]
    (d / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": preset["mean"], "image_std": preset["std"], "size": {"height": size, "width": size}}))
    return d, model, size


@pytest.mark.parametrize("name", ["phikon", "phikon-v2", "hibou-b", "hibou-l"])
def test_hf_presets_load_the_published_layout(tmp_path, name):
    d, model, size = _hf_dir(tmp_path, name)
    enc = build_encoder({"preset": name, "path": str(d), "input_size": size, "dim": 32})
    assert enc.dim == 32 and enc.spec["mean"] == PRESETS[name]["mean"]
    imgs = _images(2, size)
    x = enc.preprocess(imgs)
    with torch.no_grad():
        out = model(pixel_values=x)
    ref = out.pooler_output if name.startswith("hibou") else out.last_hidden_state[:, 0]
    assert torch.allclose(enc.encode(imgs), ref, atol=1e-5)
    again = build_encoder(json.loads(json.dumps(enc.spec)))
    assert torch.equal(again.encode(imgs), enc.encode(imgs))


def test_hf_missing_key_is_named(tmp_path):
    from safetensors.torch import load_file

    d, _, size = _hf_dir(tmp_path, "phikon-v2")
    state = load_file(str(d / "model.safetensors"))
    state.pop("encoder.layer.0.mlp.fc1.weight")
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EncoderLoadError, match=r"missing key\(s\): .*encoder\.layer\.0\.mlp\.fc1\.weight"):
        build_encoder({"preset": "phikon-v2", "path": str(d), "input_size": size, "dim": 32})


# --------------------------------------------------------------------------------------------- conch
class _ConchV1Visual(nn.Module):
    """CONCH v1's VisualModel as its repository writes it (conch/open_clip_custom/vision_tower.py):
    trunk, attn_pool_contrast (query + nn.MultiheadAttention + ln_q/ln_k), ln_contrast, proj_contrast,
    attn_pool_caption, ln_caption."""

    def __init__(self, width=32, embed=24, caption=32, image_size=32):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(embed_dim=width, depth=1, num_heads=2, mlp_ratio=4, img_size=image_size,
                                       patch_size=16, num_classes=0, dynamic_img_size=True)
        self.attn_pool_contrast = nn.Module()
        self.attn_pool_contrast.query = nn.Parameter(torch.randn(1, embed))
        self.attn_pool_contrast.attn = nn.MultiheadAttention(embed, 2, kdim=width, vdim=width)
        self.attn_pool_contrast.ln_q, self.attn_pool_contrast.ln_k = nn.LayerNorm(embed), nn.LayerNorm(width)
        self.ln_contrast = nn.LayerNorm(embed)
        self.proj_contrast = nn.Parameter(torch.randn(embed, embed))
        self.attn_pool_caption = nn.Module()
        self.attn_pool_caption.query = nn.Parameter(torch.randn(4, caption))
        self.attn_pool_caption.attn = nn.MultiheadAttention(caption, 2, kdim=width, vdim=width)
        self.attn_pool_caption.ln_q, self.attn_pool_caption.ln_k = nn.LayerNorm(caption), nn.LayerNorm(width)
        self.ln_caption = nn.LayerNorm(caption)

    def forward_no_head(self, x):  # encode_image(x, proj_contrast=False, normalize=False)
        tokens = self.trunk.forward_features(x)
        p = self.attn_pool_contrast
        kv = p.ln_k(tokens).permute(1, 0, 2)
        q = p.ln_q(p.query).unsqueeze(1).repeat(1, kv.shape[1], 1)
        pooled = p.attn(q, kv, kv, need_weights=False)[0].permute(1, 0, 2)[:, 0]
        return self.ln_contrast(pooled)


def test_conch_v1_loads_the_open_clip_coca_layout(tmp_path):
    torch.manual_seed(0)
    visual = _ConchV1Visual().eval()
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state |= {"text.token_embedding.weight": torch.randn(10, 32), "text.ln_final.weight": torch.ones(32),
              "text_decoder.resblocks.0.ln_1.weight": torch.ones(32), "logit_scale": torch.tensor(2.0)}
    d = tmp_path / "conch"
    d.mkdir()
    torch.save(state, d / "pytorch_model.bin")
    (d / "meta.yaml").write_text("model: conch_ViT-B-16\n")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 24, "embed_dim_caption": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "layers": 1, "width": 32, "num_heads": 2, "mlp_ratio": 4,
                       "attn_pooler_heads": 2, "n_queries_contrast": 1, "n_queries_caption": 4}}}))
    enc = build_encoder({"preset": "conch-v1", "path": str(d), "input_size": 32, "dim": 24})
    assert enc.dim == 24 and enc.spec["mean"] == PRESETS["conch-v1"]["mean"]  # OpenAI CLIP statistics
    assert "text." in enc.spec["ignore_prefixes"]  # the declared-unused parts are listed in the spec
    imgs = _images(2, 32)
    with torch.no_grad():
        ref = visual.forward_no_head(enc.preprocess(imgs))
    assert torch.allclose(enc.encode(imgs), ref, atol=1e-5)
    del state["visual.attn_pool_contrast.attn.k_proj_weight"]
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(EncoderLoadError, match=r"missing key\(s\): attn_pool_contrast\.attn\.k_proj_weight"):
        build_encoder({"preset": "conch-v1", "path": str(d), "input_size": 32, "dim": 24})
    torch.save({k.removeprefix("visual."): v for k, v in state.items()}, d / "pytorch_model.bin")
    with pytest.raises(EncoderLoadError, match="no visual"):
        build_encoder({"preset": "conch-v1", "path": str(d)})


def test_conch_v15_loads_its_vision_checkpoint(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    trunk = VisionTransformer(embed_dim=32, depth=1, num_heads=2, mlp_ratio=4, img_size=32, patch_size=16,
                              num_classes=0, init_values=1.0).eval()
    pool = {"query": torch.randn(1, 24), "ln_k.weight": torch.rand(32) + 0.5, "ln_k.bias": torch.randn(32),
            "ln_q.weight": torch.rand(24) + 0.5, "ln_q.bias": torch.randn(24), "to_q.weight": torch.randn(24, 24) / 5,
            "to_kv.weight": torch.randn(48, 32) / 5, "to_out.weight": torch.randn(24, 24) / 5}
    ln = nn.LayerNorm(24)
    state = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    state |= {f"attn_pool_contrast.{k}": v for k, v in pool.items()} | {f"ln_contrast.{k}": v for k, v in ln.state_dict().items()}
    d = tmp_path / "conchv1_5"
    d.mkdir()
    torch.save(state, d / "pytorch_model_vision.bin")
    arch = {"image_size": 32, "patch_size": 16, "layers": 1, "width": 32, "num_heads": 2, "embed_dim": 24,
            "attn_pooler_heads": 2}
    enc = build_encoder({"preset": "conch-v1.5", "path": str(d), "arch": arch, "input_size": 32, "dim": 24})
    imgs = _images(2, 32)
    x = enc.preprocess(imgs)
    with torch.no_grad():  # TRIDENT's AttentionalPooler, written out
        t = F_layer_norm(trunk.forward_features(x), pool["ln_k.weight"], pool["ln_k.bias"])
        q = F_layer_norm(pool["query"], pool["ln_q.weight"], pool["ln_q.bias"]) @ pool["to_q.weight"].T
        k, v = (t @ pool["to_kv.weight"].T).chunk(2, -1)
        heads = lambda z: z.reshape(z.shape[0], -1, 2, 12).transpose(1, 2)  # noqa: E731
        qh = heads(q.expand(2, -1, -1)) * 12 ** -0.5
        attn = (qh @ heads(k).transpose(-1, -2)).softmax(-1)
        out = (attn @ heads(v)).transpose(1, 2).reshape(2, 1, 24) @ pool["to_out.weight"].T
        ref = ln(out[:, 0])
    assert enc.dim == 24 and torch.allclose(enc.encode(imgs), ref, atol=1e-5)
    assert enc.spec["mean"] == PRESETS["conch-v1.5"]["mean"]


def F_layer_norm(x, w, b):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b)


def test_every_preset_is_complete_and_listed():
    out = subprocess.run([sys.executable, "-m", "inference.encoders", "--list"], capture_output=True, text=True,
                         check=True).stdout
    for name in PRESETS:
        assert name in out
        full = expand_preset({"preset": name, "path": "/x"})
        assert json.loads(json.dumps(full)) == full  # JSON-serialisable
        for key in ("kind", "mean", "std", "input_size", "dim", "tiling", "architecture", "source"):
            assert key in full, (name, key)
        assert set(full["tiling"]) >= {"mpp", "patch_size"}
    assert "any timm" in out and "any HF" in out
