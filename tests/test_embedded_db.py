"""The embedded PostgreSQL server is sized for vector search, not left at PostgreSQL's 128 MB default."""
from __future__ import annotations

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
