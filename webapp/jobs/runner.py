"""Running jobs: the handler registry, dispatch to Celery, execution, the one retry policy, the sweeper.

A handler is `fn(job, progress)`: it does the work, calls `progress(fraction, message)` now and then and
returns a JSON-able result. Handlers must be idempotent: a job can run twice after a worker dies. Apps
register theirs with `@job_handler("kind", queue=...)` in a module their AppConfig.ready() imports.

The Celery task `run_job` is a thin shell around `execute`, which tests call directly.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from .models import Job, JobState

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Handler:
    fn: Callable[[Job, Progress], dict]
    queue: str
    time_limit: int | None = None  # seconds; None: the global CELERY_TASK_TIME_LIMIT


HANDLERS: dict[str, Handler] = {}


def job_handler(kind: str, queue: str = "default", time_limit: int | None = None):
    """Register `fn` as the handler of jobs of `kind`, run on Celery queue `queue` ("gpu" for models)."""

    def register(fn):
        HANDLERS[kind] = Handler(fn, queue, time_limit)
        return fn

    return register


class JobFailed(Exception):
    """A handler's clear, user-facing reason for failing (no traceback shown, never retried)."""


class JobCancelled(Exception):
    """Raised inside a handler at its next progress report once a lab admin cancelled the job."""


class JobTimedOut(JobFailed):
    """Raised inside a handler at its first progress report past the job's time limit (never retried)."""


# --- time limits -------------------------------------------------------------------------------------
# Enforced here, not by Celery: Celery's limits work only in its prefork pool, whose children are daemonic
# and may not start the patch-reading processes the gpu worker needs (that worker runs `--pool solo`).
# A job past its limit fails at its next progress report (the cancel path); one that stops reporting is
# failed by its pulse thread `grace_seconds(limit)` later, and that worker process then exits (its
# supervisor, `make run` or systemd, starts a fresh one): a hung model call cannot be interrupted otherwise.
def time_limit_of(kind: str) -> int:
    """Seconds a job of `kind` may run: its handler's own limit, else PATHALIGN_TASK_TIME_LIMIT."""
    handler = HANDLERS.get(kind)
    return int((handler.time_limit if handler else None) or settings.CELERY_TASK_TIME_LIMIT)


def grace_seconds(limit: float) -> float:
    """How long past its limit a silent job is left before the watchdog fails it and ends the worker."""
    return float(min(60.0, max(2.0, limit / 10)))


def time_limit_message(limit: float) -> str:
    return f"The job was stopped after its time limit of {int(limit)} s."


# --- the retry policy --------------------------------------------------------------------------------
def retry_delay(attempts: int, error: BaseException | None) -> float | None:
    """The one retry policy: seconds to wait before the next attempt of a job that has made `attempts`
    attempts and ended with `error` (None: its worker stopped responding), or None to give up.

    A handler's own JobFailed, a programming error (ValueError, TypeError) and a job over its time limit
    would fail the same way again; anything else (a lost worker, a database restart, out of memory) gets
    up to MAX_ATTEMPTS attempts in all, 4 s then 8 s apart.
    """
    if isinstance(error, JobFailed | ValueError | TypeError | SoftTimeLimitExceeded):
        return None
    if attempts >= MAX_ATTEMPTS:
        return None
    return float(2 ** (attempts + 1))


def stale_after() -> timedelta:
    """A running job whose heartbeat is older than this lost its worker (killed, host down)."""
    return timedelta(seconds=settings.STALE_JOB_SECONDS)


# --- queueing ----------------------------------------------------------------------------------------
STAT_PRIORITY = 9  # a STAT case's jobs; everything else 0


def _priority_of(case, slide) -> int:
    """STAT cases first. The case is read by its attribute (the job table sits below the cases app)."""
    case = case if case is not None else getattr(getattr(slide, "part", None), "case", None)
    return STAT_PRIORITY if getattr(case, "priority", "") == "stat" else 0


