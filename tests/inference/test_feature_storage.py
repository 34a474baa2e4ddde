"""SlideFeatures on disk: a storage dtype (float16 for the web app's cache), float32 back, metadata without
the tensors, files from before dtypes were recorded, and what the model API accepts as features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inference.features import FeaturesMeta, SlideFeatures, features_tensor, read_meta

SPEC = {"kind": "random", "seed": 0, "dim": 8, "input_size": 64}


def make_features(n: int = 5, d: int = 8) -> SlideFeatures:
    g = torch.Generator().manual_seed(0)
    return SlideFeatures(
        features=torch.randn(n, d, generator=g),
        coords=np.array([[i * 448, 896] for i in range(n)], dtype=np.int64),
        patch_size_level0=448,
        patch_size=224,
        target_mpp=1.0,
        slide_mpp=0.5,
        dimensions=(4096, 2048),
        encoder_spec=dict(SPEC),
        n_candidates=n + 2,
        encode_seconds=0.25,
    )


def test_float16_round_trip_records_the_dtype_and_gives_float32_back(tmp_path):
    sf = make_features()
    path = sf.save(tmp_path / "f16.safetensors", extra={"slide": "12"}, dtype=torch.float16)
    back = SlideFeatures.load(path)
    assert back.features.dtype == torch.float32 and back.coords.dtype == np.int64
    assert torch.equal(back.features, sf.features.half().float())  # exactly what float16 keeps
    assert torch.allclose(back.features, sf.features, atol=1e-2)
    assert np.array_equal(back.coords, sf.coords)
    assert back.meta() == sf.meta()  # patch sizes, mpp, dimensions, encoder spec, timings
    again = SlideFeatures.load(path)
    assert torch.equal(again.features, back.features)  # every load computes from the same numbers
    meta = read_meta(path)
    assert isinstance(meta, FeaturesMeta) and meta == SlideFeatures.meta_of(path)
    assert meta.dtype == "float16" and meta.n_patches == 5 and meta.dim == 8
    assert meta.patch_size_level0 == 448 and meta.patch_size == 224 and meta.dimensions == (4096, 2048)
    assert meta.extra == {"slide": "12"}
    assert path.stat().st_size < sf.save(tmp_path / "f32.safetensors").stat().st_size
    assert read_meta(tmp_path / "f32.safetensors").dtype == "float32"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_bfloat16_and_refused_dtypes(tmp_path):
    sf = make_features()
    back = SlideFeatures.load(sf.save(tmp_path / "bf16.safetensors", dtype=torch.bfloat16))
    assert (
        back.features.dtype == torch.float32 and read_meta(tmp_path / "bf16.safetensors").dtype == "bfloat16"
    )
    with pytest.raises(ValueError, match="dtype"):
        sf.save(tmp_path / "int.safetensors", dtype=torch.int8)


def test_a_file_in_the_old_format_still_loads(tmp_path):
    """As `save` wrote them before the dtype: float32 features, no "dtype" in the metadata."""
    sf = make_features()
    meta = sf.meta() | {"extra": {"max_patches": 64}}
    path = tmp_path / "old.safetensors"
    save_file(
        {"features": sf.features.contiguous(), "coords": torch.from_numpy(sf.coords)},
        str(path),
        metadata={"slide_features": json.dumps(meta)},
    )
    back = SlideFeatures.load(path)
    assert torch.equal(back.features, sf.features) and np.array_equal(back.coords, sf.coords)
    assert back.dimensions == (4096, 2048) and back.patch_size_level0 == 448
    info = read_meta(path)
    assert info.dtype == "float32" and info.extra == {"max_patches": 64}


def test_meta_checks_a_cache_file_against_an_encoder_spec(tmp_path):
    path = make_features().save(tmp_path / "x.safetensors", dtype=torch.float16)
    meta = read_meta(path)
    assert meta.matches(dict(reversed(list(SPEC.items()))))  # key order does not matter
    assert not meta.matches(SPEC | {"seed": 1})


def test_files_that_are_not_slide_features_are_a_value_error(tmp_path):
    # The web app's former cache format: tensors, but none of SlideFeatures' metadata.
    foreign = tmp_path / "foreign.safetensors"
    save_file(
        {"features": torch.zeros(2, 8).half(), "coords": torch.zeros(2, 2, dtype=torch.int32)},
        str(foreign),
        metadata={"patch_size": "256"},
    )
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    for path in (foreign, garbage):
        with pytest.raises(ValueError):
            read_meta(path)
        with pytest.raises(ValueError):
            SlideFeatures.load(path)
    with pytest.raises(FileNotFoundError):
        read_meta(tmp_path / "missing.safetensors")


def test_features_tensor_takes_the_declared_types_only():
    sf = make_features()
    assert torch.equal(features_tensor(sf), sf.features)
    assert features_tensor(sf.features.double()).dtype == torch.float32
    array = sf.features.numpy()[::-1]  # a negative stride is fine too
    assert torch.equal(features_tensor(array), sf.features.flip(0))
    with pytest.raises(TypeError, match="list"):
        features_tensor([[0.0] * 8])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        features_tensor(torch.zeros(8))
