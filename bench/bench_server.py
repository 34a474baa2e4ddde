"""Shared by the benchmarks: their database server, and waiting until a gunicorn answers."""
from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def bench_database(name: str, separate: bool = False) -> Iterator[str]:
    """The URL of the bench's database for the length of the block.

    Without DATABASE_URL: database `name` on the embedded server, started here as `make run` does (settings
    never start it) and stopped at the end if this started it; the app processes a bench starts find that
    server by themselves when given PATHALIGN_DB_NAME=`name`. With DATABASE_URL: that database, or with
    `separate` a database `name` on the same server.
    """
    from webapp import embedded_db

    external = os.environ.get("DATABASE_URL")
    if external and not separate:
        yield external
        return
    with contextlib.ExitStack() as stack:
        server = external or stack.enter_context(embedded_db.running())
        # The owner role owns (and migrates) the bench database, as `make run` does for the app's own; a
        # bench database made before the roles existed is handed over.
        if not external:  # the app's broker database too (settings.BROKER_DATABASE), as `make run` makes it
            embedded_db.ensure_database(server, f"{name}_broker", owner=embedded_db.APP_ROLE)
        yield embedded_db.ensure_database(server, name, owner=None if external else embedded_db.OWNER_ROLE)


def wait_until_serving(process: subprocess.Popen, port: int, path: str = "/healthz",
                       ok_statuses: tuple[int, ...] = (200, 503), timeout: float = 60.0) -> subprocess.Popen:
    """Poll 127.0.0.1:`port``path` until it answers one of `ok_statuses` (503 from /healthz still means the
    web server is up); stop the process and raise if it exits or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            if connection.getresponse().status in ok_statuses:
                return process
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"gunicorn did not answer within {timeout:.0f} s")


def migrate_as_owner(env: dict | None = None) -> None:
    """`manage.py migrate` as the database owner (the app role may not create tables; the migration grants it
    its rights afterwards), in a process of its own so that the bench process stays the application role."""
    env = dict(os.environ if env is None else env)
    env["PATHALIGN_DB_ROLE"] = "owner"
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
