"""Who may read a slide's pixels, checked once per session and slide, then cached for a short time.

A viewer asks for hundreds of tiles a minute; resolving the user, the case and the slide for each would
cost several queries per tile. The first request for a slide in a session does the full check
(`get_slide_for_user`, or a de-identified grant an evaluation task put in the session), writes the
"view_slide" audit event once per session, and caches a `SlideGrant` under a hash of the session key and
the slide id. Later requests read only the session cookie and the cache: no session load, no user load,
no query.

Revocation: a grant lives GRANT_TTL seconds, so taking a case away from a pathologist takes effect for
tiles within that time (pages re-check at once). Logging out marks the session key revoked at once.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.core.cache import cache
from django.dispatch import receiver
from django.http import Http404

from webapp.audit.log import record
from webapp.cases.access import can_work_on

from .access import get_slide_for_user
from .models import Slide

GRANT_TTL = 120  # seconds
SESSION_GRANTS = "pathalign_slide_grants"  # {slide_id: expiry (unix time)}: de-identified grants
SESSION_AUDITED = "pathalign_viewed_slides"  # slide ids already audited in this session


@dataclass(frozen=True)
class SlideGrant:
    slide_id: str
    path: str
    case_id: int
    full: bool  # False: only the de-identified view (an evaluation grant), never case identifiers
    associated: bool  # may see label and macro images


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


def grant_deidentified_access(request, slide: Slide, seconds: int = 4 * 3600) -> None:
    """Let this session view `slide` de-identified (tiles, IIIF, overlays; never label, macro or case
    identifiers). For the evaluation app: call it when a rater opens a task that shows this slide."""
    grants = dict(request.session.get(SESSION_GRANTS, {}))
    now = time.time()
    grants = {key: expiry for key, expiry in grants.items() if expiry > now}
    grants[str(slide.pk)] = now + seconds
    request.session[SESSION_GRANTS] = grants


def _check(request, slide_id: str) -> tuple[SlideGrant, Slide]:
    user = request.user
    if not user.is_authenticated:
        raise Http404("No such slide.")
    try:
        slide = get_slide_for_user(user, slide_id)
        full = True
    except Http404:
        expiry = request.session.get(SESSION_GRANTS, {}).get(str(slide_id), 0)
        if expiry <= time.time():
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
    )
    return grant, slide


def _audit_once(request, slide: Slide, grant: SlideGrant) -> None:
    audited = request.session.get(SESSION_AUDITED, [])
    if grant.slide_id in audited:
        return
    record(request, "view_slide", case=grant.case_id, obj=slide, deidentified=not grant.full)
    request.session[SESSION_AUDITED] = [*audited[-999:], grant.slide_id]


def resolve(request, slide_id) -> SlideGrant:
    """The grant for this request's session and `slide_id`, or Http404. Zero queries when cached."""
    slide_id = str(slide_id)
    token = _token(request)
    if token:
        key, revoked = _grant_key(token, slide_id), _revoked_key(token)
        found = cache.get_many([key, revoked])
        if key in found and revoked not in found:
            return found[key]
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
