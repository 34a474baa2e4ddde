"""`make run`: the whole app on one machine with its embedded defaults.

Starts (or attaches to) the embedded Postgres, applies migrations, loads the demo data, then runs a
Celery worker and the web server as child processes. Ctrl-C (or SIGTERM) stops every child and then the
embedded database if this run started it, in that order. The children find the server on their own:
settings compute its URL from the data directory.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, **env: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True, env={**os.environ, **env})


# kombu's SQLAlchemy transport creates its tables when a worker first opens a channel, without the retry
# celery's result backend has: two workers starting together on a new broker database raced, and one died on
# "duplicate key ... queue_id_sequence" (which stopped make run). The tables are made once, here, first.
PREPARE_BROKER = """
import django
django.setup()
from webapp.celery import app
if app.conf.broker_url.startswith("sqla+"):
    with app.connection_for_write() as connection:
        connection.default_channel.session  # kombu's SQLAlchemy transport creates its tables here
if str(app.conf.result_backend or "").startswith("db+"):
    app.backend.ResultSession().close()  # and celery's database result backend its own
"""


def _prepare_broker() -> None:
    subprocess.run([sys.executable, "-c", PREPARE_BROKER], cwd=ROOT, check=True, env=dict(os.environ))


# The worker pools (docs/operations.md): `default` runs light jobs (drafts, imports) in Celery's prefork pool;
# `gpu` runs one job at a time in the worker's own process (`--pool solo`, one process per GPU): prefork
# children are daemonic and may not start the processes that read and decode patches beside the encoder
# (PATHALIGN_PATCH_READERS). Time limits are the job runner's own in both (webapp/jobs/runner.py).
WORKERS = (("default", "prefork", 2), ("gpu", "solo", 1))


def worker_command(queue: str) -> list[str]:
    """The command line of the launcher's worker for `queue` (tests start the same one)."""
    pool, concurrency = next((pool, n) for name, pool, n in WORKERS if name == queue)
    return [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", queue, f"--pool={pool}",
            *([f"--concurrency={concurrency}"] if pool == "prefork" else []), "--loglevel=INFO",
            "-n", f"{queue}@%h", "--without-gossip", "--without-mingle"]


MAX_WORKER_RESTARTS = 20  # per run: a worker that keeps dying stops make run rather than loop forever


def _start_worker(queue: str) -> subprocess.Popen:
    return subprocess.Popen(worker_command(queue), cwd=ROOT, start_new_session=True)


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    from webapp import embedded_db, settings  # settings only read the environment: nothing starts here

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.RUN_HOST, help="default: $PATHALIGN_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, default=settings.RUN_PORT, help="default: $PATHALIGN_PORT or 8000")
    parser.add_argument("--no-worker", action="store_true", help="serve the app without a Celery worker")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo data")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    with contextlib.ExitStack() as database:
        if settings.EMBEDDED_DATABASE:
            # Stopped when this block ends, if this run started it and no test run still uses it.
            database.enter_context(embedded_db.running())
            # The app's database is the owner role's, the broker's the application role's (db_roles.py).
            embedded_db.ensure_database(embedded_db.url(), settings.DATABASE_NAME, owner=embedded_db.OWNER_ROLE)
            embedded_db.ensure_database(embedded_db.url(), settings.BROKER_DATABASE, owner=embedded_db.APP_ROLE)
        status = _serve(args)
    print("Stopped.", flush=True)
    return status


def _serve(args: argparse.Namespace) -> int:
    _manage("migrate", "--no-input", PATHALIGN_DB_ROLE="owner")  # the owner migrates and grants the app role
    _manage("check", "--database", "default")  # everything from here on runs as the application role
    if not args.no_demo:
        _manage("seed_demo")

    children: list[subprocess.Popen] = []
    workers: dict[str, subprocess.Popen] = {}
    restarts = 0
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not args.no_worker:
            _prepare_broker()
            # The production shape on one machine: a worker for light jobs (drafts, imports) and one for the
            # model (gpu), so a long analysis never holds up a draft.
            for queue, _pool, _n in WORKERS:
                workers[queue] = _start_worker(queue)
                children.append(workers[queue])
        children.append(subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"],
            cwd=ROOT, start_new_session=True,
        ))
        print(f"\nPathAlign Studio is running on http://{args.host}:{args.port}/  (Ctrl-C stops everything)\n",
              flush=True)
        while not stopping:
            for queue, worker in list(workers.items()):
                # A worker that ended itself (its watchdog stopped a job hung past its time limit) is started
                # again, as systemd's Restart=always does in production.
                if worker.poll() is not None and not stopping and restarts < MAX_WORKER_RESTARTS:
                    print(f"the {queue} worker exited ({worker.returncode}); starting it again", file=sys.stderr)
                    restarts += 1
                    children.remove(worker)
                    workers[queue] = _start_worker(queue)
                    children.append(workers[queue])
            if any(child.poll() is not None for child in children):
                print("a child process exited; stopping the others", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        print("\nStopping ...", flush=True)
        _stop(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
