"""Production settings: `DJANGO_SETTINGS_MODULE=webapp.settings_production`.

Everything comes from environment variables (see docs/operations.md). `manage.py check --deploy` is clean
under these settings (tests/test_trust_settings.py runs it). Required:
  DJANGO_SECRET_KEY      50+ random characters (e.g. `python -c "import secrets; print(secrets.token_urlsafe(64))"`)
  DJANGO_ALLOWED_HOSTS   the host names the site is served under, comma-separated
Optional (read and checked in webapp/settings.py, like every PATHALIGN_* variable; see the README's table):
  PATHALIGN_BEHIND_PROXY=1   trust X-Forwarded-Proto/-For from the TLS-terminating proxy in front of gunicorn
  PATHALIGN_SSL_REDIRECT=0   only for a loopback benchmark or a proxy that already redirects (see bench/load.py)
  PATHALIGN_HSTS_SECONDS     default one year; PATHALIGN_HSTS_PRELOAD=0 to stay off the browsers' preload list
  PATHALIGN_SESSION_SECONDS  absolute session lifetime (default 8 h, a working day); sessions also end with the browser
"""
from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from .settings import *  # noqa: F403
from .settings import BEHIND_PROXY, HSTS_PRELOAD, HSTS_SECONDS, LOGGING, PROXY_COUNT, SSL_REDIRECT, env_list

DEBUG = False  # whatever DJANGO_DEBUG says
DATABASE_ROLE_CHECK = "error"  # connected as a superuser or table owner: `check` fails (webapp/db_roles.py)

# --- the secret key: required, long and not the development default
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")


def _low_entropy(key: str) -> bool:
    """Too few distinct characters, or a short block repeated ('abcde' * 10 passes Django's own check)."""
    if len(set(key)) < 20:
        return True
    return any(len(key) % size == 0 and key == key[:size] * (len(key) // size) for size in range(1, len(key) // 2 + 1))


if (len(SECRET_KEY) < 50 or _low_entropy(SECRET_KEY)
        or SECRET_KEY.startswith(("dev-only", "django-insecure"))):
    raise ImproperlyConfigured(
        "Set DJANGO_SECRET_KEY to 50 or more random characters for production "
        "(python -c \"import secrets; print(secrets.token_urlsafe(64))\")."
    )
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "")
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("Set DJANGO_ALLOWED_HOSTS to the host name(s) the site is served under.")
if any(host == "*" or host.startswith("*") for host in ALLOWED_HOSTS):
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must name the host(s) the site is served under, not '*': "
                               "a wildcard lets any Host header through (password-reset links, cache poisoning).")

# --- HTTPS only
SECURE_SSL_REDIRECT = SSL_REDIRECT
if BEHIND_PROXY:
    # Only behind a proxy that overwrites these headers; otherwise a client could claim HTTPS or an IP.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    TRUSTED_PROXY_HOPS = PROXY_COUNT  # the client's address for the lockout and the audit log (accounts/client_ip.py)
SECURE_HSTS_SECONDS = HSTS_SECONDS
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = HSTS_PRELOAD
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

# --- cookies: HTTPS only, not readable by scripts (htmx takes the CSRF token from the page, not the cookie)
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_NAME = "__Host-pathalign-session"  # __Host-: Secure, Path=/, no Domain: not shared with subdomains
CSRF_COOKIE_NAME = "__Host-pathalign-csrf"
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

# --- clickjacking and content security policy (frame-ancestors 'none' in the base CSP too)
X_FRAME_OPTIONS = "DENY"

# --- static files (STATIC_ROOT: PATHALIGN_STATIC_ROOT): hashed names, compressed, served by whitenoise (run
# `manage.py collectstatic` on deploy)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = False  # collected files only

# --- logs: no query strings (a search box could put an accession number there), no SQL
LOGGING = {
    **LOGGING,
    "filters": {"no_query_strings": {"()": "webapp.log_filters.RedactQueryStringFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                             "filters": ["no_query_strings"]}},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.security": {"level": "WARNING"},
        "gunicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
