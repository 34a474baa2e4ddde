"""`make run`: the whole app on one machine with its embedded defaults.

Starts (or attaches to) the embedded Postgres, applies migrations, loads the demo data, then runs a
Celery worker and the web server as child processes. Ctrl-C (or SIGTERM) stops every child and then the
embedded database, in that order.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True)


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("PATHALIGN_HOST", "127.0.0.1"))
    parser.add_argument("--port", default=os.environ.get("PATHALIGN_PORT", "8000"))
    parser.add_argument("--no-worker", action="store_true", help="serve the app without a Celery worker")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo data")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    embedded = not os.environ.get("DATABASE_URL")
    started_database = False
    if embedded:
        from webapp.embedded_db import embedded_database_url, is_running

        started_database = not is_running()  # only stop at exit what this run started
        os.environ["DATABASE_URL"] = embedded_database_url()
    _manage("migrate", "--no-input")
    if not args.no_demo:
        _manage("seed_demo")

    children: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not args.no_worker:
            # One worker process per GPU host is the production shape; here one consumes both queues.
            children.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "default,gpu",
                 "--concurrency=1", "--loglevel=INFO", "-n", "local@%h", "--without-gossip", "--without-mingle"],
                cwd=ROOT, start_new_session=True,
            ))
        children.append(subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"],
            cwd=ROOT, start_new_session=True,
        ))
        print(f"\nPathAlign Studio is running on http://{args.host}:{args.port}/  (Ctrl-C stops everything)\n",
              flush=True)
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("a child process exited; stopping the others", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        print("\nStopping ...", flush=True)
        _stop(children)
        if started_database:
            from webapp.embedded_db import stop

            stop()
        print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
