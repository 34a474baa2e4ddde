"""Failed authorization attempts go to the audit log.

A view refuses access in one of two ways (see `webapp.cases.access`): PermissionDenied (403, a user who
may read but not write, or a role-restricted page) or Http404 for an object that exists but that the user
may not see. Both are recorded as action "denied". A 404 for an object that does not exist is not an
access attempt on anyone's data and is not recorded (it would only fill the log with typos and scanners).
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.db.models import Model
from django.dispatch import receiver
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from webapp.accounts import sessions
from webapp.accounts.models import User
from webapp.analysis.models import ModelBundle
from webapp.audit.log import record
from webapp.cases.models import Case, Part
from webapp.evaluation.models import Study
from webapp.jobs.models import Job
from webapp.reports.models import Classification, LabelSet, Report, ReportSection
from webapp.slides.models import Slide

log = logging.getLogger(__name__)


# URL keyword -> (model, path from that model to its case id). Other apps' resources go here too;
# `tests/test_trust_access_matrix.py` fails when a URL keyword is not listed.
RESOURCE_KWARGS: dict[str, tuple[type[Model], str]] = {
    "case_id": (Case, "pk"),
    "part_id": (Part, "case_id"),
    "slide_id": (Slide, "part__case_id"),
    "user_id": (User, ""),
    "report_id": (Report, "case_id"),
    "section_id": (ReportSection, "report__case_id"),
    "classification_id": (Classification, "section__report__case_id"),
    "labelset_id": (LabelSet, ""),
    "job_id": (Job, "case_id"),
    "bundle_id": (ModelBundle, ""),
    "study_id": (Study, ""),
}
# URL keywords that name no resource of their own (positions, versions, formats, tile coordinates).
PLAIN_KWARGS = {"number", "position", "what", "name", "level", "col", "row", "fmt", "region", "size", "rotation",
                "quality_format"}


def existing_resource(kwargs: dict) -> tuple[bool, int | None]:
    """Whether any object named by the URL exists, and the case it belongs to (if any)."""
    found, case_id = False, None
    for name, value in kwargs.items():
        spec = RESOURCE_KWARGS.get(name)
        if spec is None:
            continue
        model = spec[0]
        try:
            if isinstance(value, str) and model._meta.pk.get_internal_type() == "UUIDField":
                value = uuid.UUID(value)
            row = model._default_manager.filter(pk=value)
            if spec[1]:
                hit = row.values_list(spec[1], flat=True).first()
                exists = hit is not None
                case_id = case_id or hit
            else:
                exists = row.exists()
        except (ValueError, TypeError):  # a malformed id names nothing
            continue
        found = found or exists
    return found, case_id


class DeniedAccessAuditMiddleware:
    """Record 403s and 404s-for-existing-objects as audit events; never breaks the response."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code == 403 and not getattr(request, "_denied_recorded", False):
            # A 403 that was not an exception from a view: CSRF failure, or a view returning 403 itself.
            match = getattr(request, "resolver_match", None)
            case_id = None
            with contextlib.suppress(Exception):  # best effort: the refusal goes out whatever happens here
                case_id = existing_resource(match.kwargs)[1] if match is not None and match.kwargs else None
            self._record(request, 403, "forbidden response", case_id=case_id)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        if isinstance(exception, PermissionDenied):
            self._record(request, 403, "permission denied")
        elif isinstance(exception, Http404):
            match = getattr(request, "resolver_match", None)
            if match is not None and match.kwargs:
                try:
                    exists, case_id = existing_resource(match.kwargs)
                except Exception:  # noqa: BLE001 - e.g. the database is down: the 404 still goes out
                    return None
                if exists:
                    self._record(request, 404, "hidden object", case_id=case_id)
        return None  # Django's normal 403/404 handling continues

    def _record(self, request: HttpRequest, status: int, reason: str, case_id: int | None = None) -> None:
        request._denied_recorded = True
        match = getattr(request, "resolver_match", None)
        if case_id is None and match is not None and "case_id" in match.kwargs:
            case_id = _int_or_none(match.kwargs["case_id"])
        try:
            record(request, "denied", case=case_id, status=status, reason=reason, method=request.method,
                   view=match.view_name if match else "", path=_redacted_path(request.path),
                   kwargs={k: str(v)[:64] for k, v in (match.kwargs if match else {}).items()})
        except Exception as exc:  # noqa: BLE001 - the database may be down; the refusal itself must still go out
            log.warning("could not record a denied access: %s", type(exc).__name__)


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")