def note(job_id: int, event: str, text: str) -> None:
    """Append an entry to the job's history (kept: the message line is overwritten by the next progress)."""
    entry = {"at": timezone.now().isoformat(timespec="seconds"), "event": event, "text": text[:300]}
    Job.objects.filter(pk=job_id).update(history=RawSQL("history || %s::jsonb", [json.dumps([entry])]))


def create_job(kind: str, *, slide=None, case=None, user=None, params: dict | None = None,
               priority: int | None = None) -> Job:
    """Create a queued job and send it to Celery once the surrounding transaction commits. `priority`
    (default: STAT_PRIORITY for a STAT case's jobs, else 0): higher runs first."""
    if kind not in HANDLERS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job.objects.create(
        kind=kind, queue=HANDLERS[kind].queue, slide=slide, case=case, created_by=user, params=params or {},
        priority=_priority_of(case, slide) if priority is None else priority,
    )
    transaction.on_commit(lambda: dispatch(job.pk))
    return job


def dispatch(job_id: int, countdown: float | None = None) -> bool:
    """Send a job to the broker. With the broker down the job stays queued; `requeue_stale` resends it."""
    job = Job.objects.only("queue", "kind").get(pk=job_id)
    handler = HANDLERS.get(job.kind)
    # No broker priority (the embedded broker has none; Redis counts them the other way round): run_job
    # takes more urgent queued jobs first itself, the same on every broker.
    options: dict = {"countdown": countdown} if countdown else {}
    if handler:
        # Celery's own limits are only a backstop past ours (they act in prefork workers only; see above).
        limit = time_limit_of(job.kind)
        backstop = int(limit + grace_seconds(limit)) + 30
        options.update(soft_time_limit=backstop, time_limit=backstop + 30)
    try:
        run_job.apply_async(args=[job_id], queue=job.queue, retry=False, **options)
    except Exception as exc:  # noqa: BLE001 - any broker error: keep the job queued, log, and go on
        log.warning("broker unreachable, job %s stays queued: %s", job_id, exc)
        Job.objects.filter(pk=job_id).update(
            message="Waiting for the job queue to come back.", dispatched_at=None
        )
        return False
    Job.objects.filter(pk=job_id).update(dispatched_at=timezone.now())
    return True


def cancel_job(job: Job) -> bool:
    """Cancel a queued or running job. A queued one never starts; a running one stops at its next progress
    report (handlers write their results in one transaction at the end, so nothing half-written remains)."""
    return bool(
        Job.objects.filter(pk=job.pk, state__in=[JobState.QUEUED, JobState.RUNNING]).update(
            state=JobState.CANCELLED, finished_at=timezone.now(), message="Cancelled by a lab admin."
        )
    )


def retry_job(job: Job) -> Job:
    """Put a failed or cancelled job back in the queue (lab admins' retry button)."""
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(
            state=JobState.QUEUED, progress=0.0, message="", error="", started_at=None, finished_at=None
        )
        transaction.on_commit(lambda: dispatch(job.pk))
    job.refresh_from_db()
    return job


# --- running -----------------------------------------------------------------------------------------
class _Clock:
    """A job's time limit: `limit` seconds from its start (or from `restart`, when its turn in a pass comes)."""

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)
        self.restart()

    def restart(self) -> None:
        self.deadline = time.monotonic() + self.limit

    def over(self, grace: float = 0.0) -> bool:
        return time.monotonic() > self.deadline + grace


def _progress_writer(job_id: int, clock: _Clock | None = None) -> Progress:
    """`progress(fraction, message)` for a handler: records it, and raises JobCancelled once the job was
    cancelled and JobTimedOut once it is past its time limit."""

    def progress(fraction: float, message: str = "") -> None:
        if clock is not None and clock.over():
            raise JobTimedOut(time_limit_message(clock.limit))
        updated = Job.objects.filter(pk=job_id, state=JobState.RUNNING).update(
            progress=max(0.0, min(1.0, fraction)), message=message[:200], heartbeat_at=timezone.now()
        )
        if not updated and Job.objects.filter(pk=job_id, state=JobState.CANCELLED).exists():
            raise JobCancelled

    return progress


