"""The embedded PostgreSQL server is sized for vector search, not left at PostgreSQL's 128 MB default; it
runs while a launcher, a test run or a bench uses it, and the last of them stops it if one of them started it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webapp import embedded_db

GIB = 1024**3


def test_memory_follows_the_machine_and_can_be_overridden():
    assert embedded_db.memory_settings(24 * GIB) == {
        "shared_buffers": "6144MB",
        "effective_cache_size": "18432MB",
        "maintenance_work_mem": "1536MB",
    }
    small = embedded_db.memory_settings(GIB // 4)  # never below PostgreSQL's own defaults
    assert small["shared_buffers"] == "128MB" and small["effective_cache_size"] == "512MB"
    assert embedded_db.memory_settings(512 * GIB)["shared_buffers"] == "16384MB"  # capped
    # PATHALIGN_PG_SHARED_BUFFERS, read by settings, arrives as the override
    assert embedded_db.memory_settings(24 * GIB, shared_buffers="2GB")["shared_buffers"] == "2GB"


@pytest.mark.django_db
def test_the_running_embedded_server_uses_them():
    from django.conf import settings
    from django.db import connection

    if not settings.EMBEDDED_DATABASE:
        pytest.skip("DATABASE_URL names an external server: its memory is its administrator's")
    wanted = embedded_db.memory_settings(shared_buffers=settings.EMBEDDED_PG_SHARED_BUFFERS)
    with connection.cursor() as cur:
        cur.execute("SELECT setting::bigint * 8192, pending_restart FROM pg_settings WHERE name = 'shared_buffers'")
        in_bytes, pending = cur.fetchone()
    assert not pending
    value = wanted["shared_buffers"]
    if not value.endswith("MB"):
        pytest.skip(f"PATHALIGN_PG_SHARED_BUFFERS={value}: compared in MB only")
    assert in_bytes == int(value.removesuffix("MB")) * 1024 * 1024


# --- who starts and stops it: real servers on their own data directories, each in its own process -----------
HOLD = """
import sys, time
from pathlib import Path
from webapp import embedded_db
with embedded_db.running() as url:
    print("running", embedded_db.is_running(), url, flush=True)
    while not Path(sys.argv[1]).exists():  # hold the server until told to leave
        time.sleep(0.1)
print("stopped" if not embedded_db.is_running() else "still running", flush=True)
"""


def _python(pgdata: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PATHALIGN_PGDATA": str(pgdata)}
    env.pop("DATABASE_URL", None)
    return subprocess.Popen([sys.executable, *args], cwd=Path(__file__).resolve().parent.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _postmaster_alive(pgdata: Path) -> bool:
    try:
        os.kill(int((pgdata / "postmaster.pid").read_text().split()[0]), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_the_server_runs_while_someone_uses_it_and_stops_after_the_last(tmp_path):
    pgdata = tmp_path / "pgdata"
    first, second = tmp_path / "first-leaves", tmp_path / "second-leaves"
    a = _python(pgdata, "-c", HOLD, str(first))
    assert a.stdout.readline().split()[:2] == ["running", "True"]  # started by a
    url = f"postgresql://postgres@/postgres?host={pgdata.resolve()}&passfile={pgdata.resolve()}.auth/pgpass"
    b = _python(pgdata, "-c", HOLD, str(second))
    assert b.stdout.readline().split() == ["running", "True", url]  # b attaches to the same server
    first.touch()
    assert a.communicate(timeout=60)[0].strip() == "still running"  # b still uses it
    assert _postmaster_alive(pgdata)
    second.touch()
    assert b.communicate(timeout=60)[0].strip() == "stopped"  # the last one out stops what a started
    assert not _postmaster_alive(pgdata)


@pytest.mark.slow
def test_a_server_started_by_hand_is_left_running(tmp_path):
    pgdata, leave = tmp_path / "pgdata", tmp_path / "leave"
    started = _python(pgdata, "-m", "webapp.embedded_db", "start")
    assert started.communicate(timeout=120)[0].startswith("postgresql://"), started.stderr
    try:
        leave.touch()
        user = _python(pgdata, "-c", HOLD, str(leave))
        assert user.communicate(timeout=60)[0].split()[-2:] == ["still", "running"]
        assert _postmaster_alive(pgdata)
    finally:
        _python(pgdata, "-m", "webapp.embedded_db", "stop").communicate(timeout=60)
    assert not _postmaster_alive(pgdata)