def _redacted_path(path: str) -> str:
    # App URLs carry only integer ids and UUIDs; anything else in a refused path could be typed text.
    return "/".join(seg if _SAFE_SEGMENT.match(seg) else "…" for seg in path.split("/"))[:300]


# --- database outages ------------------------------------------------------------------------------------
class DatabaseUnavailableMiddleware:
    """A request whose database connection died (server restarted, connection killed, failover) gets a 503
    with Retry-After instead of a 500 and a traceback. Django closes the broken connection when the request
    ends (it saw the error), and CONN_HEALTH_CHECKS makes the next request open a fresh one, so the app
    recovers by itself as soon as the database is back.

    Rendered without templates or sessions: those could need the database that just went away.
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        log.error("database unavailable during a request: %s", type(exception).__name__)
        message = "The database is unavailable for a moment; please try again."
        accept = request.headers.get("Accept", "")
        if "json" in accept or request.path.endswith(".json") or request.headers.get("HX-Request"):
            response: HttpResponse = JsonResponse({"ok": False, "error": message}, status=503)
        else:
            response = HttpResponse(
                f"<!doctype html><title>Try again</title><h1>Please try again</h1><p>{message}</p>",
                status=503, content_type="text/html; charset=utf-8")
        response["Retry-After"] = "5"
        return response


# --- session limits ------------------------------------------------------------------------------------
SEEN_WRITE_SECONDS = 60  # the activity time is written at most once a minute
# Views that never load the session (tiles: their grants check the session row, whose expiry carries both
# limits; webapp/slides/tile_access.py). Loading it here would cost two queries per tile.
SESSIONLESS_VIEWS = {"slide_dzi", "slide_dzi_tile", "slide_iiif_base", "slide_iiif_info", "slide_iiif_image"}


@receiver(user_logged_in, dispatch_uid="pathalign-session-signed-in-at")
def _start_session_clock(sender, request, user, **kwargs) -> None:
    if request is not None and hasattr(request, "session"):
        request.session[sessions.SIGNED_IN_AT] = request.session[sessions.SEEN_AT] = time.time()


class SessionLimitsMiddleware:
    """Sessions end SESSION_COOKIE_AGE after sign-in and after SESSION_IDLE_SECONDS without a request
    (finding, issue 16: any session write extended "8 hours at most", and there was no idle timeout).

    The limits live in the session engine (webapp/accounts/sessions.py: the row's expiry is the earlier of
    the two), so an ended session is gone for every process. This middleware keeps the clocks: the sign-in
    time for a session that has none (one made before these limits), and the activity time, at most once a
    minute, on every request but the tile endpoints.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # After the view, and only if it looked at its user (this never loads a session by itself: a tile
        # request stays query-free, and a database outage stays the view's to answer with a 503).
        user = getattr(request, "_cached_user", None)
        match = getattr(request, "resolver_match", None)
        if user is None or not user.is_authenticated or (match is not None and match.url_name in SESSIONLESS_VIEWS):
            return response
        try:
            now, session = time.time(), request.session
            if session.get(sessions.SIGNED_IN_AT) is None:
                session[sessions.SIGNED_IN_AT] = session[sessions.SEEN_AT] = now
            elif now - session.get(sessions.SEEN_AT, 0) > SEEN_WRITE_SECONDS:
                session[sessions.SEEN_AT] = now
        except (OperationalError, InterfaceError):  # the database went away meanwhile: next request
            pass
        return response
