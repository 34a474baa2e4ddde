"""Test settings: the same real Postgres + pgvector, with fast password hashing and isolated storage.

PATHALIGN_TEST_TAG lets several test runs share one embedded server without sharing a database,
a broker queue or a slide store (each run gets its own).
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
os.environ.setdefault("PATHALIGN_UPLOAD_MAX_BYTES", str(64 * 1024**2))

from .settings import *  # noqa: E402,F403
from .settings import DATABASE_URL  # noqa: E402

FILE_UPLOAD_TEMP_DIR = os.environ.get("PATHALIGN_UPLOAD_TMP", str(_var / "upload-tmp"))
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # noqa: S303 - tests only

# A worker process started by the tests talks to the test database, not the development one.
if os.environ.get("PATHALIGN_USE_TEST_DB") == "1":
    DATABASES["default"]["NAME"] = DATABASES["default"]["TEST"]["NAME"]  # noqa: F405

# Each test run gets its own broker database unless CELERY_BROKER_URL names a real broker (Redis).
if not os.environ.get("CELERY_BROKER_URL"):
    from webapp.embedded_db import ensure_database

    _broker_url = ensure_database(DATABASE_URL, f"broker_{_tag}")
    CELERY_BROKER_URL = "sqla+postgresql+psycopg://" + _broker_url.split("://", 1)[1]
    CELERY_RESULT_BACKEND = "db+postgresql+psycopg://" + _broker_url.split("://", 1)[1]
