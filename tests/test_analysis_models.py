"""Model management (lab admins only), re-embedding the archive, training from signed-out cases, and the
slide's analysis state on the case page (htmx polling, retry)."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

from tests import test_analysis_support as support
from webapp.analysis import pipeline, training
from webapp.analysis.models import ModelBundle, SlideEmbedding
from webapp.jobs import runner as jobs
from webapp.jobs.models import Job, JobState

active_bundle, second_bundle_dir = support.active_bundle, support.second_bundle_dir
small_slides, tiny_bundle_dir = support.small_slides, support.tiny_bundle_dir


@pytest.fixture
def no_broker(monkeypatch):
    sent = []
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: sent.append(job_id) or True)
    return sent


# --- access ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["path1", "evaluator", "outsider"])
def test_model_management_is_for_lab_admins_only(active_bundle, cast, client_for, who, no_broker):
    client = client_for(getattr(cast, who))
    assert client.get("/models/").status_code == 403
    assert client.get(f"/models/{active_bundle.pk}/").status_code == 403
    assert client.post("/models/", {"path": str(tiny_bundle_dir)}).status_code == 403
    assert client.post(f"/models/{active_bundle.pk}/reembed/").status_code == 403
    assert client.post("/models/train/", {"name": "x", "version": "1", "epochs": 1}).status_code == 403
    assert not Job.objects.exists()
    assert client_for(None).get("/models/").status_code == 302


def test_admin_registers_sees_figures_activates_and_reembeds(
    active_bundle, cast, client_for, second_bundle_dir, case_factory, small_slides, no_broker
):
    slide = support.ingest(small_slides[0], case_factory().parts.get())
    pipeline.embed_slide(slide, active_bundle, lambda *a: None)
    client = client_for(cast.admin)
    refused = client.post("/models/", {"path": "/no/such/dir"})
    assert refused.status_code == 200 and "is not a directory" in refused.content.decode()
    response = client.post("/models/", {"path": str(second_bundle_dir)})
    bundle = ModelBundle.objects.get(name="tiny-b")
    assert response.status_code == 302 and not bundle.is_active
    page = client.get(f"/models/{bundle.pk}/").content.decode()
    assert "Zero shot accuracy" in page and "0.500" in page and "zero_shot_accuracy" not in page  # in words
    assert client.post(f"/models/{bundle.pk}/activate/").status_code == 409  # no held-out comparison: the gate
    assert client.post(f"/models/{bundle.pk}/activate/",
                       {"override_reason": "Registered from disk for this test."}).status_code == 302
    bundle.refresh_from_db()
    assert bundle.is_active
    assert client.post(f"/models/{bundle.pk}/reembed/").status_code == 302
    fan_out = Job.objects.get(kind=pipeline.REEMBED)
    assert jobs.execute(fan_out.pk).result["queued"] == 1  # one job per slide lacking this bundle's rows
    per_slide = Job.objects.get(kind=pipeline.ANALYZE, params__bundle=bundle.pk)
    assert per_slide.queue == "gpu" and per_slide.slide_id == slide.pk
    jobs.execute(per_slide.pk)
    assert SlideEmbedding.objects.filter(slide=slide).count() == 2  # old rows kept, new ones added
    bundle.refresh_from_db()
    assert bundle.archive_complete_at is not None
    listing = client.get("/models/").content.decode()
    assert "tiny-b" in listing and "1 / 1" in listing


# --- the case page -----------------------------------------------------------------------------------
def test_case_page_shows_state_polls_while_active_and_offers_retry_to_admins(
    active_bundle, cast, case_factory, client_for, small_slides, no_broker
):
    case = case_factory(assigned_to=cast.path1)
    slide = support.ingest(small_slides[0], case.parts.get())
    job = pipeline.queue_slide_analysis(slide)
    page = client_for(cast.path1).get(f"/cases/{case.pk}/").content.decode()
    assert "Analysis queued" in page and f'hx-get="/analysis/slides/{slide.pk}/status/"' in page
    assert 'hx-trigger="every 2s"' in page
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING, progress=0.42, message="Tiling")
    partial = client_for(cast.path1).get(f"/analysis/slides/{slide.pk}/status/").content.decode()
    assert "42%" in partial and "every 2s" in partial
    Job.objects.filter(pk=job.pk).update(state=JobState.FAILED, error="Could not extract patch features: boom\nTrace")
    partial = client_for(cast.path1).get(f"/analysis/slides/{slide.pk}/status/").content.decode()
    assert "Could not extract patch features: boom" in partial and "every 2s" not in partial
    assert "Retry" not in partial  # pathologists see the error, lab admins fix it
    assert client_for(cast.path1).post(f"/analysis/jobs/{job.pk}/retry/").status_code == 403
    assert client_for(cast.outsider).get(f"/analysis/slides/{slide.pk}/status/").status_code == 404
    admin_partial = client_for(cast.admin).get(f"/analysis/slides/{slide.pk}/status/").content.decode()
    assert f'hx-post="/analysis/jobs/{job.pk}/retry/"' in admin_partial
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(cast.admin)
    assert csrf_client.post(f"/analysis/jobs/{job.pk}/retry/").status_code == 403  # no CSRF token
    retried = client_for(cast.admin).post(f"/analysis/jobs/{job.pk}/retry/", HTTP_HX_REQUEST="true")
    assert retried.status_code == 200 and "Analysis queued" in retried.content.decode()
    assert Job.objects.get(pk=job.pk).state == JobState.QUEUED
    jobs.execute(job.pk)
    done = client_for(cast.path1).get(f"/analysis/slides/{slide.pk}/status/").content.decode()
    assert "Analysed" in done and "every 2s" not in done and "Similar slides" in done


def test_attention_overlay_json_for_visible_slides(active_bundle, cast, case_factory, client_for, small_slides):
    case = case_factory(assigned_to=cast.path1)
    slide = support.ingest(small_slides[0], case.parts.get())
    assert client_for(cast.path1).get(f"/analysis/slides/{slide.pk}/attention.json").status_code == 404
    row = pipeline.embed_slide(slide, active_bundle, lambda *a: None)
    data = client_for(cast.path1).get(f"/analysis/slides/{slide.pk}/attention.json").json()
    assert data["patch_size"] == row.patch_size and len(data["coords"]) == len(data["values"]) == row.n_patches
    assert sum(data["values"]) == pytest.approx(row.n_patches, rel=1e-3)  # 1.0 = average attention
    assert client_for(cast.outsider).get(f"/analysis/slides/{slide.pk}/attention.json").status_code == 404
    from webapp.slides import overlays

    assert "attention" in overlays.registered_names()
    viewer = client_for(cast.path1).get(f"/slides/{slide.pk}/overlays/attention.json")
    assert viewer.status_code == 200 and len(viewer.json()["values"]) == row.n_patches


# --- training ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_from_signed_out_pairs_registers_an_inactive_bundle_with_a_comparison(
    active_bundle, cast, case_factory, tmp_path, monkeypatch, settings, client_for
):
    client_for_admin = client_for(cast.admin)
    """The synthetic corpus stands in for signed-out reports: pairs come through the same interface."""
    from inference.synthetic.corpus import generate_corpus, load_manifest

    settings.MODEL_BUNDLE_DIR = tmp_path / "models"
    generate_corpus(tmp_path / "corpus", 10, seed=3, size=(1536, 1152))
    pairs = []
    for record in load_manifest(tmp_path / "corpus"):
        case = case_factory()
        slide = support.ingest(Path(record["slide_path"]), case.parts.get())
        pairs.append(training.TrainingPair(str(slide.pk), record["report"], case.pk, case.parts.get().pk))
    monkeypatch.setattr(training, "pair_source", lambda: pairs)
    job = training.queue_training(cast.admin, "local", "2026.1", {
        "epochs": 2, "num_hidden_layers": 1, "batch_size": 4, "max_text_len": 32, "max_patches": 16,
        "warmup_steps": 1, "threads": 2,
    })
    done = jobs.execute(job.pk)
    assert done.state == JobState.SUCCEEDED, done.error
    bundle = ModelBundle.objects.get(name="local", version="2026.1")
    assert not bundle.is_active and bundle.encoder == active_bundle.encoder
    comparison = bundle.eval_figures["heldout_comparison"]
    assert comparison["new"]["n"] == comparison["active"]["n"] >= 2 and comparison["heldout_cases"] >= 2
    assert 0 <= comparison["new"]["i2t_r1"] <= 1 and 0 <= comparison["active"]["t2i_r5"] <= 1
    page = client_for_admin.get(f"/models/{bundle.pk}/").content.decode()
    assert "Held-out comparison" in page
    assert done.result["examples"] == 10 and done.progress == 1.0


# --- demo seeding ------------------------------------------------------------------------------------
def test_demo_seed_registers_activates_and_queues(db, cast, case_factory, small_slides, tiny_bundle_dir,
                                                  settings, no_broker):
    from webapp.analysis import demo
    from webapp.demo import DemoContext

    settings.DEMO_BUNDLE_DIR = str(tiny_bundle_dir)
    slide = support.ingest(small_slides[0], case_factory().parts.get())
    context = DemoContext(users={"labadmin": cast.admin}, log=lambda message: None)
    demo.seed(context)
    bundle = ModelBundle.objects.get(is_active=True)
    assert bundle.path == str(tiny_bundle_dir.resolve())
    assert Job.objects.get(kind=pipeline.ANALYZE).slide_id == slide.pk
    demo.seed(context)  # idempotent
    assert ModelBundle.objects.count() == 1 and Job.objects.count() == 1


@pytest.mark.parametrize("older", ["v1", "earlier v2"])
def test_demo_seed_upgrades_an_older_demo_bundle_but_not_an_admins_choice(
        older, db, cast, case_factory, small_slides, tiny_bundle_dir, second_bundle_dir, settings, tmp_path,
        no_broker):
    """The default demo bundle is the one shipped in inference/demo_bundle_v2 (name and version from its
    bundle.json): it takes over from the v1 demo bundle, or from an earlier v2 one, left active by an
    earlier `make run`; a bundle a lab admin chose stays active."""
    import json

    from inference.demo import DEMO_NAME, DEMO_VERSION, SHIPPED, V1_NAME, V1_VERSION
    from webapp.analysis import demo
    from webapp.demo import DemoContext

    assert (DEMO_NAME, DEMO_VERSION) == tuple(json.loads((SHIPPED / "bundle.json").read_text())[k]
                                              for k in ("name", "version"))
    settings.DEMO_BUNDLE_DIR = ""
    settings.MODEL_BUNDLE_DIR = tmp_path / "models"
    name, version = (V1_NAME, V1_VERSION) if older == "v1" else (DEMO_NAME, "0.9")
    old = ModelBundle.objects.create(name=name, version=version, path=str(tiny_bundle_dir), variant="G",
                                     encoder={"kind": "random"}, dims={}, is_active=True)
    support.ingest(small_slides[0], case_factory().parts.get())
    said = []
    context = DemoContext(users={"labadmin": cast.admin}, log=said.append)
    demo.seed(context)  # copies the shipped bundle into MODEL_BUNDLE_DIR/demo-<version>
    new = ModelBundle.objects.get(is_active=True)
    assert (new.name, new.version) == (DEMO_NAME, DEMO_VERSION) and new.pk != old.pk, said
    assert new.path == str((tmp_path / "models" / f"demo-{DEMO_VERSION}").resolve())
    assert new.registered_by == cast.admin and "benchmark_v2" in new.eval_figures
    assert Job.objects.filter(kind=pipeline.ANALYZE, params__bundle=new.pk).count() == 1  # re-embedded
    # A lab admin's own choice is left alone on the next start.
    chosen = pipeline.register_bundle(second_bundle_dir, activate=True)
    demo.seed(context)
    assert ModelBundle.objects.get(is_active=True).pk == chosen.pk


def test_demo_seed_with_a_stale_shipped_bundle_says_how_to_rebuild_and_starts_without_it(
        db, cast, settings, tmp_path, monkeypatch, no_broker):
    """The built-in encoder changed since the shipped bundle was trained (faked: a copy whose recorded
    fingerprint differs): `make run` builds nothing (hours), says what to run, and the app starts."""
    import json
    import shutil

    import inference.demo
    from webapp.analysis import demo
    from webapp.demo import DemoContext

    stale = tmp_path / "shipped"
    shutil.copytree(inference.demo.SHIPPED, stale)
    config = json.loads((stale / "bundle.json").read_text())
    config["encoder_fingerprint"] = [v + 0.5 for v in config["encoder_fingerprint"]]
    (stale / "bundle.json").write_text(json.dumps(config))
    monkeypatch.setattr(inference.demo, "SHIPPED", stale)
    settings.DEMO_BUNDLE_DIR = ""
    settings.MODEL_BUNDLE_DIR = tmp_path / "models"
    said = []
    demo.seed(DemoContext(users={"labadmin": cast.admin}, log=said.append))
    assert not ModelBundle.objects.exists() and not Job.objects.exists()
    assert not (tmp_path / "models" / f"demo-{inference.demo.DEMO_VERSION}").exists()
    assert any("inference.demo_v2 build" in line and "PATHALIGN_SKIP_DEMO_MODEL=1" in line for line in said), said
