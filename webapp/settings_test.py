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

from .embedded_db import database_url_for  # noqa: E402
from .settings import *  # noqa: E402,F403
from .settings import DATABASE_URL, env_bool  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # noqa: S303 - tests only

# A worker process started by the tests talks to the test database, not the development one.
if env_bool("PATHALIGN_USE_TEST_DB", False):
    DATABASES["default"]["NAME"] = DATABASES["default"]["TEST"]["NAME"]  # noqa: F405

# Each test run gets its own broker database, also its result backend, unless the environment names a
# real broker (Redis) or backend.
TEST_BROKER_DATABASE = f"broker_{_tag}"
_broker = database_url_for(DATABASE_URL, TEST_BROKER_DATABASE).split("://", 1)[1]
if not os.environ.get("CELERY_BROKER_URL"):
    CELERY_BROKER_URL = "sqla+postgresql+psycopg://" + _broker
if not os.environ.get("CELERY_RESULT_BACKEND"):
    CELERY_RESULT_BACKEND = "db+postgresql+psycopg://" + _broker