class _Pulse:
    """Keeps running jobs' heartbeats fresh from a thread while the handler works (model loads, long
    extraction steps report no progress). When the process dies the beats stop and the sweeper notices.

    It also is the watchdog of the time limits: a job still running `grace_seconds` past its limit is
    failed with the time-limit message and, when `hard` (inside a worker), the process ends at once."""

    def __init__(self, job_id: int, hard: bool = False) -> None:
        self.job_id = job_id
        self.hard = hard
        self.clocks: dict[int, _Clock] = {}  # the jobs this pulse beats for, and their time limits
        self.seconds = float(settings.JOB_PULSE_SECONDS)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"job-{job_id}-pulse")

    def watch(self, job_id: int, clock: _Clock) -> None:
        self.clocks[job_id] = clock

    def forget(self, job_id: int) -> None:
        self.clocks.pop(job_id, None)

    def run(self) -> None:
        try:
            while not self.stop.wait(self.seconds):
                try:
                    ids = list(self.clocks) or [self.job_id]
                    Job.objects.filter(pk__in=ids, state=JobState.RUNNING).update(heartbeat_at=timezone.now())
                    self.check_limits()
                except Exception as exc:  # noqa: BLE001 - the database may be restarting; beat again later
                    log.warning("job %s heartbeat failed: %s", self.job_id, exc)
        finally:
            connection.close()  # this thread's own connection

    def check_limits(self) -> None:
        overdue = [(pk, clock.limit) for pk, clock in list(self.clocks.items())
                   if clock.over(grace_seconds(clock.limit))]
        if not overdue or self.stop.is_set():
            return
        for pk, limit in overdue:
            message = time_limit_message(limit) + " It had stopped reporting progress; its worker was restarted."
            if Job.objects.filter(pk=pk, state=JobState.RUNNING).update(
                    state=JobState.FAILED, finished_at=timezone.now(), error=message):
                note(pk, "failed", message)
            self.forget(pk)
        if self.hard:
            log.critical("job(s) %s over their time limit and silent: ending worker process %s",
                         [pk for pk, _ in overdue], os.getpid())
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)  # a hung C call cannot be interrupted any other way

    def __enter__(self) -> _Pulse:
        _PULSES[self.job_id] = self
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        _PULSES.pop(self.job_id, None)
        self.thread.join(timeout=5)


_PULSES: dict[int, _Pulse] = {}  # lead job id -> its pulse (companions taken along beat with it)


def _claim(job: Job) -> None:
    """Mark a locked, queued job as running here (inside the caller's transaction)."""
    job.state = JobState.RUNNING
    job.attempts += 1
    job.started_at = timezone.now()
    job.heartbeat_at = job.started_at
    job.worker = f"{socket.gethostname()}:{os.getpid()}"
    job.error = ""
    job.save()


def _clock(job: Job) -> _Clock:
    """The time limit of a job that has just been claimed, running from now."""
    return _Clock(time_limit_of(job.kind))


def _record_failure(job: Job, exc: BaseException) -> float | None:
    """The one failure path: fail the job, or queue it again after `retry_delay`. Returns that delay
    (None: failed for good)."""
    delay = retry_delay(job.attempts, exc)
    error = str(exc) if isinstance(exc, JobFailed) else (
        f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=5)}"
    )
    if delay is None:
        if not isinstance(exc, JobFailed):
            log.exception("job %s failed", job.pk)
        _finish(job.pk, JobState.FAILED, error=error)
        if isinstance(exc, JobTimedOut):
            note(job.pk, "failed", str(exc))
        return None
    log.warning("job %s failed (attempt %d), retrying in %.0f s: %s", job.pk, job.attempts, delay, exc)
    message = f"Retrying after an error (attempt {job.attempts} of {MAX_ATTEMPTS} failed)."
    Job.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
        state=JobState.QUEUED, error=error[:10000], dispatched_at=None, message=message,
    )
    note(job.pk, "retry", f"{message} {type(exc).__name__}: {exc}")
    dispatch(job.pk, countdown=delay)
    return delay


