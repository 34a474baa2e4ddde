"""The analysis pipeline without a worker: bundles, embedding a slide, caches, queueing, the sweeper."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from tests import test_analysis_support as support
from webapp.analysis import pipeline, runtime
from webapp.analysis.models import ModelBundle, QueryEmbedding, SlideEmbedding
from webapp.jobs import runner as jobs
from webapp.jobs.models import Job, JobState

# Fixtures shared by the analysis tests (pytest finds them as module attributes).
active_bundle, second_bundle_dir = support.active_bundle, support.second_bundle_dir
small_slides, tiny_bundle_dir, ingest = support.small_slides, support.tiny_bundle_dir, support.ingest


def _progress_log():
    seen = []
    return seen, lambda fraction, message="": seen.append((fraction, message))


# --- bundles -----------------------------------------------------------------------------------------
def test_register_refuses_what_is_not_a_usable_bundle(db, tmp_path, tiny_bundle_dir):
    with pytest.raises(pipeline.BundleInvalid, match="not a directory"):
        pipeline.register_bundle(tmp_path / "nowhere")
    with pytest.raises(pipeline.BundleInvalid, match="absolute"):
        pipeline.register_bundle("relative/dir")
    with pytest.raises(pipeline.BundleInvalid, match="not a PathAlign bundle"):
        pipeline.register_bundle(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text((tiny_bundle_dir / "bundle.json").read_text())
    with pytest.raises(pipeline.BundleInvalid, match="does not load"):
        pipeline.register_bundle(broken)
    bundle = pipeline.register_bundle(tiny_bundle_dir)
    assert bundle.name == "tiny" and bundle.encoder["kind"] == "random" and not bundle.is_active
    assert bundle.eval_figures["zero_shot_accuracy"] == 0.5 and bundle.dims["queries"] == 32
    with pytest.raises(pipeline.BundleInvalid, match="already registered"):
        pipeline.register_bundle(tiny_bundle_dir)


def test_exactly_one_active_bundle(db, tiny_bundle_dir, second_bundle_dir):
    first = pipeline.register_bundle(tiny_bundle_dir, activate=True)
    second = pipeline.register_bundle(second_bundle_dir)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelBundle.objects.filter(pk=second.pk).update(is_active=True)  # the partial unique index refuses
    pipeline.activate_bundle(second)
    assert list(ModelBundle.objects.filter(is_active=True)) == [second]
    first.refresh_from_db()
    assert not first.is_active


# --- embedding a slide -------------------------------------------------------------------------------
def test_embed_slide_is_idempotent_and_caches_features(active_bundle, case_factory, small_slides, settings):
    case = case_factory()
    slide = ingest(small_slides[0], case.parts.get())
    seen, progress = _progress_log()
    row = pipeline.embed_slide(slide, active_bundle, progress)
    assert row.n_patches > 0 and row.patch_size > 0 and len(row.embedding) == 256
    coords, attention = row.heatmap_arrays()
    assert coords.shape == (row.n_patches, 2) and attention.shape == (row.n_patches,)
    assert abs(float(attention.sum()) - 1) < 1e-3
    assert QueryEmbedding.objects.filter(slide=slide, bundle=active_bundle).count() == 32
    cached = runtime.features_path(slide, active_bundle)
    assert cached.exists() and str(settings.VAR_DIR) in str(cached)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)  # progress only goes forward
    mtime = cached.stat().st_mtime_ns
    again = pipeline.embed_slide(slide, active_bundle, lambda *a: None)  # a second run: same single set
    assert SlideEmbedding.objects.filter(slide=slide).count() == 1
    assert QueryEmbedding.objects.filter(slide=slide).count() == 32
    assert cached.stat().st_mtime_ns == mtime  # features came from the cache, not re-tiled
    assert list(again.embedding) == pytest.approx(list(row.embedding), abs=1e-6)
    active_bundle.refresh_from_db()
    assert active_bundle.archive_complete_at is not None  # the only slide is embedded


def test_features_are_shared_by_bundles_with_the_same_encoder(
    active_bundle, second_bundle_dir, case_factory, small_slides
):
    slide = ingest(small_slides[1], case_factory().parts.get())
    first = runtime.slide_features(slide, active_bundle)
    other = pipeline.register_bundle(second_bundle_dir)
    shared = runtime.slide_features(slide, other)
    assert shared.path != first.path and shared.path.stat().st_ino == first.path.stat().st_ino
    assert shared.features.shape == first.features.shape


def test_model_is_loaded_once_per_process(active_bundle):
    assert runtime.get_model() is runtime.get_model(active_bundle)
    assert runtime.get_model().spec["name"] == "tiny"


def test_no_active_bundle_means_a_clear_failure(db):
    with pytest.raises(runtime.NoModel):
        runtime.get_model()


# --- queueing ----------------------------------------------------------------------------------------
def test_uploaded_slide_is_queued_on_the_gpu_queue(
    active_bundle, cast, case_factory, client_for, small_slides, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: sent.append(job_id))
    case = case_factory()
    part = case.parts.get()
    with django_capture_on_commit_callbacks(execute=True), open(small_slides[2], "rb") as handle:
        response = client_for(cast.admin).post(
            f"/cases/{case.pk}/parts/{part.pk}/slides/upload/", {"file": handle, "stain": "H&E"}
        )
    assert response.status_code == 201, response.content
    job = Job.objects.get(kind=pipeline.ANALYZE)
    assert job.queue == "gpu" and job.state == JobState.QUEUED and str(job.slide_id) == response.json()["slide"]
    assert job.params["bundle"] == active_bundle.pk and job.case_id == case.pk
    assert sent.count(job.pk) == 1  # sent to the broker once, only after the commit
    # The other job sent is the viewer's in-between zoom levels (webapp/slides/prerender.py), on "default".
    assert Job.objects.exclude(pk=job.pk).get().queue == "default" and len(sent) == 2


def test_without_an_active_bundle_slides_are_stored_but_not_queued(db, case_factory, small_slides):
    slide = ingest(small_slides[0], case_factory().parts.get())
    assert pipeline.queue_slide_analysis(slide) is None and not Job.objects.exists()


def test_job_handler_runs_in_process_and_records_duration(active_bundle, case_factory, small_slides):
    slide = ingest(small_slides[0], case_factory().parts.get())
    job = Job.objects.create(kind=pipeline.ANALYZE, queue="gpu", slide=slide, params={"bundle": active_bundle.pk})
    done = jobs.execute(job.pk)
    assert done.state == JobState.SUCCEEDED and done.result["patches"] > 0 and done.duration is not None
    jobs.execute(job.pk)  # a redelivered message: nothing happens twice
    assert Job.objects.get(pk=job.pk).attempts == 1 and SlideEmbedding.objects.count() == 1


def test_missing_slide_file_fails_with_a_clear_message(active_bundle, case_factory, small_slides):
    slide = ingest(small_slides[0], case_factory().parts.get())
    slide.path.unlink()
    job = Job.objects.create(kind=pipeline.ANALYZE, queue="gpu", slide=slide, params={"bundle": active_bundle.pk})
    with pytest.raises(jobs.JobFailed):
        jobs.execute(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "missing" in job.error and "Traceback" not in job.error
    assert not SlideEmbedding.objects.exists()


# --- the sweeper -------------------------------------------------------------------------------------
def test_sweeper_requeues_a_job_whose_worker_died_then_gives_up(db, monkeypatch):
    sent = []
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: sent.append(job_id) or True)
    old = timezone.now() - timedelta(hours=1)
    job = Job.objects.create(kind="selftest", state=JobState.RUNNING, attempts=1, heartbeat_at=old)
    assert jobs.requeue_stale(running_after=timedelta(minutes=5)) == 1
    job.refresh_from_db()
    assert job.state == JobState.QUEUED and sent == [job.pk]
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING, attempts=3, heartbeat_at=old)
    assert jobs.requeue_stale(running_after=timedelta(minutes=5)) == 1
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "stopped responding" in job.error and sent == [job.pk]


def test_sweeper_resends_only_jobs_the_broker_never_took(db, monkeypatch):
    sent = []
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: sent.append(job_id) or True)
    Job.objects.create(kind="selftest", dispatched_at=timezone.now())  # in the broker: leave it
    unsent = Job.objects.create(kind="selftest")
    Job.objects.filter(pk=unsent.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    assert jobs.requeue_stale(queued_after=timedelta(seconds=30)) == 1 and sent == [unsent.pk]
    assert jobs.requeue_stale(queued_after=timedelta(seconds=30)) == 0  # claimed: not resent every sweep


def test_a_job_running_elsewhere_is_not_started_twice(db):
    job = Job.objects.create(kind="selftest", state=JobState.RUNNING, attempts=1, heartbeat_at=timezone.now())
    assert jobs.execute(job.pk).attempts == 1
    assert Job.objects.get(pk=job.pk).state == JobState.RUNNING
