"""Settings for PathAlign Studio, read from environment variables with safe development defaults.

Production deployments use `webapp.settings_production`, which imports this module and tightens it.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PATHALIGN_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-do-not-use-in-production")
DEBUG = env_bool("DJANGO_DEBUG", True)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
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

# --- database: DATABASE_URL, or the embedded PostgreSQL + pgvector server under var/
if os.environ.get("DATABASE_URL"):
    DATABASE_URL = os.environ["DATABASE_URL"]
else:
    from webapp.embedded_db import embedded_database_url

    DATABASE_URL = embedded_database_url(os.environ.get("PATHALIGN_DB_NAME", "pathalign"))
    os.environ["DATABASE_URL"] = DATABASE_URL  # child processes (worker, tests) attach to the same server
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("PATHALIGN_TEST_DB", "test_pathalign")}
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
SESSION_COOKIE_AGE = int(os.environ.get("PATHALIGN_SESSION_SECONDS", 8 * 3600))
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

# Login throttling (django-axes): lock a username+IP pair after repeated failures.
AXES_FAILURE_LIMIT = int(os.environ.get("PATHALIGN_LOGIN_FAILURE_LIMIT", 5))
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_ENABLED = env_bool("PATHALIGN_AXES_ENABLED", True)

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("PATHALIGN_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- slide storage: files live under SLIDE_STORE_DIR with generated names; never under a user-chosen name
SLIDE_STORE_DIR = Path(os.environ.get("PATHALIGN_SLIDE_STORE", VAR_DIR / "slides"))
SLIDE_DROP_DIR = Path(os.environ.get("PATHALIGN_SLIDE_DROP", VAR_DIR / "dropbox"))
SLIDE_UPLOAD_MAX_BYTES = int(os.environ.get("PATHALIGN_UPLOAD_MAX_BYTES", 20 * 1024**3))
FILE_UPLOAD_TEMP_DIR = str(VAR_DIR / "upload-tmp")  # same filesystem as the store: a rename, not a copy
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2  # larger uploads stream to FILE_UPLOAD_TEMP_DIR
FILE_UPLOAD_PERMISSIONS = 0o640
MODEL_BUNDLE_DIR = Path(os.environ.get("PATHALIGN_MODEL_DIR", VAR_DIR / "models"))
for _directory in (SLIDE_STORE_DIR, SLIDE_DROP_DIR, Path(FILE_UPLOAD_TEMP_DIR), MODEL_BUNDLE_DIR):
    _directory.mkdir(parents=True, exist_ok=True)

# --- Celery: CELERY_BROKER_URL selects Redis or RabbitMQ; the default is kombu's SQLAlchemy transport
# on our own Postgres, so development needs no extra server.
def _sqlalchemy_url(url: str, scheme: str) -> str:
    return scheme + url.split("://", 1)[1]


CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or _sqlalchemy_url(
    DATABASE_URL, "sqla+postgresql+psycopg://"
)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or _sqlalchemy_url(
    DATABASE_URL, "db+postgresql+psycopg://"
)
CELERY_TASK_ACKS_LATE = True  # a worker that dies mid-task leaves the message to be redelivered
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_TIME_LIMIT = int(os.environ.get("PATHALIGN_TASK_TIME_LIMIT", 3 * 3600))
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

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("PATHALIGN_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
