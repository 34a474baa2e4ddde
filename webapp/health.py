"""/healthz: is the database up, does the broker answer, is a worker alive? JSON, 200 or 503."""
from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from webapp.celery import app
from webapp.jobs.models import WorkerHeartbeat

WORKER_FRESH = timedelta(seconds=30)


def _database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
        return {"ok": row is not None, "pgvector": row[0] if row else None}
    except Exception as exc:  # noqa: BLE001 - report, don't raise
        return {"ok": False, "error": type(exc).__name__}


def _broker() -> dict:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "transport": conn.transport_cls if isinstance(conn.transport_cls, str) else "ok"}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": type(exc).__name__}


def _workers() -> dict:
    try:
        alive = WorkerHeartbeat.objects.filter(last_seen__gte=timezone.now() - WORKER_FRESH)
        workers = [{"queues": w.queues.split(","), "last_seen": w.last_seen.isoformat()} for w in alive]
        return {"ok": bool(workers), "count": len(workers), "workers": workers}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": type(exc).__name__}


@never_cache
@require_GET
def healthz(request):
    checks = {"database": _database(), "broker": _broker()}
    checks["worker"] = _workers() if checks["database"]["ok"] else {"ok": False}
    # A missing worker degrades the service (jobs wait) but the app itself is up.
    healthy = checks["database"]["ok"] and checks["broker"]["ok"]
    status = "ok" if healthy and checks["worker"]["ok"] else ("degraded" if healthy else "down")
    return JsonResponse({"status": status, "checks": checks}, status=200 if healthy else 503)
