"""Patch encoders: shapes, batching, determinism, spec round trips, HF and timm encoders from tiny local dirs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference.encoders import HETextureEncoder, PatchEncoder, build_encoder, ensure_torchvision_importable


def _images(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def builtin():
    return build_encoder({"kind": "builtin"})


def test_builtin_shapes_batching_determinism(builtin):
    assert isinstance(builtin, PatchEncoder) and isinstance(builtin, HETextureEncoder)
    assert 200 <= builtin.dim <= 768
    imgs = _images(5)
    a = builtin.encode(imgs, batch_size=2)
    b = builtin.encode(imgs, batch_size=5)
    assert a.shape == (5, builtin.dim) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-4)  # batching does not change features
    assert torch.equal(builtin.encode(imgs[:1]), builtin.encode(imgs[:1]))
    # Other input sizes are resized; tensors are accepted too.
    assert builtin.encode(torch.from_numpy(_images(2, 160))).shape == (2, builtin.dim)
    assert builtin.encode(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, builtin.dim)
    with pytest.raises(ValueError):
        builtin.encode(np.zeros((2, 224, 224), np.uint8))


def test_builtin_sees_stain_differences(builtin):
    """Purple (nuclear) vs pink (stromal) vs white patches give clearly different features."""
    purple = np.zeros((1, 224, 224, 3), np.uint8) + np.array([110, 90, 170], np.uint8)
    pink = np.zeros((1, 224, 224, 3), np.uint8) + np.array([235, 160, 200], np.uint8)
    white = np.full((1, 224, 224, 3), 242, np.uint8)
    f = builtin.encode(np.concatenate([purple, pink, white]))
    assert (f[0] - f[1]).norm() > 1 and (f[1] - f[2]).norm() > 1


def test_spec_roundtrip(builtin):
    spec = json.loads(json.dumps(builtin.spec))
    again = build_encoder(spec)
    imgs = _images(2)
    assert torch.equal(again.encode(imgs), builtin.encode(imgs))
    rnd = build_encoder({"kind": "random", "seed": 3, "dim": 64})
    assert rnd.dim == 64 and torch.equal(build_encoder(rnd.spec).encode(imgs), rnd.encode(imgs))
    with pytest.raises(ValueError, match="unknown encoder kind"):
        build_encoder({"kind": "nope"})


def test_hf_encoder_from_tiny_local_dir(tmp_path):
    ensure_torchvision_importable()  # PyPI's CUDA torchvision next to CPU torch would break the import
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=64, patch_size=16)
    torch.manual_seed(0)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"height": 64, "width": 64}}))
    enc = build_encoder({"kind": "hf", "path": str(tmp_path / "vit")})
    assert enc.dim == 32 and enc.input_size == 64 and enc.spec["mean"] == [0.5, 0.5, 0.5]
    f = enc.encode(_images(3, 96), batch_size=2)
    assert f.shape == (3, 32) and torch.isfinite(f).all()
    # CLS of the model run by hand on the same preprocessing.
    x = enc.preprocess(_images(3, 96))
    ref = ViTModel.from_pretrained(tmp_path / "vit", add_pooling_layer=False)(pixel_values=x).last_hidden_state[:, 0]
    assert torch.allclose(f, ref.detach(), atol=1e-5)
    mean_pool = build_encoder(enc.spec | {"pooling": "mean"})
    assert mean_pool.encode(_images(1)).shape == (1, 32)
    with pytest.raises(FileNotFoundError):
        build_encoder({"kind": "hf", "path": str(tmp_path / "absent")})


def test_timm_encoder_from_tiny_state_dict(tmp_path):
    assert ensure_torchvision_importable()
    import timm
    from safetensors.torch import save_file

    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs).eval()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    spec = {"kind": "timm", "model_name": "vit_tiny_patch16_224", "weights": str(tmp_path / "model.safetensors"),
            "model_kwargs": kwargs, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    enc = build_encoder(spec)
    assert enc.dim == 48 and enc.input_size == 32
    imgs = _images(3, 64)
    f = enc.encode(imgs, batch_size=2)
    with torch.no_grad():
        ref = model(enc.preprocess(imgs))
    assert torch.allclose(f, ref, atol=1e-5)
    enc_bin = build_encoder(spec | {"weights": str(tmp_path / "pytorch_model.bin")})
    assert torch.allclose(enc_bin.encode(imgs), f, atol=1e-6)
    assert json.loads(json.dumps(enc.spec))["model_name"] == "vit_tiny_patch16_224"
