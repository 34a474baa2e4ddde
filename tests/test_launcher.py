"""`make run` (webapp.launcher) really starts the production shape on one machine: a worker for the
`default` queue and one for `gpu`, each seen alive on /healthz, and Ctrl-C stops every child (issue 16:
one worker on both queues let a long analysis block every draft).

The launcher runs as `make run` does, against a database of its own on the embedded server the tests use.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest
from django.conf import settings

from webapp import embedded_db

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not settings.EMBEDDED_DATABASE, reason="starts the launcher on the embedded server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while the broker or database is not ready: still JSON
        return json.loads(exc.read())
    except OSError:
        return None


def test_make_run_starts_a_default_and_a_gpu_worker_and_stops_them(tmp_path):
    name = f"launcher_{os.getpid()}"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PATHALIGN_USE_TEST_DB"))}
    env.update(PATHALIGN_DB_NAME=name, PATHALIGN_SKIP_DEMO_MODEL="1", DJANGO_SETTINGS_MODULE="webapp.settings",
               PATHALIGN_LOG_LEVEL="WARNING")
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    launcher = subprocess.Popen([sys.executable, "-m", "webapp.launcher", "--no-demo", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    children: list[psutil.Process] = []
    try:
        deadline, queues = time.monotonic() + 150, set()
        while time.monotonic() < deadline and launcher.poll() is None:
            health = _health(port)
            if health:
                queues = {q for w in health["checks"]["worker"].get("workers", []) for q in w["queues"]}
                if {"default", "gpu"} <= queues:
                    break
            time.sleep(1)
        assert launcher.poll() is None, launcher.stderr.read().decode()[-2000:]
        assert {"default", "gpu"} <= queues, health
        children = psutil.Process(launcher.pid).children(recursive=True)
        direct = psutil.Process(launcher.pid).children()  # a prefork worker's own pool repeats its command
        workers = [p.cmdline() for p in direct if "celery" in " ".join(p.cmdline()) and "worker" in p.cmdline()]
        own = sorted(cmd[cmd.index("-Q") + 1] for cmd in workers if "-Q" in cmd)
        assert own == ["default", "gpu"], workers  # two workers, one queue each
        # The gpu worker runs jobs in its own, non-daemonic process (--pool=solo: patch reading may start
        # processes); a gpu worker that ends (its watchdog stopped a hung job) is started again (issue #14).
        gpu = next(p for p in direct if "-Q" in p.cmdline() and p.cmdline()[p.cmdline().index("-Q") + 1] == "gpu")
        assert "--pool=solo" in gpu.cmdline() and not gpu.children(), gpu.cmdline()
        gpu.kill()
        deadline, again = time.monotonic() + 60, []
        while time.monotonic() < deadline and not again:
            time.sleep(0.5)
            again = [p for p in psutil.Process(launcher.pid).children() if p.pid != gpu.pid and "-Q" in p.cmdline()
                     and p.cmdline()[p.cmdline().index("-Q") + 1] == "gpu"]
        assert again and launcher.poll() is None, "the gpu worker was not started again"
        children = psutil.Process(launcher.pid).children(recursive=True)
    finally:
        launcher.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            launcher.wait(timeout=60)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs(children, timeout=30)
        for process in alive:
            process.kill()
        with psycopg.connect(embedded_db.url(), autocommit=True) as admin:
            for database in (name, f"{name}_broker"):
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert not alive, [p.cmdline() for p in alive]  # Ctrl-C stopped every child


def test_the_broker_tables_are_made_once_before_the_workers_start(monkeypatch):
    """Two workers opening a new broker database at once raced to create kombu's tables (one died on a
    duplicate queue_id_sequence and took make run down): the launcher makes them first, in one process."""
    from webapp import launcher

    name = f"launcher_prep_{os.getpid()}"
    for key in [k for k in os.environ if k.startswith(("DJANGO_", "PATHALIGN_USE_TEST_DB", "CELERY_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "webapp.settings")
    monkeypatch.setenv("PATHALIGN_DB_NAME", name)
    embedded_db.ensure_database(embedded_db.url(), name, owner=embedded_db.OWNER_ROLE)
    embedded_db.ensure_database(embedded_db.url(), f"{name}_broker", owner=embedded_db.APP_ROLE)
    try:
        launcher._prepare_broker()
        with psycopg.connect(embedded_db.url(f"{name}_broker", embedded_db.APP_ROLE)) as broker:
            tables = {row[0] for row in broker.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"kombu_queue", "kombu_message", "celery_taskmeta"} <= tables, tables
        launcher._prepare_broker()  # a second run (tables there) is harmless
    finally:
        with psycopg.connect(embedded_db.url(), autocommit=True) as admin:
            for database in (name, f"{name}_broker"):
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
