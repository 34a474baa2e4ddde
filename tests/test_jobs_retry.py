"""The one retry policy (`runner.retry_delay`): what execute does after an error, and what the sweeper
does after a lost worker, both decided by it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from webapp.jobs import runner
from webapp.jobs.models import Job, JobState

pytestmark = pytest.mark.django_db


def test_the_policy_retries_transient_errors_twice_and_never_a_final_one():
    transient = ConnectionError("database restarting")
    assert [runner.retry_delay(n, transient) for n in (1, 2, 3)] == [4.0, 8.0, None]
    assert [runner.retry_delay(n, None) for n in (1, 2, 3)] == [4.0, 8.0, None]  # a lost worker
    for final in (runner.JobFailed("no tissue"), ValueError("bad"), TypeError("bug"), SoftTimeLimitExceeded()):
        assert runner.retry_delay(1, final) is None


def _flaky(calls: list):
    def handler(job, progress):
        calls.append(job.attempts)
        raise ConnectionError("the database went away")

    return runner.Handler(handler, "default")


def test_execute_requeues_after_a_transient_error_then_fails_after_the_last_attempt(monkeypatch):
    calls, sent = [], []
    monkeypatch.setitem(runner.HANDLERS, "selftest", _flaky(calls))
    monkeypatch.setattr(runner, "dispatch", lambda job_id, countdown=None: sent.append((job_id, countdown)))
    job = Job.objects.create(kind="selftest")
    for attempt in (1, 2):
        retried = runner.execute(job.pk)
        assert retried.state == JobState.QUEUED and retried.attempts == attempt
        assert "Retrying after an error" in retried.message and "ConnectionError" in retried.error
    assert sent == [(job.pk, 4.0), (job.pk, 8.0)]
    with pytest.raises(ConnectionError):
        runner.execute(job.pk)
    failed = Job.objects.get(pk=job.pk)
    assert failed.state == JobState.FAILED and failed.attempts == 3 and calls == [1, 2, 3]
    assert len(sent) == 2  # given up: not sent again


def test_a_clear_failure_is_never_retried(monkeypatch):
    sent = []

    def no_tissue(job, progress):
        raise runner.JobFailed("No tissue was found on the slide.")

    monkeypatch.setitem(runner.HANDLERS, "selftest", runner.Handler(no_tissue, "default"))
    monkeypatch.setattr(runner, "dispatch", lambda job_id, countdown=None: sent.append(job_id))
    job = Job.objects.create(kind="selftest")
    with pytest.raises(runner.JobFailed):
        runner.execute(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.FAILED and job.error == "No tissue was found on the slide." and sent == []


def test_the_sweeper_follows_the_same_policy(monkeypatch):
    sent = []
    monkeypatch.setattr(runner, "dispatch", lambda job_id, countdown=None: sent.append(job_id))
    old = timezone.now() - timedelta(hours=1)
    second = Job.objects.create(kind="selftest", state=JobState.RUNNING, attempts=2, heartbeat_at=old)
    last = Job.objects.create(kind="selftest", state=JobState.RUNNING, attempts=runner.MAX_ATTEMPTS,
                              heartbeat_at=old)
    assert runner.requeue_stale(running_after=timedelta(minutes=5)) == 2
    assert Job.objects.get(pk=second.pk).state == JobState.QUEUED and sent == [second.pk]
    assert Job.objects.get(pk=last.pk).state == JobState.FAILED
