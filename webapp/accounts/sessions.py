"""The session engine: Django's database sessions whose expiry also honours the two limits.

`SESSION_ENGINE = "webapp.accounts.sessions"`. A session row's `expire_date` is the earliest of
- sign-in + SESSION_COOKIE_AGE (8 h): an absolute lifetime that writes do not extend (Django alone pushes
  the expiry to now + age on every write: finding, issue 16);
- the last activity + SESSION_IDLE_SECONDS (30 min): the idle timeout.
Django refuses an expired row on load, so a session past either limit is simply gone, in every process,
and tile grants (which check the row, webapp/slides/tile_access.py) stop with it. The cookie stays a
browser-session cookie. `webapp.middleware.SessionLimitsMiddleware` writes the sign-in time and moves the
activity time forward (at most once a minute).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.utils import timezone

SIGNED_IN_AT = "pathalign_signed_in_at"  # unix time of the sign-in
SEEN_AT = "pathalign_seen_at"  # unix time of the last activity (written at most once a minute)


def limit(session) -> datetime | None:
    """When this session ends by the two limits (None: not signed in)."""
    signed_in = session.get(SIGNED_IN_AT)
    if signed_in is None:
        return None
    seen = session.get(SEEN_AT, signed_in)
    end = min(signed_in + settings.SESSION_COOKIE_AGE, seen + settings.SESSION_IDLE_SECONDS)
    return datetime.fromtimestamp(end, tz=timezone.get_current_timezone())


class SessionStore(DatabaseSessionStore):
    def get_expiry_date(self, **kwargs) -> datetime:
        expiry = super().get_expiry_date(**kwargs)
        if "modification" in kwargs or "expiry" in kwargs:  # asked about another moment: Django's answer
            return expiry
        end = limit(self)
        return min(expiry, end) if end is not None else expiry

    def get_expiry_age(self, **kwargs) -> int:
        age = super().get_expiry_age(**kwargs)
        if "modification" in kwargs or "expiry" in kwargs:
            return age
        end = limit(self)
        return max(0, min(age, int((end - timezone.now()) / timedelta(seconds=1)))) if end is not None else age