_CONCLUDED: set[int] = set()  # jobs whose handler recorded their outcome itself (conclude_own)


def execute(job_id: int, hard_limit: bool = False) -> Job:
    """Run one job to completion in this process. Safe to call twice: finished jobs are left alone, and a
    job another live worker is running (fresh heartbeat) is not started a second time.

    A failure goes through `retry_delay`: the job is queued again after a delay, or marked failed and the
    error raised to the caller. The job's time limit is enforced at its progress reports; `hard_limit`
    (workers): a job silent past its limit ends this process (see `grace_seconds`)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        # Final states: a failed job runs again only through retry_job (which queues it); a late duplicate
        # message (a redelivery after a watchdog ended its worker) leaves it alone.
        if job.state in (JobState.SUCCEEDED, JobState.CANCELLED, JobState.FAILED):
            return job
        if (
            job.state == JobState.RUNNING
            and job.heartbeat_at
            and job.heartbeat_at > timezone.now() - stale_after()
        ):
            log.info("job %s is running elsewhere (%s); not starting it twice", job_id, job.worker)
            return job
        _claim(job)
    handler = HANDLERS[job.kind]
    _CONCLUDED.discard(job.pk)
    clock = _clock(job)
    try:
        with _Pulse(job.pk, hard=hard_limit) as pulse:
            pulse.watch(job.pk, clock)
            result = handler.fn(job, _progress_writer(job.pk, clock))
    except JobCancelled:
        log.info("job %s stopped: cancelled", job.pk)
        return Job.objects.get(pk=job.pk)
    except Exception as exc:
        if job.pk in _CONCLUDED:  # its own outcome is recorded; the error was in the rest of the pass
            log.exception("job %s: its pass stopped after it was done", job.pk)
            return Job.objects.get(pk=job.pk)
        if _record_failure(job, exc) is None:
            raise
        return Job.objects.get(pk=job.pk)
    finally:
        concluded = job.pk in _CONCLUDED
        _CONCLUDED.discard(job.pk)
    if concluded:  # the handler recorded its own job's outcome (`conclude_own`)
        return Job.objects.get(pk=job.pk)
    return _finish(job.pk, JobState.SUCCEEDED, result=result or {})


# --- several jobs in one pass ------------------------------------------------------------------------
@dataclass
class Companion:
    """A queued job a running handler took along to do in the same pass (e.g. the next slides' analyses,
    read while the current one is encoded). It is running, with its own progress, time limit and result."""

    job: Job
    progress: Progress
    clock: _Clock
    done: bool = False

    def its_turn(self) -> None:
        """The pass reached this job's slide: its time limit counts from now (not from being taken along)."""
        self.clock.restart()


def take_along(lead: Job, limit: int, extra: Q | None = None) -> list[Companion]:
    """Claim up to `limit` more queued jobs of the lead's kind and queue (most urgent first, not those
    waiting out a retry delay, filtered by `extra`) for the lead's handler to run in this pass. Each must be
    ended with `conclude` or `release`; their heartbeats beat with the lead's. Their own broker messages
    find them running (fresh heartbeat) or finished and do nothing."""
    if limit <= 0:
        return []
    query = Job.objects.filter(kind=lead.kind, queue=lead.queue, state=JobState.QUEUED, error="").exclude(pk=lead.pk)
    if extra is not None:
        query = query.filter(extra)
    with transaction.atomic():
        jobs = list(query.select_for_update(skip_locked=True).order_by("-priority", "created_at", "pk")[:limit])
        for job in jobs:
            _claim(job)
    pulse = _PULSES.get(lead.pk)
    taken = []
    for job in jobs:
        note(job.pk, "started", f"Started together with job #{lead.pk} on {job.worker}.")
        clock = _clock(job)
        if pulse is not None:
            pulse.watch(job.pk, clock)
        taken.append(Companion(job, _progress_writer(job.pk, clock), clock))
    return taken


