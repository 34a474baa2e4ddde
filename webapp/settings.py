"""Settings for PathAlign Studio, read from environment variables with safe development defaults.

Production deployments use `webapp.settings_production`, which imports this module and tightens it.
Every `PATHALIGN_*` variable is read here, once, and checked: a bad value stops the import with
ImproperlyConfigured naming the variable (the README lists them all). Importing this module starts no
server, connects to nothing and creates no folder: the launcher and the test setup start the embedded
database, and the folders are made when Django starts (ProjectConfig.ready in webapp/apps.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from webapp.embedded_db import APP_ROLE, OWNER_ROLE, server_url

BASE_DIR = Path(__file__).resolve().parent.parent


# --- reading the environment: an unset or empty variable means the default ------------------------------
def _raw(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _bad(name: str, expected: str, value: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name} must be {expected}, got {value!r}")


def env_str(name: str, default: str = "", pattern: str | None = None, expected: str = "") -> str:
    value = _raw(name)
    if value is None:
        return default
    if pattern is not None and not re.fullmatch(pattern, value):
        raise _bad(name, expected, value)
    return value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise _bad(name, "1/0, true/false, yes/no or on/off", value)


def env_int(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    if maximum is not None:
        expected = f"an integer from {minimum} to {maximum}"
    else:
        expected = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    try:
        number = int(value)
    except ValueError:
        raise _bad(name, expected, value) from None
    if number < minimum or (maximum is not None and number > maximum):
        raise _bad(name, expected, value)
    return number


def env_seconds(name: str, default: float) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise _bad(name, "a positive number of seconds", value) from None
    if not 0 < seconds < float("inf"):
        raise _bad(name, "a positive number of seconds", value)
    return seconds


def env_path(name: str, default: Path | None) -> Path | None:
    value = _raw(name)
    return Path(value).expanduser() if value is not None else default


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


VAR_DIR = env_path("PATHALIGN_VAR_DIR", BASE_DIR / "var")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-do-not-use-in-production")
DEBUG = env_bool("DJANGO_DEBUG", False)  # off unless asked for: the debug pages show the URL map and settings
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
CSRF_FAILURE_VIEW = "webapp.errors.csrf_failure"  # a page in words, not Django's "CSRF verification failed"

INSTALLED_APPS = [
    "webapp.admin_site.AdminConfig",  # django.contrib.admin with the audited site (webapp/admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "axes",
    "webapp.accounts",
    "webapp.audit",
    "webapp.jobs",
    "webapp.cases",
    "webapp.slides",
    "webapp.analysis",
    "webapp.reports",
    "webapp.evaluation",
    "webapp",  # the project floor: commands over every app (seed_demo, backup, restore)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "webapp.middleware.SessionLimitsMiddleware",  # 8 h from sign-in at most, 30 min idle (settings)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
    "webapp.middleware.DeniedAccessAuditMiddleware",  # refused access attempts go to the audit log
    "webapp.middleware.DatabaseUnavailableMiddleware",  # a lost database connection: 503, not a traceback
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
            ],
        },
    }
]

# --- database: DATABASE_URL, or the embedded PostgreSQL + pgvector server (webapp/embedded_db.py).
# The embedded server's URL follows from its data directory alone, so every process (web, worker, tests)
# computes the same one; nothing here checks that the server runs.
EMBEDDED_PGDATA = env_path("PATHALIGN_PGDATA", BASE_DIR / "var" / "pgdata")  # not under VAR_DIR: see README
EMBEDDED_PG_SHARED_BUFFERS = env_str(  # "": a quarter of the machine's RAM (embedded_db.memory_settings)
    "PATHALIGN_PG_SHARED_BUFFERS", "", r"\d+(kB|MB|GB|TB)", "a size such as 512MB or 2GB")
DATABASE_NAME = env_str("PATHALIGN_DB_NAME", "pathalign", r"[A-Za-z0-9_-]{1,63}",
                        "a database name (letters, digits, _ and -)")
EMBEDDED_DATABASE = not os.environ.get("DATABASE_URL")
# Two roles (docs/security.md): the app and its workers connect as the application role; migrations,
# restores and the test setup run as the owner (PATHALIGN_DB_ROLE=owner). On the embedded server that picks
# the role; with DATABASE_URL the URL names it, and the setting tells the role check (webapp/db_roles.py)
# that this process is the owner's on purpose.
DATABASE_ROLE = env_str("PATHALIGN_DB_ROLE", "app", "app|owner", "app or owner")
DATABASE_APP_ROLE, DATABASE_OWNER_ROLE = APP_ROLE, OWNER_ROLE  # role names the grants and checks use
DATABASE_URL = (server_url(EMBEDDED_PGDATA, DATABASE_NAME, OWNER_ROLE if DATABASE_ROLE == "owner" else APP_ROLE)
                if EMBEDDED_DATABASE else os.environ["DATABASE_URL"])
DATABASE_ROLE_CHECK = "warning"  # a superuser or table owner as the app's role; production: "error"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
DATABASES["default"]["TEST"] = {"NAME": env_str("PATHALIGN_TEST_DB", "test_pathalign")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_AGE = env_int("PATHALIGN_SESSION_SECONDS", 8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
# The session engine (webapp/accounts/sessions.py) ends a session SESSION_COOKIE_AGE after sign-in (writes
# do not extend it) or SESSION_IDLE_SECONDS after its last request, whichever comes first.
SESSION_ENGINE = "webapp.accounts.sessions"
SESSION_IDLE_SECONDS = env_int("PATHALIGN_SESSION_IDLE_SECONDS", 30 * 60)

# Login throttling (django-axes): a username after repeated failures from anywhere, and separately an
# address after repeated failures over any usernames (password spraying). Sign-in, the sign-out password
# and the password change all count (webapp/accounts/reauth.py).
AXES_FAILURE_LIMIT = env_int("PATHALIGN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "webapp.accounts.client_ip.client_address"  # the audit log uses the same address
TRUSTED_PROXY_HOPS = 0  # production behind PATHALIGN_BEHIND_PROXY: PATHALIGN_PROXY_COUNT
AXES_RESET_ON_SUCCESS = True
AXES_ENABLED = env_bool("PATHALIGN_AXES_ENABLED", True)

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("PATHALIGN_TIME_ZONE", "UTC")
try:
    ZoneInfo(TIME_ZONE)
except (ValueError, ZoneInfoNotFoundError):
    raise _bad("PATHALIGN_TIME_ZONE", "a time zone name such as Europe/Paris", TIME_ZONE) from None
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env_path("PATHALIGN_STATIC_ROOT", BASE_DIR / "staticfiles")
# Development serves static files through whitenoise from the source folders (DEBUG is off by default, so
# runserver's own static view is not there); production serves the collected, hashed files only.
WHITENOISE_USE_FINDERS = True

# --- slide storage: files live under SLIDE_STORE_DIR with generated names; never under a user-chosen name
SLIDE_STORE_DIR = env_path("PATHALIGN_SLIDE_STORE", VAR_DIR / "slides")
SLIDE_DROP_DIR = env_path("PATHALIGN_SLIDE_DROP", VAR_DIR / "dropbox")
SLIDE_UPLOAD_MAX_BYTES = env_int("PATHALIGN_UPLOAD_MAX_BYTES", 20 * 1024**3)
# Same filesystem as the store: storing an upload is a rename, not a copy.
FILE_UPLOAD_TEMP_DIR = str(env_path("PATHALIGN_UPLOAD_TMP", VAR_DIR / "upload-tmp"))
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2  # larger uploads stream to FILE_UPLOAD_TEMP_DIR
FILE_UPLOAD_PERMISSIONS = 0o600  # owner-only, like everything the service writes (webapp/apps.py)
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
MODEL_BUNDLE_DIR = env_path("PATHALIGN_MODEL_DIR", VAR_DIR / "models")


# --- tiles (webapp/slides/tiles.py): per-process caches, sizes in MiB
TILE_JPEG_QUALITY = env_int("PATHALIGN_TILE_QUALITY", 75, maximum=100)
TILE_OPEN_SLIDES = env_int("PATHALIGN_OPEN_SLIDES", 32)
TILE_CACHE_MB = env_int("PATHALIGN_TILE_CACHE_MB", 128, minimum=0)
OPENSLIDE_CACHE_MB = env_int("PATHALIGN_OPENSLIDE_CACHE_MB", 256, minimum=0)
# Deep Zoom levels between a /4 pyramid's, rendered once per slide file after it is stored (slides/prerender.py;
# about a quarter of the slide file's size on disk); 0 turns the background job off.
VIEWER_LEVELS_DIR = env_path("PATHALIGN_VIEWER_LEVELS", VAR_DIR / "viewer-levels")
VIEWER_LEVELS_PRERENDER = env_bool("PATHALIGN_VIEWER_LEVELS_PRERENDER", True)

# --- jobs (webapp/jobs): every running job beats every JOB_PULSE_SECONDS; one without a beat for
# STALE_JOB_SECONDS lost its worker; every worker sweeps for such jobs every JOB_SWEEP_SECONDS.
# Defaults: a lost worker's job is queued again within 25 s (no beat for 20 s, found by a sweep every 5 s).
JOB_PULSE_SECONDS = env_seconds("PATHALIGN_JOB_PULSE_SECONDS", 5)
STALE_JOB_SECONDS = env_seconds("PATHALIGN_STALE_JOB_SECONDS", 20)
JOB_SWEEP_SECONDS = env_seconds("PATHALIGN_SWEEP_SECONDS", 5)
# Every worker also removes store files an interrupted upload left without a row (older than an hour).
ORPHAN_SWEEP_SECONDS = env_seconds("PATHALIGN_ORPHAN_SWEEP_SECONDS", 600)
ANALYZE_TIME_LIMIT = env_int("PATHALIGN_ANALYZE_TIME_LIMIT", 2 * 3600)  # seconds per slide analysis
TRAIN_TIME_LIMIT = env_int("PATHALIGN_TRAIN_TIME_LIMIT", 12 * 3600)  # seconds per training job


def _env_fraction(name: str, default: float) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise _bad(name, "a number from 0 to 1", value) from None
    if not 0 <= number <= 1:
        raise _bad(name, "a number from 0 to 1", value)
    return number


# --- the flywheel's gates (webapp/analysis): "Make active" refuses a bundle whose held-out slide -> report
# R@1 is below the active bundle's by more than this (0.02 = 2 points) unless a lab admin overrides it with a
# written reason; training is offered only with at least this many signed-out cases in every class.
BUNDLE_MAX_REGRESSION = _env_fraction("PATHALIGN_BUNDLE_MAX_REGRESSION", 0.02)
TRAIN_MIN_CASES_PER_CLASS = env_int("PATHALIGN_TRAIN_MIN_CASES_PER_CLASS", 5, minimum=2)

# --- models (webapp/analysis, webapp/reports)
MAX_CACHED_MODELS = env_int("PATHALIGN_MAX_CACHED_MODELS", 2)  # loaded bundles kept per worker process
# "": the GPU this worker sees (CUDA_VISIBLE_DEVICES), else the CPU.
INFERENCE_DEVICE = env_str("PATHALIGN_DEVICE", "", r"[a-z]+(:\d+)?", "a torch device such as cpu, cuda or cuda:1")
DEMO_BUNDLE_DIR = env_path("PATHALIGN_DEMO_BUNDLE", None)  # None: MODEL_BUNDLE_DIR/demo-<version>
SKIP_DEMO_MODEL = env_bool("PATHALIGN_SKIP_DEMO_MODEL", False)
DRAFT_NUM_BEAMS = env_int("PATHALIGN_DRAFT_BEAMS", 3)
DRAFT_MAX_NEW_TOKENS = env_int("PATHALIGN_DRAFT_MAX_TOKENS", 160)
# Q-Former drafts: write this many and keep the one the model's slide-text alignment ranks first (1 = the
# decoder's own draft only; GenerationConfig.candidates).
DRAFT_CANDIDATES = env_int("PATHALIGN_DRAFT_CANDIDATES", 8)
MULTIMODAL_MODEL_DIR = env_path("PATHALIGN_MULTIMODAL_DIR", None)  # a local multimodal LM for "llm" drafts
# Patch extraction in the analysis job: at most this many patches per slide (an even spatial sample beyond);
# the encode batch (0: 256 on CUDA, 64 on the CPU); torch.compile of the patch encoder; how patches are read.
MAX_PATCHES_PER_SLIDE = env_int("PATHALIGN_MAX_PATCHES_PER_SLIDE", 20000)
EMBED_BATCH_SIZE = env_int("PATHALIGN_EMBED_BATCH_SIZE", 0, minimum=0)
COMPILE_ENCODER = env_bool("PATHALIGN_COMPILE_ENCODER", False)
PATCH_READERS = env_str("PATHALIGN_PATCH_READERS", "auto", r"threads|processes|auto",
                        "threads, processes or auto (processes on CUDA, threads on the CPU)")

# --- the signed record (webapp/reports/export.py)
# Where other systems reach this app (FHIR presentedForm URLs, identifiers); "" takes it from the request.
PUBLIC_BASE_URL = env_str("PATHALIGN_PUBLIC_BASE_URL", "", r"https?://[^\s/]+(/[^\s]*)?",
                          "an http(s) URL such as https://pathology.example.org").rstrip("/")

# --- IIIF (webapp/slides/iiif.py): the other origins whose pages may read the IIIF service (CORS, which
# compliance level 1 requires), comma-separated; the app's own origin always may. `*` only when set so.
IIIF_CORS_ORIGINS = env_list("PATHALIGN_IIIF_CORS_ORIGINS", "")
for _origin in IIIF_CORS_ORIGINS:
    if not re.fullmatch(r"\*|https?://[^\s/]+", _origin):
        raise _bad("PATHALIGN_IIIF_CORS_ORIGINS", "* or comma-separated origins such as https://mirador.example.org",
                   _origin)

# --- `make run` (webapp/launcher.py)
RUN_HOST = env_str("PATHALIGN_HOST", "127.0.0.1")
RUN_PORT = env_int("PATHALIGN_PORT", 8000, maximum=65535)

# --- production only: webapp.settings_production applies these (development serves plain HTTP)
SSL_REDIRECT = env_bool("PATHALIGN_SSL_REDIRECT", True)
BEHIND_PROXY = env_bool("PATHALIGN_BEHIND_PROXY", False)
PROXY_COUNT = env_int("PATHALIGN_PROXY_COUNT", 1)
HSTS_SECONDS = env_int("PATHALIGN_HSTS_SECONDS", 365 * 24 * 3600, minimum=0)
HSTS_PRELOAD = env_bool("PATHALIGN_HSTS_PRELOAD", True)

# --- Celery: CELERY_BROKER_URL selects Redis or RabbitMQ; the default is kombu's SQLAlchemy transport
# on our own Postgres, so development needs no extra server.
def _sqlalchemy_url(url: str, scheme: str) -> str:
    return scheme + url.split("://", 1)[1]


# The embedded default keeps the broker's tables in a database of their own, owned by the application role
# (kombu creates them on first use; the app's own schema gives that role no CREATE).
BROKER_DATABASE = DATABASE_NAME + "_broker"
_BROKER_DATABASE_URL = (server_url(EMBEDDED_PGDATA, BROKER_DATABASE, APP_ROLE) if EMBEDDED_DATABASE
                        else DATABASE_URL)
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or _sqlalchemy_url(
    _BROKER_DATABASE_URL, "sqla+postgresql+psycopg://"
)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or _sqlalchemy_url(
    _BROKER_DATABASE_URL, "db+postgresql+psycopg://"
)
CELERY_TASK_ACKS_LATE = True  # a worker that dies mid-task leaves the message to be redelivered
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# Seconds a job may run unless its kind has its own limit: enforced by webapp/jobs/runner.py (Celery's own
# limits act in prefork workers only; the gpu worker runs --pool solo).
CELERY_TASK_TIME_LIMIT = env_int("PATHALIGN_TASK_TIME_LIMIT", 3 * 3600, minimum=61)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
# Longer than the longest job, so Redis does not hand a running job to a second worker.
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
    if CELERY_BROKER_URL.startswith(("redis", "rediss"))
    else {}
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("PATHALIGN_CELERY_EAGER", False)
CELERY_RESULT_EXTENDED = True

# --- security headers that hold in development too (production tightens the rest)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "script-src": ["'self'"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
        "object-src": ["'none'"],
    }
}

LOG_LEVEL = env_str("PATHALIGN_LOG_LEVEL", "INFO", "DEBUG|INFO|WARNING|ERROR|CRITICAL",
                    "one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
