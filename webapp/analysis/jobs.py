"""Job handlers and the plain functions that run them; `tasks.py` only wraps these for Celery.

A handler is `fn(job, progress)`: it does the work, calls `progress(fraction, message)` now and then and
returns a JSON-able result. Handlers must be idempotent: a job can run twice after a worker dies.
"""
from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from .models import Job, JobState

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Handler:
    fn: Callable[[Job, Progress], dict]
    queue: str


HANDLERS: dict[str, Handler] = {}


def job_handler(kind: str, queue: str = "default"):
    """Register `fn` as the handler of jobs of `kind`, run on Celery queue `queue` ("gpu" for models)."""

    def register(fn):
        HANDLERS[kind] = Handler(fn, queue)
        return fn

    return register


class JobFailed(Exception):
    """A handler's clear, user-facing reason for failing (no traceback shown)."""


def create_job(kind: str, *, slide=None, case=None, user=None, params: dict | None = None) -> Job:
    """Create a queued job and send it to Celery once the surrounding transaction commits."""
    if kind not in HANDLERS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job.objects.create(
        kind=kind, queue=HANDLERS[kind].queue, slide=slide, case=case, created_by=user, params=params or {}
    )
    transaction.on_commit(lambda: dispatch(job.pk))
    return job


def dispatch(job_id: int) -> bool:
    """Send a job to the broker. With the broker down the job stays queued; `requeue_stale` resends it."""
    from .tasks import run_job

    job = Job.objects.only("queue").get(pk=job_id)
    try:
        run_job.apply_async(args=[job_id], queue=job.queue, retry=False)
        return True
    except Exception as exc:  # noqa: BLE001 - any broker error: keep the job queued, log, and go on
        log.warning("broker unreachable, job %s stays queued: %s", job_id, exc)
        Job.objects.filter(pk=job_id).update(message="Waiting for the job queue to come back.")
        return False


def _progress_writer(job_id: int) -> Progress:
    def progress(fraction: float, message: str = "") -> None:
        Job.objects.filter(pk=job_id).update(
            progress=max(0.0, min(1.0, fraction)), message=message[:200], heartbeat_at=timezone.now()
        )

    return progress


def execute(job_id: int) -> Job:
    """Run one job to completion in this process. Safe to call twice: finished jobs are left alone."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state in (JobState.SUCCEEDED, JobState.CANCELLED):
            return job
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started_at = timezone.now()
        job.heartbeat_at = job.started_at
        job.worker = f"{socket.gethostname()}"
        job.error = ""
        job.save()
    handler = HANDLERS[job.kind]
    try:
        result = handler.fn(job, _progress_writer(job.pk))
    except JobFailed as exc:
        _finish(job.pk, JobState.FAILED, error=str(exc))
        raise
    except Exception as exc:
        log.exception("job %s failed", job.pk)
        _finish(job.pk, JobState.FAILED, error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=5)}")
        raise
    return _finish(job.pk, JobState.SUCCEEDED, result=result or {})


def _finish(job_id: int, state: str, *, error: str = "", result: dict | None = None) -> Job:
    fields = {"state": state, "finished_at": timezone.now(), "error": error[:10000]}
    if state == JobState.SUCCEEDED:
        fields.update(progress=1.0, message="Done", result=result or {})
    Job.objects.filter(pk=job_id).update(**fields)
    return Job.objects.get(pk=job_id)


def retry_job(job: Job) -> Job:
    """Put a failed or cancelled job back in the queue (lab admins' retry button)."""
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(
            state=JobState.QUEUED, progress=0.0, message="", error="", started_at=None, finished_at=None
        )
        transaction.on_commit(lambda: dispatch(job.pk))
    job.refresh_from_db()
    return job


def requeue_stale(running_after: timedelta = timedelta(minutes=10), queued_after: timedelta = timedelta(minutes=5)) -> int:
    """The stale-job sweeper: jobs whose worker stopped sending heartbeats go back to the queue.

    A running job with no heartbeat for `running_after` lost its worker (killed, host down): it is
    queued again, or failed after 3 attempts. A job queued for longer than `queued_after` is resent,
    which covers a broker that was down when the job was created. Returns how many were touched.
    """
    now = timezone.now()
    touched = 0
    for job in Job.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=now - running_after):
        if job.attempts >= 3:
            _finish(job.pk, JobState.FAILED, error="The worker stopped responding three times; giving up.")
        else:
            Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
                state=JobState.QUEUED, message="Requeued after its worker stopped responding."
            )
            dispatch(job.pk)
        touched += 1
    stale_queued = Job.objects.filter(state=JobState.QUEUED, created_at__lt=now - queued_after).filter(
        models_q_no_recent_heartbeat(now - queued_after)
    )
    for job in stale_queued:
        Job.objects.filter(pk=job.pk).update(heartbeat_at=now)
        dispatch(job.pk)
        touched += 1
    return touched


def models_q_no_recent_heartbeat(before):
    from django.db.models import Q

    return Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=before)


@job_handler("selftest")
def selftest(job: Job, progress: Progress) -> dict:
    """A job that proves the plumbing: it reports progress and echoes its parameters."""
    progress(0.5, "halfway")
    return {"echo": job.params.get("echo"), "worker": socket.gethostname()}
