"""Real worker processes: upload -> embedding in pgvector -> search and heatmap; a worker killed mid-job; a
broker that is down when the slide arrives."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests import test_analysis_support as support
from tests.conftest import start_worker, stop_worker, wait_for
from webapp.analysis import pipeline, search
from webapp.analysis.models import QueryEmbedding, SlideEmbedding
from webapp.jobs import runner as jobs
from webapp.jobs.models import Job, JobState

small_slides, tiny_bundle_dir, live_bundle = support.small_slides, support.tiny_bundle_dir, support.live_bundle

# Short fault-handling clocks for the tests: beats every second, stale after 4 s, sweep every 2 s.
FAST_CLOCKS = {"PATHALIGN_JOB_PULSE_SECONDS": "1", "PATHALIGN_STALE_JOB_SECONDS": "4",
               "PATHALIGN_SWEEP_SECONDS": "2", "PATHALIGN_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}


def _env(tmp_path, **extra) -> dict:
    return {**FAST_CLOCKS, "PATHALIGN_VAR_DIR": str(tmp_path / "var"), **extra}


def _upload(client, case, path) -> str:
    part = case.parts.get()
    with open(path, "rb") as handle:
        response = client.post(f"/cases/{case.pk}/parts/{part.pk}/slides/upload/", {"file": handle, "stain": "H&E"})
    assert response.status_code == 201, response.content
    return response.json()["slide"]


def _job_of(slide_id) -> Job:
    return Job.objects.get(slide_id=slide_id, kind=pipeline.ANALYZE)


def _finished(slide_id):
    job = _job_of(slide_id)
    return job if job.state in (JobState.SUCCEEDED, JobState.FAILED) else None


@pytest.mark.worker
def test_upload_is_embedded_by_a_worker_then_searchable_with_a_heatmap(
    live_bundle, cast, case_factory, client_for, small_slides, tmp_path
):
    worker = start_worker(name="analysis-e2e", extra_env=_env(tmp_path))
    try:
        case = case_factory(assigned_to=cast.path1)
        slide_id = _upload(client_for(cast.admin), case, small_slides[0])
        assert _job_of(slide_id).queue == "gpu"
        job = wait_for(lambda: _finished(slide_id), timeout=240, message="the slide's analysis job")
    finally:
        stop_worker(worker)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 1 and job.duration.total_seconds() > 0
    row = SlideEmbedding.objects.get(slide_id=slide_id, bundle=live_bundle)
    assert len(row.embedding) == 256 and QueryEmbedding.objects.filter(slide_id=slide_id).count() == 32
    assert (tmp_path / "var" / "features" / live_bundle.cache_key / f"{slide_id}.safetensors").exists()
    hits = search.text_search(cast.path1, "tubular adenoma with low grade dysplasia", k=5).hits
    assert [str(hit.slide.pk) for hit in hits] == [slide_id]
    overlay = client_for(cast.path1).get(f"/slides/{slide_id}/overlays/attention.json")
    assert overlay.status_code == 200 and len(overlay.json()["values"]) == row.n_patches
    page = client_for(cast.path1).get(f"/cases/{case.pk}/").content.decode()
    assert "Analysed" in page and "every 2s" not in page


@pytest.mark.worker
def test_worker_killed_mid_job_then_a_new_worker_completes_it_once(
    live_bundle, cast, case_factory, client_for, small_slides, tmp_path
):
    slow = start_worker(name="analysis-slow", extra_env=_env(tmp_path), include="tests.worker_hooks.slow_steps")
    try:
        slide_id = _upload(client_for(cast.admin), case_factory(), small_slides[1])
        wait_for(lambda: _job_of(slide_id).state == JobState.RUNNING and _job_of(slide_id).progress >= 0.02,
                 timeout=240, message="the job to start")
    finally:
        slow.kill()  # SIGKILL: no shutdown handlers, no ack, no cleanup
        slow.wait(timeout=30)
    killed = _job_of(slide_id)
    assert killed.state == JobState.RUNNING and killed.attempts == 1
    assert not SlideEmbedding.objects.filter(slide_id=slide_id).exists()  # nothing half-written
    fresh = start_worker(name="analysis-fresh", extra_env=_env(tmp_path))
    try:
        job = wait_for(lambda: _finished(slide_id), timeout=240, message="the requeued job")
    finally:
        stop_worker(fresh)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 2  # the first, killed attempt is counted
    assert SlideEmbedding.objects.filter(slide_id=slide_id).count() == 1
    assert QueryEmbedding.objects.filter(slide_id=slide_id).count() == 32


@pytest.mark.worker
def test_broker_down_at_upload_the_job_waits_and_runs_when_it_is_back(
    live_bundle, cast, case_factory, client_for, small_slides, tmp_path
):
    from webapp.celery import app

    original = app.conf.broker_url

    def use_broker(url):
        app.conf.broker_url = app.conf.broker_write_url = url
        app._pool = None
        app.amqp._producer_pool = None

    use_broker("redis://127.0.0.1:9/0")  # nothing listens on the discard port
    try:
        slide_id = _upload(client_for(cast.admin), case_factory(), small_slides[2])  # the upload still works
    finally:
        use_broker(original)
    waiting = _job_of(slide_id)
    assert waiting.state == JobState.QUEUED and waiting.dispatched_at is None and "Waiting" in waiting.message
    page = client_for(cast.admin).get(f"/cases/{waiting.case_id}/").content.decode()
    assert "Analysis queued" in page  # no worker, no broker: the app still shows the job as queued
    # The sweeper resends it to the broker, with the other job the upload queued (the viewer levels').
    assert jobs.requeue_stale(queued_after=timedelta(0)) == 2
    assert Job.objects.get(pk=waiting.pk).dispatched_at is not None
    worker = start_worker(name="analysis-broker", extra_env=_env(tmp_path))
    try:
        job = wait_for(lambda: _finished(slide_id), timeout=240, message="the job after the broker came back")
    finally:
        stop_worker(worker)
    assert job.state == JobState.SUCCEEDED and job.attempts == 1
