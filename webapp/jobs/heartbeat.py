"""Worker heartbeats: each Celery worker writes its row every few seconds and sweeps for stale jobs.

Connected to Celery's worker signals when the jobs app is ready; in web processes they never fire.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from .models import WorkerHeartbeat
from .runner import requeue_stale

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5
_stop = threading.Event()

# Housekeeping that every worker runs now and then beside its heartbeat (apps above register theirs from
# their AppConfig.ready(), e.g. slides' sweep of orphaned store files): name -> (fn, every_seconds).
PERIODIC: dict[str, tuple[Callable[[], object], float]] = {}


def register_periodic(name: str, fn: Callable[[], object], every_seconds: float) -> None:
    """Run `fn()` in every worker every `every_seconds`, the first time at start; it must be idempotent and
    safe to run in several workers at once. Failures are logged, never raised."""
    PERIODIC[name] = (fn, float(every_seconds))


def _run_periodic(due: dict[str, float]) -> None:
    for name, (fn, every) in list(PERIODIC.items()):
        if time.monotonic() < due.get(name, 0.0):
            continue
        due[name] = time.monotonic() + every
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - housekeeping never stops the heartbeat
            log.warning("periodic %s failed: %s", name, exc)


def _beat(hostname: str, queues: str) -> None:
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={"queues": queues, "pid": os.getpid(), "last_seen": timezone.now()},
        create_defaults={"queues": queues, "pid": os.getpid(), "started_at": timezone.now()},
    )


def _sweep() -> None:
    try:
        touched = requeue_stale()
        if touched:
            log.info("stale-job sweeper requeued or failed %d job(s)", touched)
    except Exception as exc:  # noqa: BLE001 - never let the sweeper kill the heartbeat thread
        log.warning("stale-job sweep failed: %s", exc)


def _heartbeat_loop(hostname: str, queues: str) -> None:
    # Every worker sweeps for stale jobs (dead workers, broker outages) every JOB_SWEEP_SECONDS, the first
    # time at once: jobs left by a worker that died before this one started.
    sweep_seconds = float(settings.JOB_SWEEP_SECONDS)
    next_sweep = time.monotonic()
    due: dict[str, float] = {}
    while True:
        try:
            close_old_connections()
            if time.monotonic() >= next_sweep:
                _sweep()
                next_sweep = time.monotonic() + sweep_seconds
            _beat(hostname, queues)
            _run_periodic(due)
        except Exception as exc:  # noqa: BLE001 - the database may be restarting; try again next beat
            log.warning("worker heartbeat failed: %s", exc)
        if _stop.wait(min([HEARTBEAT_SECONDS, sweep_seconds, *(every for _, every in PERIODIC.values())])):
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
