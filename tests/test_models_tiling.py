"""The web app's analysis job uses the bundle's tiling and the slide's real resolution; a feature set made
with other weights is never reused; a slide whose file says 72 dpi is "resolution unknown" (the slide page
says so, a lab admin sets it, analysis waits and then runs a normal grid, no patch storm)."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from inference.features import read_meta
from inference.synthetic.wsi import write_pyramidal_tiff
from tests import test_analysis_support as support
from tests.conftest import start_worker, stop_worker, tissue_like, wait_for
from tests.model_fixtures import build_tiny_bundle
from webapp.analysis import pipeline, runtime
from webapp.analysis.models import SlideEmbedding
from webapp.jobs.models import Job, JobState

TILING_05 = {"mpp": 0.5, "patch_size": 64, "overlap": 0, "min_tissue": 0.4}


def _noop(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="session")
def slide_025(slide_dir):
    """768 x 768 px at 0.25 um/px (40x)."""
    return write_pyramidal_tiff(slide_dir / "s025.svs", tissue_like(768, 768, seed=4), mpp=0.25, objective_power=40)


@pytest.fixture(scope="session")
def bundle_05(tmp_path_factory):
    return build_tiny_bundle(tmp_path_factory.mktemp("b05") / "bundle", name="tiny-05", tiling=TILING_05)


@pytest.mark.worker
def test_a_05_mpp_bundle_extracts_at_05_mpp_in_the_analysis_job(
    transactional_db, bundle_05, slide_025, case_factory, cast, settings, tmp_path
):
    settings.VAR_DIR = tmp_path / "var"
    runtime.forget_models()
    bundle = pipeline.register_bundle(bundle_05, activate=True)
    case = case_factory(assigned_to=cast.path1)
    worker = start_worker(name="tiling-05", extra_env={"PATHALIGN_VAR_DIR": str(tmp_path / "var"),
                                                      "PATHALIGN_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})
    try:
        slide = support.ingest(slide_025, case.parts.get())  # slide_stored queues its analysis on commit
        done = wait_for(lambda: Job.objects.filter(slide=slide, kind=pipeline.ANALYZE,
                                                   state__in=[JobState.SUCCEEDED, JobState.FAILED]).first(),
                        timeout=240, message="the analysis job")
    finally:
        stop_worker(worker)
        runtime.forget_models()
    assert done.state == JobState.SUCCEEDED, done.error
    meta = read_meta(runtime.features_path(slide, bundle))
    assert meta.target_mpp == 0.5 and meta.patch_size == 64 and meta.slide_mpp == 0.25
    assert meta.patch_size_level0 == 128  # 64 px at 0.5 um/px on a 0.25 um/px scan
    assert SlideEmbedding.objects.get(slide=slide, bundle=bundle).patch_size == 128


def _timm_bundle(root, name, fill=None):
    """A bundle over a tiny timm ViT whose weights live in `root`/enc/model.safetensors."""
    import torch
    from safetensors.torch import save_file

    from inference.encoders import ensure_torchvision_importable

    assert ensure_torchvision_importable()
    import timm

    enc = root / "enc"
    enc.mkdir(parents=True, exist_ok=True)
    kwargs = {"img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs)
    save_file(net.state_dict(), str(enc / "model.safetensors"))
    spec = {"kind": "timm", "model_name": "vit_tiny_patch16_224", "path": str(enc), "model_kwargs": kwargs,
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 32, "dim": 16}
    return build_tiny_bundle(root / name, name=name, encoder=spec, tiling={"mpp": 1.0, "patch_size": 64}), enc


def test_a_cached_feature_set_from_other_weights_is_not_reused(db, slide_025, case_factory, settings, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    settings.VAR_DIR = tmp_path / "var"
    runtime.forget_models()
    path_a, enc = _timm_bundle(tmp_path / "a", "timm-a")
    path_b, _ = _timm_bundle(tmp_path / "a", "timm-b")  # same encoder spec and weights path
    a = pipeline.register_bundle(path_a, activate=True)
    b = pipeline.register_bundle(path_b)
    slide = support.ingest(slide_025, case_factory().parts.get())
    first = runtime.slide_features(slide, a)
    assert first.target_mpp == 1.0 and len(first) > 0
    assert runtime.slide_features(slide, b).path.stat().st_ino == first.path.stat().st_ino  # same key: shared
    # New weights at the same path (a fine-tuned checkpoint copied over the old one): nothing cached is reused.
    state = {k: v * 0.5 for k, v in load_file(str(enc / "model.safetensors")).items()}
    save_file(state, str(enc / "model.safetensors"))
    runtime.forget_models()
    again = runtime.slide_features(slide, a)
    assert read_meta(again.path).extra["features_key"] != read_meta(runtime.features_path(slide, b)).extra["features_key"]
    assert not torch.equal(again.features, first.features)
    runtime.features_path(slide, b).unlink()
    other = runtime.slide_features(slide, b)  # b now shares the new features, not the old ones
    assert torch.equal(other.features, again.features)
    runtime.forget_models()


def _tiff_72dpi(path):
    rgb = tissue_like(512, 512, seed=5)
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    return path


def test_72_dpi_tiff_is_resolution_unknown_until_a_lab_admin_sets_it(
    active_bundle, cast, case_factory, client_for, tmp_path
):
    case = case_factory(assigned_to=cast.path1)
    slide = support.ingest(_tiff_72dpi(tmp_path / "dpi72.tif"), case.parts.get())
    assert slide.mpp_x == pytest.approx(352.78, abs=0.01) and slide.resolution_unknown
    assert pipeline.queue_slide_analysis(slide) is None  # analysis waits
    with pytest.raises(pipeline.JobFailed, match="resolution is unknown"):
        pipeline.embed_slide(slide, active_bundle, _noop)
    page = client_for(cast.path1).get(f"/cases/{case.pk}/viewer/").content.decode()
    assert "Resolution unknown" in page and "352.8" in page and 'name="mpp"' not in page
    assert client_for(cast.path1).post(f"/slides/{slide.pk}/mpp/", {"mpp": "0.5"}).status_code == 403
    admin = client_for(cast.admin)
    assert 'name="mpp"' in admin.get(f"/cases/{case.pk}/viewer/").content.decode()
    assert admin.post(f"/slides/{slide.pk}/mpp/", {"mpp": "352"}).status_code == 400
    response = admin.post(f"/slides/{slide.pk}/mpp/", {"mpp": "0.5"})
    assert response.status_code == 302
    slide.refresh_from_db()
    assert slide.effective_mpp == 0.5 and slide.mpp_override_by == cast.admin
    assert Job.objects.filter(slide=slide, kind=pipeline.ANALYZE).count() == 1  # queued once it is known
    assert "Resolution unknown" not in admin.get(f"/cases/{case.pk}/viewer/").content.decode()
    row = pipeline.embed_slide(slide, active_bundle, _noop)  # a normal grid: a few patches, not 36,901
    assert 0 < row.n_patches <= 4 and row.seconds < 30


def test_a_tiff_without_resolution_tags_is_resolution_unknown(active_bundle, cast, case_factory, client_for,
                                                              tmp_path):
    """No resolution in the file at all (not even the 72-dpi default): unknown too, and analysis waits."""
    path = tmp_path / "no-resolution.tif"
    tifffile.imwrite(path, tissue_like(512, 512, seed=6), tile=(256, 256), photometric="rgb", resolution=None,
                     resolutionunit="NONE")
    case = case_factory(assigned_to=cast.path1)
    slide = support.ingest(path, case.parts.get())
    assert slide.resolution_unknown and slide.effective_mpp is None
    assert pipeline.queue_slide_analysis(slide) is None
    with pytest.raises(pipeline.JobFailed, match="resolution is unknown"):
        pipeline.embed_slide(slide, active_bundle, _noop)
    assert "Resolution unknown" in client_for(cast.path1).get(f"/cases/{case.pk}/viewer/").content.decode()


def test_patch_cap_setting_caps_the_grid(active_bundle, case_factory, settings, small_slides):
    settings.MAX_PATCHES_PER_SLIDE = 2
    slide = support.ingest(small_slides[0], case_factory().parts.get())
    features = runtime.slide_features(slide, active_bundle)
    assert len(features) == 2 and features.n_candidates > 2


def test_the_analysis_job_reads_patches_in_processes_on_a_gpu_by_default(settings):
    from inference.features import resolve_readers

    assert settings.PATCH_READERS == "auto"  # the default: processes on CUDA, threads on the CPU
    assert resolve_readers(settings.PATCH_READERS, "cuda") == "processes"


def test_web_and_library_agree_on_plausible_mpp():
    from inference.slides import PLAUSIBLE_MPP
    from webapp.slides import resolution

    assert resolution.PLAUSIBLE_MPP == PLAUSIBLE_MPP
    assert not resolution.plausible(352.78) and resolution.plausible(0.25) and np.isclose(25400 / 72, 352.78, atol=0.01)


active_bundle, small_slides = support.active_bundle, support.small_slides
tiny_bundle_dir = support.tiny_bundle_dir
