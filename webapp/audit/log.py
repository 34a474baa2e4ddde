"""`record(...)`: write one audit event. Call it from views for every access to a case's data."""
from __future__ import annotations

import hashlib

from webapp.accounts.client_ip import client_address

from .models import AuditEvent


def _client_ip(request) -> str | None:
    """The client's address as the lockout sees it (webapp/accounts/client_ip.py): REMOTE_ADDR, or behind a
    configured trusted proxy (PATHALIGN_BEHIND_PROXY, PATHALIGN_PROXY_COUNT) the address that proxy put in
    X-Forwarded-For. A header is never trusted unless configured (finding, issue 16: behind a proxy every
    event recorded the proxy's address)."""
    return client_address(request)


def _session_hash(request) -> str:
    key = getattr(getattr(request, "session", None), "session_key", None) or ""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""


def record(request, action: str, *, case=None, obj=None, before=None, after=None, user=None, **details) -> AuditEvent:
    """Append an event. `request` may be None for background work (then pass `user`)."""
    user = user or (getattr(request, "user", None) if request is not None else None)
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    case_id = getattr(case, "pk", case)
    return AuditEvent.objects.create(
        user=user,
        username=getattr(user, "username", "") or "",
        ip_address=_client_ip(request) if request is not None else None,
        session=_session_hash(request) if request is not None else "",
        action=action,
        case_id=case_id,
        object_type=type(obj).__name__.lower() if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        before=before,
        after=after,
        details=details,
    )
