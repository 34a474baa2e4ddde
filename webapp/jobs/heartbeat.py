"""Worker heartbeats: each Celery worker writes its row every few seconds and sweeps for stale jobs.

Connected to Celery's worker signals when the jobs app is ready; in web processes they never fire.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from .models import WorkerHeartbeat
from .runner import requeue_stale

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5
_stop = threading.Event()


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
    while True:
        try:
            close_old_connections()
            if time.monotonic() >= next_sweep:
                _sweep()
                next_sweep = time.monotonic() + sweep_seconds
            _beat(hostname, queues)
        except Exception as exc:  # noqa: BLE001 - the database may be restarting; try again next beat
            log.warning("worker heartbeat failed: %s", exc)
        if _stop.wait(min(HEARTBEAT_SECONDS, sweep_seconds)):
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
