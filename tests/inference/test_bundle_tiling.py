"""Tiling travels with the bundle: um/px, patch size, overlap and tissue threshold recorded in bundle.json are
what `PathAlign.extract` uses; the features key changes with weights and tiling; implausible or missing um/px
(TIFF writers' 72 dpi) gives a clear error, never a patch storm; reading in worker processes gives the same
features as reading in threads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from inference.bundle import DEFAULT_TILING, bundle_tiling, features_key, read_bundle_config, save_bundle
from inference.encoders import build_encoder
from inference.features import extract_slide_features
from inference.pathalign import PathAlign
from inference.qformer import QFormer
from inference.slides import MissingMPPError, open_slide, patch_grid, slide_mpp
from inference.synthetic.corpus import plan_cases, render_case
from inference.synthetic.wsi import write_pyramidal_tiff

ENC = {"kind": "random", "seed": 0, "dim": 16, "input_size": 32}


@pytest.fixture(scope="module")
def slide_025(tmp_path_factory):
    """A 1344 px synthetic scan at 0.25 um/px (40x)."""
    rgb = render_case(plan_cases(1, seed=1)[0], size=(1344, 1344), mpp=0.25)
    return write_pyramidal_tiff(tmp_path_factory.mktemp("s") / "s.svs", rgb, mpp=0.25, objective_power=40)


@pytest.fixture(scope="module")
def qformer():
    torch.manual_seed(0)
    return QFormer.from_text_model(num_hidden_layers=1, vision_width=16, num_query_tokens=4)


def test_bundle_tiling_is_saved_and_used_by_extract(tmp_path, slide_025, qformer):
    model, tok = qformer
    tiling = {"mpp": 0.5, "patch_size": 112, "overlap": 16, "min_tissue": 0.2}
    path = save_bundle(tmp_path / "b", model, tok, ENC, tiling=tiling)
    config = read_bundle_config(path)
    assert config["tiling"] == tiling and config["encoder"]["tiling"] == tiling
    pa = PathAlign.load(path)
    f = pa.extract(slide_025)
    assert f.target_mpp == 0.5 and f.patch_size == 112 and f.patch_size_level0 == 224  # 112 px at 0.5 on 0.25
    steps = np.diff(np.unique(f.coords[:, 0]))
    assert steps.min() == 192  # (112 - 16) px at 0.5 um/px = 192 level-0 px: neighbours overlap
    # A bundle without a recorded tiling keeps the old behaviour (224 px at 1.0 um/px).
    old = json.loads((path / "bundle.json").read_text())
    del old["tiling"], old["encoder"]["tiling"]
    (path / "bundle.json").write_text(json.dumps(old))
    assert bundle_tiling(old) == DEFAULT_TILING
    assert PathAlign.load(path).extract(slide_025).target_mpp == 1.0
    # The slide's um/px can be set from outside (a lab admin's value): then the file's is not read.
    g = pa.extract(slide_025, mpp=0.5)
    assert g.slide_mpp == 0.5 and g.patch_size_level0 == 112


def test_features_key_changes_with_weights_and_tiling(tmp_path, qformer):
    from safetensors.torch import save_file

    from inference.encoders import ensure_torchvision_importable

    assert ensure_torchvision_importable()
    import timm

    model, tok = qformer
    d = tmp_path / "enc"
    d.mkdir()
    kwargs = {"img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2}
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs)
    save_file(net.state_dict(), str(d / "model.safetensors"))
    spec = {"kind": "timm", "model_name": "vit_tiny_patch16_224", "path": str(d), "model_kwargs": kwargs,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    config = read_bundle_config(save_bundle(tmp_path / "b", model, tok, spec))
    key = features_key(config)
    assert features_key(config) == key and features_key(config, max_patches=100) != key
    assert features_key(config | {"tiling": {"mpp": 0.5}}) != key
    save_file({k: v * 0 + 1 for k, v in net.state_dict().items()}, str(d / "model.safetensors"))
    assert features_key(config) != key  # same path, same spec, other bytes: other features


def test_72_dpi_tiff_is_resolution_unknown_not_a_patch_storm(tmp_path):
    """A small generic tiled TIFF whose resolution tags hold TIFF writers' 72-dpi default (352.8 um/px)."""
    rgb = render_case(plan_cases(1, seed=2)[0], size=(512, 512), mpp=0.5)
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    s = open_slide(path)
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(352.78, abs=0.01)
    with pytest.raises(MissingMPPError, match="implausible resolution"):
        slide_mpp(s)
    with pytest.raises(MissingMPPError):
        patch_grid(s)
    enc = build_encoder(ENC)
    with pytest.raises(MissingMPPError):
        extract_slide_features(path, enc)
    grid = patch_grid(s, mpp=0.5, min_tissue=0.1)  # once someone says what it is: a normal grid
    assert grid.slide_mpp == 0.5 and len(grid) <= 4


def test_process_readers_give_the_thread_readers_features(slide_025):
    enc = build_encoder(ENC)
    a = extract_slide_features(slide_025, enc, patch_size=64, target_mpp=0.5, max_patches=24, batch_size=8,
                               workers=2)
    b = extract_slide_features(slide_025, enc, patch_size=64, target_mpp=0.5, max_patches=24, batch_size=8,
                               workers=2, readers="processes")
    assert len(a) == len(b) == 24 and torch.equal(a.features, b.features)
    assert np.array_equal(a.coords, b.coords) and b.read_seconds > 0


def test_auto_readers_are_processes_on_cuda_and_threads_on_the_cpu(slide_025):
    """The GPU path decodes patches in worker processes by default (no GIL between reading and the encoder);
    on the CPU, where the encoder is the whole cost, threads (no spawn start-up). 'auto' is the web app's
    default (PATHALIGN_PATCH_READERS, tests/test_models_tiling.py)."""
    from inference.features import resolve_readers

    assert resolve_readers("auto", torch.device("cuda")) == "processes"
    assert resolve_readers("auto", torch.device("cpu")) == "threads"
    assert resolve_readers("threads", torch.device("cuda")) == "threads"  # an explicit choice stays
    with pytest.raises(ValueError, match="'threads', 'processes' or 'auto'"):
        resolve_readers("fibres", torch.device("cpu"))
    enc = build_encoder(ENC)
    a = extract_slide_features(slide_025, enc, patch_size=64, target_mpp=0.5, max_patches=8, batch_size=8,
                               workers=2, readers="auto")
    b = extract_slide_features(slide_025, enc, patch_size=64, target_mpp=0.5, max_patches=8, batch_size=8,
                               workers=2, readers="threads")
    assert torch.equal(a.features, b.features)


def _in_a_daemonic_process(queue, slide):
    from inference.features import resolve_readers

    enc = build_encoder(ENC)
    feats = extract_slide_features(slide, enc, patch_size=64, target_mpp=0.5, max_patches=8, batch_size=8,
                                   workers=2, readers="processes")
    queue.put((resolve_readers("auto", "cuda"), resolve_readers("processes", "cpu"), len(feats)))


def test_a_daemonic_process_reads_with_threads(slide_025):
    """Celery's prefork pool runs tasks in daemonic processes, which may not start children: asking for
    reader processes there (or 'auto' on CUDA) reads with threads instead of failing the analysis job."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_a_daemonic_process, args=(queue, str(slide_025)), daemon=True)
    child.start()
    try:
        assert queue.get(timeout=120) == ("threads", "threads", 8)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
