"""Test settings: the same real Postgres + pgvector, with fast password hashing and isolated storage.

PATHALIGN_TEST_TAG lets several test runs share one embedded server without sharing a database,
a broker queue or a slide store (each run gets its own). Like the base settings, importing this starts
and creates nothing: tests/conftest.py starts the embedded server and creates TEST_BROKER_DATABASE.
The os.environ defaults below are inherited by the worker processes the tests start, so they share the
run's slide store and model folder.
"""
import os
import tempfile
from pathlib import Path

_tag = os.environ.setdefault("PATHALIGN_TEST_TAG", "main")
os.environ.setdefault("PATHALIGN_TEST_DB", f"test_pathalign_{_tag}")
_var = Path(tempfile.gettempdir()) / f"pathalign-test-{_tag}"
os.environ.setdefault("PATHALIGN_SLIDE_STORE", str(_var / "slides"))
os.environ.setdefault("PATHALIGN_SLIDE_DROP", str(_var / "dropbox"))
os.environ.setdefault("PATHALIGN_MODEL_DIR", str(_var / "models"))
os.environ.setdefault("PATHALIGN_UPLOAD_TMP", str(_var / "upload-tmp"))
os.environ.setdefault("PATHALIGN_UPLOAD_MAX_BYTES", str(64 * 1024**2))

from .embedded_db import APP_ROLE, OWNER_ROLE, database_url_for, server_url  # noqa: E402
from .settings import *  # noqa: E402,F403
from .settings import DATABASE_URL, EMBEDDED_DATABASE, EMBEDDED_PGDATA, env_bool  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # noqa: S303 - tests only

# A worker process started by the tests talks to the test database, not the development one.
USE_TEST_DB = env_bool("PATHALIGN_USE_TEST_DB", False)
if USE_TEST_DB:
    DATABASES["default"]["NAME"] = DATABASES["default"]["TEST"]["NAME"]  # noqa: F405
# On the embedded server the pytest process creates and migrates the test database as the owner, then
# runs every test as the application role (tests/db_roles.py); the workers it starts are the app role.
if EMBEDDED_DATABASE:
    DATABASES["default"]["USER"] = APP_ROLE if USE_TEST_DB else OWNER_ROLE  # noqa: F405

# Each test run gets its own broker database, also its result backend, unless the environment names a
# real broker (Redis) or backend.
TEST_BROKER_DATABASE = f"broker_{_tag}"
_broker = (server_url(EMBEDDED_PGDATA, TEST_BROKER_DATABASE, APP_ROLE) if EMBEDDED_DATABASE
           else database_url_for(DATABASE_URL, TEST_BROKER_DATABASE)).split("://", 1)[1]
if not os.environ.get("CELERY_BROKER_URL"):
    CELERY_BROKER_URL = "sqla+postgresql+psycopg://" + _broker
if not os.environ.get("CELERY_RESULT_BACKEND"):
    CELERY_RESULT_BACKEND = "db+postgresql+psycopg://" + _broker
