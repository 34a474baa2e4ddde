"""Who may read a slide's pixels, checked fully once per session and slide, then cached and re-validated.

A viewer asks for hundreds of tiles a minute; resolving the user, the case and the slide for each would
cost several queries per tile. The first request for a slide in a session does the full check
(`get_slide_for_user`, or a de-identified grant an evaluation task put in the session), writes the
"view_slide" audit event once per session, and caches a `SlideGrant` under a hash of the session key and
the slide id.

Revocation is immediate, in every process (finding, issue 16: a cached grant kept serving tiles for up to
120 s after a reassignment or a deactivation, a full-slide IIIF render answered 200 while pages already
sent the user to the login page, and logout revoked grants only in the process that served it). A grant
carries the **stamp** it was given under: the user's state (active, role) and the case's access (its
assigned pathologist), and, for a de-identified grant, the source that gave it (an open rating study).
Every cached use compares that stamp with the database in one indexed query, which also finds the
session row (gone after logout, expiry or the session limits of webapp/middleware.py): a difference
drops the grant and the request is checked afresh. The grant cache may be per process (LocMem) or shared;
the database answers the same to every process.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.core.cache import cache
from django.db import connection
from django.dispatch import receiver
from django.http import Http404

from webapp.audit.log import record
from webapp.cases.access import can_work_on

from .access import get_slide_for_user
from .models import Slide

GRANT_TTL = 120  # seconds a grant stays cached; it is re-validated on every use regardless
SESSION_GRANTS = "pathalign_slide_grants"  # {slide_id: [expiry (unix time), source kind, source id]}
SESSION_AUDITED = "pathalign_viewed_slides"  # slide ids already audited in this session

# Who may still give a de-identified grant: kind -> fn(source id, user id) -> bool, registered by the app
# that gives them (evaluation: "study", open studies that assign the slide to the rater).
GRANT_SOURCES: dict[str, Callable[[int, int], bool]] = {}
# Whether a source lets its de-identified viewers see overlays (model heatmaps): kind -> fn(source id) -> bool.
# A kind without one shows none (a rating study is blind to the model unless it says otherwise).
GRANT_OVERLAYS: dict[str, Callable[[int], bool]] = {}
# Whether a source shows its de-identified viewers the shared annotation layer (read-only, no authors or
# comments: webapp/slides/annotations.py): kind -> fn(source id) -> bool. A kind without one shows none.
GRANT_ANNOTATIONS: dict[str, Callable[[int], bool]] = {}


def register_grant_source(kind: str, still_open: Callable[[int, int], bool],
                          overlays_allowed: Callable[[int], bool] | None = None,
                          annotations_allowed: Callable[[int], bool] | None = None) -> None:
    GRANT_SOURCES[kind] = still_open
    for registry, check in ((GRANT_OVERLAYS, overlays_allowed), (GRANT_ANNOTATIONS, annotations_allowed)):
        if check is not None:
            registry[kind] = check
        else:
            registry.pop(kind, None)


def overlays_allowed(grant: SlideGrant) -> bool:
    """Full access sees every overlay; a de-identified grant only if its source allows it (checked afresh)."""
    if grant.full:
        return True
    check = GRANT_OVERLAYS.get(grant.source[0]) if grant.source else None
    return bool(check and check(grant.source[1]))


def shared_annotations_allowed(grant: SlideGrant) -> bool:
    """Whether a de-identified grant's source shows the shared annotation layer (checked afresh). Full
    access follows the annotation rules instead (webapp/slides/annotations.py)."""
    check = GRANT_ANNOTATIONS.get(grant.source[0]) if not grant.full and grant.source else None
    return bool(check and check(grant.source[1]))


@dataclass(frozen=True)
class SlideGrant:
    slide_id: str
    path: str
    case_id: int
    full: bool  # False: only the de-identified view (an evaluation grant), never case identifiers
    associated: bool  # may see label and macro images
    user_id: int = 0
    stamp: tuple = ()  # (user active, user role, case's assigned pathologist) when granted
    source: tuple = ()  # a de-identified grant's (kind, id)


def _token(request) -> str | None:
    return request.COOKIES.get(settings.SESSION_COOKIE_NAME) or None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def _grant_key(token: str, slide_id: str) -> str:
    return f"pathalign:grant:{_hash(token)}:{slide_id}"


def _revoked_key(token: str) -> str:
    return f"pathalign:revoked:{_hash(token)}"


def may_see_associated(user, slide: Slide) -> bool:
    """Label and macro images carry identifiers: lab admins and the assigned pathologist only."""
    return bool(user.is_authenticated and (user.is_lab_admin or can_work_on(user, slide.part.case)))


def grant_deidentified_access(request, slide: Slide, source: tuple[str, int], seconds: int | None = None) -> None:
    """Let this session view `slide` de-identified (tiles, IIIF, overlays; never label, macro or case
    identifiers) while `source` (a kind registered with register_grant_source, and its id) still allows it,
    for at most `seconds` (default: the idle timeout). For the evaluation app: call it when a rater opens a
    task that shows this slide, with ("study", study id)."""
    if source[0] not in GRANT_SOURCES:
        raise ValueError(f"no grant source {source[0]!r} is registered")
    seconds = settings.SESSION_IDLE_SECONDS if seconds is None else seconds
    now = time.time()
    grants = {key: value for key, value in request.session.get(SESSION_GRANTS, {}).items()
              if isinstance(value, list) and value[0] > now}
    grants[str(slide.pk)] = [now + seconds, source[0], int(source[1])]
    request.session[SESSION_GRANTS] = grants


# One query per tile request, so it is raw SQL; the table names are literal (no string building), and
# tests/test_trust_sessions.py checks they are still the models' tables.
STAMP_TABLES = ("accounts_user", "cases_case", "django_session")
STAMP_SQL = (
    "SELECT u.is_active, u.role, c.assigned_to_id, EXISTS (SELECT 1 FROM django_session s"
    " WHERE s.session_key = %s AND s.expire_date > now()) FROM accounts_user u, cases_case c"
    " WHERE u.id = %s AND c.id = %s"
)


# psycopg prepares a statement on a connection whose threshold is not None (Django's connections: None,
# never), and never from Django's client-side cursors: a high threshold leaves every other query as it was.
_ONLY_WHEN_ASKED = 2**31 - 1


class _PreparedCursor(psycopg.Cursor):
    """A server-side binding cursor whose statements are prepared on the connection (planned once)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def _stamp(user_id: int, case_id: int, session_key: str) -> tuple[tuple, bool] | None:
    """(user active, role, case's assigned pathologist), and whether the session row is alive: one query.

    A server-side prepared statement on the thread's Django connection: PostgreSQL plans it once per
    connection instead of on every tile (planning took 0.25 ms of the server's CPU, more than twice the
    execution; with Django's client-side cursor the query cost ~0.5 ms of CPU in all, prepared ~0.1 ms:
    docs/operations.md, "Load figures"). Wrapped as Django wraps its cursors (errors, query logging, the
    test suite's query counts)."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = _ONLY_WHEN_ASKED
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        cursor = _PreparedCursor(raw)
    wrapped = connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)
    with wrapped:
        wrapped.execute(STAMP_SQL, (session_key, user_id, case_id))
        row = wrapped.fetchone()
    return None if row is None else ((row[0], row[1], row[2]), row[3])


def _source_open(source: tuple, user_id: int) -> bool:
    check = GRANT_SOURCES.get(source[0]) if source else None
    return bool(check and check(source[1], user_id))


def still_valid(grant: SlideGrant, session_key: str) -> bool:
    """Whether a cached grant still holds: same user state, same case access, session alive, source open."""
    found = _stamp(grant.user_id, grant.case_id, session_key)
    if found is None or found[0] != grant.stamp or not found[1]:
        return False
    return grant.full or _source_open(grant.source, grant.user_id)


def _check(request, slide_id: str) -> tuple[SlideGrant, Slide]:
    user = request.user
    if not user.is_authenticated:
        raise Http404("No such slide.")
    source: tuple = ()
    try:
        slide = get_slide_for_user(user, slide_id)
        full = True
    except Http404:
        value = request.session.get(SESSION_GRANTS, {}).get(str(slide_id))
        if not isinstance(value, list) or value[0] <= time.time():
            raise
        source = (value[1], value[2])
        if not _source_open(source, user.pk):  # the study closed, or the slide left the rater's queue
            raise
        slide = Slide.objects.select_related("part__case").filter(pk=slide_id).first()
        if slide is None:
            raise
        full = False
    grant = SlideGrant(
        slide_id=str(slide.pk),
        path=str(slide.path),
        case_id=slide.part.case_id,
        full=full,
        associated=full and may_see_associated(user, slide),
        user_id=user.pk,
        stamp=(user.is_active, user.role, slide.part.case.assigned_to_id),
        source=source,
    )
    return grant, slide


def _audit_once(request, slide: Slide, grant: SlideGrant) -> None:
    audited = request.session.get(SESSION_AUDITED, [])
    if grant.slide_id in audited:
        return
    record(request, "view_slide", case=grant.case_id, obj=slide, deidentified=not grant.full)
    request.session[SESSION_AUDITED] = [*audited[-999:], grant.slide_id]


def cached_grant(token: str, slide_id: str) -> SlideGrant | None:
    """The grant cached for session cookie `token` and `slide_id` if it still holds (one query: the stamp),
    else None (and a grant that no longer holds is dropped). For `resolve` and the tile fast path
    (webapp/slides/fast_tiles.py), which answers only what this returns a grant for."""
    key, revoked = _grant_key(token, slide_id), _revoked_key(token)
    found = cache.get_many([key, revoked])
    if key not in found or revoked in found:
        return None
    if still_valid(found[key], token):
        return found[key]
    cache.delete(key)  # taken away since: check afresh (usually a 404 now)
    return None


def resolve(request, slide_id) -> SlideGrant:
    """The grant for this request's session and `slide_id`, or Http404. One query (the stamp) when cached."""
    slide_id = str(slide_id)
    token = _token(request)
    if token:
        grant = cached_grant(token, slide_id)
        if grant is not None:
            return grant
    grant, slide = _check(request, slide_id)
    _audit_once(request, slide, grant)
    session_key = request.session.session_key
    if token and session_key == token:  # never cache under a cookie the session did not accept
        cache.set(_grant_key(token, slide_id), grant, GRANT_TTL)
    return grant


def resolve_slide(request, slide_id) -> tuple[SlideGrant, Slide]:
    """For pages and metadata (not tiles): the grant and the Slide row, always checked afresh."""
    grant, slide = _check(request, str(slide_id))
    _audit_once(request, slide, grant)
    token = _token(request)
    if token and request.session.session_key == token:
        cache.set(_grant_key(token, grant.slide_id), grant, GRANT_TTL)
    return grant, slide


@receiver(user_logged_out, dispatch_uid="pathalign-revoke-slide-grants")
def _revoke_on_logout(sender, request, **kwargs) -> None:
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key:
        cache.set(_revoked_key(key), True, GRANT_TTL + 5)
