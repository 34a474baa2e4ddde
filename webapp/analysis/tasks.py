"""Celery shells around `webapp.analysis.jobs`: serialization, retries and worker heartbeats only."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.db import close_old_connections
from django.utils import timezone

from . import jobs
from .models import WorkerHeartbeat

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5
# Every worker sweeps for stale jobs (dead workers, broker outages) this often; see jobs.requeue_stale.
SWEEP_SECONDS = float(os.environ.get("PATHALIGN_SWEEP_SECONDS", 60))
_stop = threading.Event()


@shared_task(bind=True, acks_late=True, max_retries=3, name="analysis.run_job")
def run_job(self, job_id: int) -> str:
    from .models import Job

    if not Job.objects.filter(pk=job_id).exists():
        return "gone"  # deleted while queued
    try:
        return jobs.execute(job_id).state
    except jobs.JobFailed:
        return "failed"
    except Exception as exc:
        from .models import JobState

        if self.request.retries < self.max_retries and not isinstance(exc, (ValueError, TypeError)):
            Job.objects.filter(pk=job_id).update(state=JobState.QUEUED, message="Retrying after an error.")
            raise self.retry(exc=exc, countdown=2 ** (self.request.retries + 2)) from exc
        return "failed"


@shared_task(name="analysis.sweep_stale_jobs")
def sweep_stale_jobs() -> int:
    return jobs.requeue_stale()


def _beat(hostname: str, queues: str) -> None:
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={"queues": queues, "pid": os.getpid(), "last_seen": timezone.now()},
        create_defaults={"queues": queues, "pid": os.getpid(), "started_at": timezone.now()},
    )


def _sweep() -> None:
    try:
        touched = jobs.requeue_stale()
        if touched:
            log.info("stale-job sweeper requeued or failed %d job(s)", touched)
    except Exception as exc:  # noqa: BLE001 - never let the sweeper kill the heartbeat thread
        log.warning("stale-job sweep failed: %s", exc)


def _heartbeat_loop(hostname: str, queues: str) -> None:
    next_sweep = time.monotonic()  # sweep at once: jobs left by a worker that died before this one started
    while True:
        try:
            close_old_connections()
            if time.monotonic() >= next_sweep:
                _sweep()
                next_sweep = time.monotonic() + SWEEP_SECONDS
            _beat(hostname, queues)
        except Exception as exc:  # noqa: BLE001 - the database may be restarting; try again next beat
            log.warning("worker heartbeat failed: %s", exc)
        if _stop.wait(min(HEARTBEAT_SECONDS, SWEEP_SECONDS)):
            return


@worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values())) if sender else ""
    _beat(hostname, queues)
    threading.Thread(target=_heartbeat_loop, args=(hostname, queues), daemon=True, name="heartbeat").start()


@worker_shutdown.connect
def stop_heartbeat(sender=None, **kwargs) -> None:
    _stop.set()
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    try:
        WorkerHeartbeat.objects.filter(hostname=hostname).delete()
    except Exception as exc:  # noqa: BLE001 - best effort on the way out
        log.info("could not remove the heartbeat row: %s", exc)