def conclude(lead: Job, companion: Companion, work: Callable[[], dict]) -> Job:
    """Run a companion's last step `work()` and record its outcome as `execute` would (success, cancelled,
    failure through the retry policy); never raises."""
    companion.done = True
    job = companion.job
    try:
        result = work()
    except JobCancelled:
        return Job.objects.get(pk=job.pk)
    except Exception as exc:  # noqa: BLE001 - recorded on the companion; the lead goes on
        _record_failure(job, exc)
        return Job.objects.get(pk=job.pk)
    finally:
        pulse = _PULSES.get(lead.pk)
        if pulse is not None:
            pulse.forget(job.pk)
    return _finish(job.pk, JobState.SUCCEEDED, result=result or {})


def conclude_own(job: Job, progress: Progress, work: Callable[[], dict]) -> Job:
    """For a handler that runs more than its own job (a pass with companions): record its own job's outcome
    as soon as its own work is done, not when the handler returns (which then only returns), and stop its
    watchdog. Never raises."""
    _CONCLUDED.add(job.pk)
    pulse = _PULSES.get(job.pk)
    return conclude(job, Companion(job, progress, pulse.clocks.get(job.pk) if pulse else _clock(job)), work)


def conclude_early(lead: Job, companion: Companion, step: Callable[[], object]) -> bool:
    """Run a companion's intermediate `step` (a progress report); True when that ended the companion
    (cancelled, or failed as `conclude` records it)."""
    try:
        step()
        return False
    except Exception as exc:  # noqa: BLE001 - JobCancelled, JobTimedOut, a database error
        companion.done = True
        pulse = _PULSES.get(lead.pk)
        if pulse is not None:
            pulse.forget(companion.job.pk)
        if not isinstance(exc, JobCancelled):
            _record_failure(companion.job, exc)
        return True


def release(lead: Job, companion: Companion, why: str) -> None:
    """Give an unfinished companion back to the queue (the lead stopped before reaching it): not counted
    as an attempt, and sent to the broker again (its own message may have been consumed meanwhile)."""
    if companion.done:
        return
    companion.done = True
    pulse = _PULSES.get(lead.pk)
    if pulse is not None:
        pulse.forget(companion.job.pk)
    if Job.objects.filter(pk=companion.job.pk, state=JobState.RUNNING).update(
            state=JobState.QUEUED, attempts=F("attempts") - 1, started_at=None, heartbeat_at=None,
            dispatched_at=None, progress=0.0, message="Back in the queue."):
        note(companion.job.pk, "requeued", f"Back in the queue: job #{lead.pk} {why}.")
        dispatch(companion.job.pk)


def _finish(job_id: int, state: str, *, error: str = "", result: dict | None = None) -> Job:
    fields = {"state": state, "finished_at": timezone.now(), "error": error[:10000]}
    if state == JobState.SUCCEEDED:
        fields.update(progress=1.0, message="Done", result=result or {})
    # A job cancelled while its handler ran stays cancelled; one the watchdog failed (past its time limit)
    # stays failed.
    final = [JobState.CANCELLED, JobState.FAILED] if state == JobState.SUCCEEDED else [JobState.CANCELLED]
    Job.objects.filter(pk=job_id).exclude(state__in=final).update(**fields)
    return Job.objects.get(pk=job_id)


