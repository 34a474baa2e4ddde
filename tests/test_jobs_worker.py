"""A real Celery worker process picks jobs up: from the embedded (Postgres) broker and from Redis."""
import socket

import pytest
from django.db import transaction

from tests.conftest import start_worker, stop_worker, wait_for
from webapp.jobs import runner as jobs
from webapp.jobs.models import Job, JobState, WorkerHeartbeat


def _finished(job_id):
    job = Job.objects.get(pk=job_id)
    return job if job.state in (JobState.SUCCEEDED, JobState.FAILED) else None


@pytest.mark.worker
def test_worker_runs_job_from_embedded_broker(celery_worker_process, cast):
    with transaction.atomic():
        job = jobs.create_job("selftest", user=cast.admin, params={"echo": "hello"})
        assert Job.objects.get(pk=job.pk).dispatched_at is None  # not sent inside the transaction
    # Sent by the commit itself, not later by the stale-job sweeper (which resends unsent jobs after 30 s and
    # made this test pass with the on_commit(dispatch) line removed: issue 16).
    assert Job.objects.get(pk=job.pk).dispatched_at is not None
    done = wait_for(lambda: _finished(job.pk), timeout=25, message="the selftest job, well before any resend")
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.result["echo"] == "hello" and done.progress == 1.0 and done.attempts == 1
    assert done.started_at <= done.finished_at
    assert wait_for(lambda: WorkerHeartbeat.objects.exists(), timeout=30, message="a worker heartbeat")


def _redis_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.worker
@pytest.mark.skipif(not _redis_listening(), reason="no Redis on 127.0.0.1:6379 (.ci/run starts one)")
def test_worker_runs_job_from_redis(transactional_db, cast, settings):
    from webapp.celery import app

    redis_url = "redis://127.0.0.1:6379/15"
    original = app.conf.broker_url

    def use_broker(url):
        # Producers are pooled per app: point the app at the other broker and drop the old pools.
        app.conf.broker_url = app.conf.broker_write_url = url
        app._pool = None
        app.amqp._producer_pool = None

    use_broker(redis_url)
    worker = start_worker(name="redis", extra_env={"CELERY_BROKER_URL": redis_url})
    try:
        with transaction.atomic():
            job = jobs.create_job("selftest", params={"echo": "via redis"})
        done = wait_for(lambda: _finished(job.pk), timeout=90, message="the job over Redis")
        assert done.state == JobState.SUCCEEDED and done.result["echo"] == "via redis"
    finally:
        stop_worker(worker)
        use_broker(original)


def test_job_is_sent_only_after_commit(db, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: sent.append(job_id))
    # pytest-django wraps the test in a transaction: the capture runs the on-commit hooks as a commit would.
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            job = jobs.create_job("selftest")
            assert sent == []  # not yet: the worker could not see the row
        assert sent == []  # still inside the test's transaction
    assert sent == [job.pk]  # and sent once it commits
    assert job.state == JobState.QUEUED


def test_execute_is_idempotent(db):
    job = Job.objects.create(kind="selftest", params={"echo": 1})
    jobs.execute(job.pk)
    first = Job.objects.get(pk=job.pk)
    jobs.execute(job.pk)
    again = Job.objects.get(pk=job.pk)
    assert again.attempts == first.attempts == 1 and again.state == JobState.SUCCEEDED


def test_broker_down_keeps_job_queued(db, settings, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(jobs.run_job, "apply_async", unreachable)
    job = Job.objects.create(kind="selftest")
    assert jobs.dispatch(job.pk) is False
    job.refresh_from_db()
    assert job.state == JobState.QUEUED and "Waiting" in job.message


def test_healthz_reports_each_part(client, db):
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200
    assert body["checks"]["database"]["ok"] and body["checks"]["database"]["pgvector"]
    assert body["checks"]["broker"]["ok"]
    assert body["checks"]["worker"]["ok"] is False and body["status"] == "degraded"
    WorkerHeartbeat.objects.create(hostname="gpu-1", queues="gpu")
    assert client.get("/healthz").json()["status"] == "ok"


def test_lab_admin_lists_filters_and_cancels_jobs(cast, client_for):
    queued = Job.objects.create(kind="selftest", params={"echo": "a"})
    failed = Job.objects.create(kind="selftest", state=JobState.FAILED, error="boom: disk unreadable")
    client = client_for(cast.admin)
    page = client.get("/jobs/").content.decode()  # kinds are named in words, the number beside them
    assert "Worker self-test" in page and f">#{queued.pk}</span>" in page and "boom: disk unreadable" in page
    page = client.get("/jobs/", {"state": "failed"}).content.decode()
    assert f">#{failed.pk}</span>" in page and f">#{queued.pk}</span>" not in page
    assert client_for(cast.path1).get("/jobs/").status_code == 403
    assert client.post(f"/analysis/jobs/{queued.pk}/cancel/").status_code == 302
    queued.refresh_from_db()
    assert queued.state == JobState.CANCELLED
    # A cancelled job never runs, even if its message is still in the broker.
    assert jobs.execute(queued.pk).state == JobState.CANCELLED and queued.attempts == 0


def test_running_job_stops_at_its_next_progress_report(db, monkeypatch):
    job = Job.objects.create(kind="selftest", params={"echo": "x"})

    def cancel_then_report(job, progress):
        jobs.cancel_job(job)
        progress(0.5, "still going")
        raise AssertionError("the handler should have been stopped")

    monkeypatch.setitem(jobs.HANDLERS, "selftest", jobs.Handler(cancel_then_report, "default"))
    assert jobs.execute(job.pk).state == JobState.CANCELLED
