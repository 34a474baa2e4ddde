"""Deep Zoom tiles for a session that already holds a grant, answered before Django's full request cycle.

A panning viewer asks for hundreds of tiles a minute, and with the scanner's own JPEG tiles served as stored
(`passthrough`) the tile itself costs tens of microseconds: what remained per request was Django's machinery
around it (a dozen middleware, URL resolving, a connection health check `SELECT 1` before the first query
of every request) and the grant stamp query. `TileFastPath` wraps the WSGI application (webapp/wsgi.py) and
answers a GET for the Deep Zoom tile URL itself when, and only when, all of this holds:

- the Host header is allowed, no HTTPS redirect is due and the user agent is not refused (Django's own
  `get_host`, SecurityMiddleware and CommonMiddleware);
- the session cookie has a cached grant for the slide that `tile_access.cached_grant` still finds valid:
  the same database stamp query as the full path (user active with the same role, case assigned as when
  granted, session row alive, a de-identified grant's source still open), so a reassignment, deactivation,
  logout or closed study stops tiles at once in every process, exactly as before;
- the thread's database connection is not due for Django's between-requests upkeep (age, errors).

Everything else (no cookie, no cached grant, a refused or revoked grant, a HEAD, another format, any
exception) goes to Django unchanged, which checks afresh, audits, answers 404/400/503 and caches the grant:
the fast path only ever says yes to what the full path would say yes to, and never says no itself. Its
answer is the tile view's own response (`viewer_views.dzi_tile_response`: ETag/304, Cache-Control, a 404
with the reason for a corrupt tile) with the headers of the middleware in settings.MIDDLEWARE that act on such a
response (security, Content-Length, frame options, CSP), run as Django runs them.

Measured in docs/operations.md ("Load figures").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core.exceptions import DisallowedHost, PermissionDenied
from django.core.handlers.wsgi import WSGIRequest
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpResponse
from django.utils.module_loading import import_string

from . import tile_access, viewer_views

log = logging.getLogger(__name__)

# The `slide_dzi_tile` URL (webapp/slides/urls.py: uuid, int, int, int, str converters), for the formats
# served; tests/test_tile_fast_path.py checks it matches what `reverse` builds.
TILE_PATH = re.compile(
    r"/slides/(?P<slide_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"/dzi/slide_files/(?P<level>[0-9]+)/(?P<col>[0-9]+)_(?P<row>[0-9]+)\.(?P<fmt>jpeg|jpg|png)\Z"
)
# The middleware of settings.MIDDLEWARE that act on a granted tile request or its response, run in that order
# (security headers and the HTTPS redirect; disallowed user agents and Content-Length; frame options; CSP).
# The others do nothing to it (static files, sessions, CSRF, auth, messages, htmx, axes, the session clocks
# and the refusal audit: tile views never load the session, and the fast path never refuses);
# tests/test_tile_fast_path.py checks the answer's headers are the full cycle's.
HEADER_MIDDLEWARE = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def _no_view(request):  # the middleware here run their process_request/process_response hooks only
    raise AssertionError("not called")


class TileFastPath:
    """WSGI middleware: granted Deep Zoom tile GETs answered here, every other request by `app` (Django)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.middleware = [import_string(path)(_no_view) for path in settings.MIDDLEWARE if path in HEADER_MIDDLEWARE]
        self.served = 0  # tile requests answered here (tests, logs)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET":
            match = TILE_PATH.match(environ.get("PATH_INFO", ""))
            if match is not None:
                response = self.respond(environ, match)
                if response is not None:
                    self.served += 1
                    start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
                    return [response.content]
        return self.app(environ, start_response)

    def respond(self, environ: dict, match: re.Match) -> HttpResponse | None:
        """The tile response for a request with a valid cached grant, or None: Django answers instead."""
        try:
            request = WSGIRequest(environ)
            request.get_host()  # DisallowedHost: Django answers 400 and logs it
            token = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
            if not token:
                return None
            for middleware in self.middleware:  # e.g. the HTTPS redirect
                if getattr(middleware, "process_request", None) and middleware.process_request(request):
                    return None
            _connection_upkeep()
            grant = tile_access.cached_grant(token, match["slide_id"])
            if grant is None:
                return None
            response = viewer_views.dzi_tile_response(
                request, grant, int(match["level"]), int(match["col"]), int(match["row"]), match["fmt"])
            for middleware in reversed(self.middleware):
                response = middleware.process_response(request, response)
            # Which path answered, in the browser's dev tools and for the tests (a metric without a value).
            response["Server-Timing"] = ", ".join(filter(None, (response.get("Server-Timing"), "fastpath")))
            _connection_upkeep()
            return response
        except (DisallowedHost, PermissionDenied):  # a refused host or user agent: Django refuses and logs it
            return None
        except Exception as exc:  # noqa: BLE001 - Django answers (and logs) whatever went wrong, as for any request
            log.warning("tile fast path: %s; Django answers", type(exc).__name__)
            return None


def _connection_upkeep() -> None:
    """Django's between-requests upkeep of this thread's connection (close_old_connections, run on
    request_started and request_finished: close it past CONN_MAX_AGE, after errors or with autocommit off),
    without the `SELECT 1` health check it then runs before the first query of every request
    (CONN_HEALTH_CHECKS): a connection that died since fails the stamp query, and Django answers that
    request, reconnecting first."""
    connection = connections[DEFAULT_DB_ALIAS]
    if connection.connection is None or connection.in_atomic_block:  # none yet, or a test's transaction
        return
    connection.close_if_unusable_or_obsolete()  # a health check only after an error
    if connection.connection is not None:
        connection.health_check_done = True