@shared_task(acks_late=True, name="jobs.run_job")
def run_job(job_id: int) -> str:
    """The Celery shell: run the job; `execute` records failures and retries (the policy is not Celery's)."""
    job = Job.objects.filter(pk=job_id).only("queue", "priority").first()
    if job is None:
        return "gone"  # deleted while queued
    # More urgent work first (STAT cases), whatever order the broker hands messages out in: queued jobs of
    # this queue with a higher priority that are not waiting out a retry delay. Their own messages find them
    # done later (execute skips finished jobs).
    urgent = (Job.objects.filter(state=JobState.QUEUED, queue=job.queue, priority__gt=job.priority, error="")
              .order_by("-priority", "created_at").values_list("pk", flat=True)[:10])
    for urgent_id in urgent:
        try:
            execute(urgent_id, hard_limit=True)
        except Exception as exc:  # noqa: BLE001 - recorded on that job by execute; go on with this one
            log.info("urgent job %s taken first failed: %s", urgent_id, exc)
    try:
        return execute(job_id, hard_limit=True).state
    except Exception:  # noqa: BLE001 - recorded on the job by execute; the message is done with either way
        return JobState.FAILED


# --- the stale-job sweeper ---------------------------------------------------------------------------
def requeue_stale(
    running_after: timedelta | None = None,
    queued_after: timedelta | None = None,
    resend_after: timedelta | None = None,
) -> int:
    """Jobs whose worker stopped sending heartbeats go back to the queue; unsent jobs are sent again.

    - A running job with no heartbeat for `running_after` (default STALE_JOB_SECONDS) lost its worker
      (killed, host down; the embedded broker never redelivers an unacked message): it is queued again or
      failed, as `retry_delay` says.
    - A queued job the broker never accepted (it was down), older than `queued_after` (default 30 s), is
      sent again: this is how jobs created during a broker outage run once it is back.
    - A queued job sent longer than `resend_after` ago (default 6 h, more than the Redis visibility timeout)
      is sent again as a last resort. A duplicate message is harmless: `execute` skips finished and
      live-running jobs.
    Each job is claimed with a conditional UPDATE, so several workers may sweep at once.
    Returns how many jobs were touched.
    """
    now = timezone.now()
    running_after = stale_after() if running_after is None else running_after
    queued_after = timedelta(seconds=30) if queued_after is None else queued_after
    resend_after = timedelta(hours=6) if resend_after is None else resend_after
    touched = 0
    for job in Job.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=now - running_after):
        claim = Job.objects.filter(pk=job.pk, state=JobState.RUNNING, heartbeat_at=job.heartbeat_at)
        if retry_delay(job.attempts, None) is None:
            if claim.update(state=JobState.FAILED, finished_at=now,
                            error=f"The worker stopped responding {job.attempts} times; giving up."):
                note(job.pk, "failed", f"Failed: worker {job.worker or '?'} stopped responding, attempt "
                                       f"{job.attempts} of {MAX_ATTEMPTS}.")
                touched += 1
        elif claim.update(state=JobState.QUEUED, heartbeat_at=now, dispatched_at=None,
                          message="Requeued after its worker stopped responding."):
            note(job.pk, "requeued", f"Requeued: worker {job.worker or '?'} stopped responding during attempt "
                                     f"{job.attempts}.")
            dispatch(job.pk)
            touched += 1
    quiet = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - queued_after)
    unsent = Q(dispatched_at__isnull=True, created_at__lt=now - queued_after) & quiet
    for job in Job.objects.filter(Q(state=JobState.QUEUED) & (unsent | Q(dispatched_at__lt=now - resend_after))):
        claim = Job.objects.filter(pk=job.pk, state=JobState.QUEUED, dispatched_at=job.dispatched_at,
                                   heartbeat_at=job.heartbeat_at)
        if claim.update(heartbeat_at=now):
            dispatch(job.pk)
            touched += 1
    return touched


@shared_task(name="jobs.sweep_stale_jobs")
def sweep_stale_jobs() -> int:
    """The sweeper as a Celery task, for deployments that prefer Celery beat to the workers' own sweeps."""
    return requeue_stale()


@job_handler("selftest")
def selftest(job: Job, progress: Progress) -> dict:
    """A job that proves the plumbing: it reports progress and echoes its parameters."""
    progress(0.5, "halfway")
    return {"echo": job.params.get("echo"), "worker": socket.gethostname()}
