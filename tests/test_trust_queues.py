"""Queues: STAT cases' jobs run first; a lost worker's job is queued again within 30 s, and that stays in the
job's history.

Findings (issue 16): jobs ran strictly in arrival order; after a worker died its job showed "running" on a
dead process for about 2 minutes, and the "requeued" message was overwritten at once.
"""
from __future__ import annotations

import time

import pytest
from django.db import transaction
from django.urls import reverse

import tests.worker_hooks.sleepy_job  # noqa: F401 - registers the "test_sleep" kind here too
from tests.conftest import start_worker, stop_worker, wait_for
from webapp.jobs import runner
from webapp.jobs.models import Job, JobState

HOOK = "tests.worker_hooks.sleepy_job"


def _done(*ids: int) -> bool:
    return Job.objects.filter(pk__in=ids, state=JobState.SUCCEEDED).count() == len(ids)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_stat_case_jobs_run_before_routine_ones(cast, case_factory):
    routine_case, stat_case = case_factory(priority="routine"), case_factory(priority="stat")
    with transaction.atomic():  # all queued before any worker runs
        routine = [runner.create_job("test_sleep", case=routine_case, params={"seconds": 1, "name": f"r{i}"})
                   for i in range(3)]
        stat = runner.create_job("test_sleep", case=stat_case, params={"seconds": 1, "name": "stat"})
    assert Job.objects.get(pk=stat.pk).priority > Job.objects.get(pk=routine[0].pk).priority
    worker = start_worker(queues="default", name="priority", include=HOOK)
    try:
        wait_for(lambda: _done(stat.pk, *(j.pk for j in routine)), timeout=120, message="the four jobs")
    finally:
        stop_worker(worker)
    started = {job.params["name"]: job.result["started"] for job in Job.objects.filter(kind="test_sleep")}
    assert min(started, key=started.get) == "stat", started


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_lost_workers_job_is_requeued_within_30_seconds_and_the_history_shows_it(cast, client_for):
    with transaction.atomic():
        job = runner.create_job("test_sleep", params={"seconds": 10, "name": "long"})
    first = start_worker(queues="default", name="doomed", include=HOOK)
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).state == JobState.RUNNING, timeout=60, message="the job to start")
    finally:
        first.kill()  # SIGKILL: no shutdown handlers, no ack
        first.wait(timeout=10)
    killed_at = time.monotonic()
    second = start_worker(queues="default", name="rescuer", include=HOOK)
    try:
        wait_for(lambda: any(e["event"] == "requeued" for e in Job.objects.get(pk=job.pk).history),
                 timeout=40, interval=0.5, message="the requeue")
        assert time.monotonic() - killed_at <= 30
        done = wait_for(lambda: _done(job.pk), timeout=90, message="the requeued job")
    finally:
        stop_worker(second)
    job = Job.objects.get(pk=job.pk)
    assert done and job.attempts == 2
    assert [e["event"] for e in job.history] == ["requeued"] and "stopped responding" in job.history[0]["text"]
    page = client_for(cast.admin).get(reverse("job_list")).content.decode()
    assert "Requeued: worker" in page  # visible on the jobs page after the job finished
