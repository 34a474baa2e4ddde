"""Password checks outside the login form that count towards the lockout (django-axes).

Finding (issue 16): the sign-out password and the password-change form each took 25 wrong guesses with
no lockout; they called `user.check_password`, which axes never sees. `check_password` goes through
`django.contrib.auth.authenticate`, so axes' backend refuses a locked-out user or address before the
password is even compared, and a wrong password is a failed attempt like a failed login (axes records it
from `user_login_failed`; so does the audit log).

    from webapp.accounts import reauth
    if not reauth.check_password(request, request.user, typed):
        message = reauth.LOCKED_MESSAGE if reauth.locked_out(request) else "Wrong password."
"""
from __future__ import annotations

from django.contrib.auth import authenticate
from django.http import HttpRequest

LOCKED_MESSAGE = ("Too many wrong passwords: this account or this address is locked for 15 minutes. "
                  "Ask a lab administrator if it was not you.")


def check_password(request: HttpRequest, user, password: str) -> bool:
    """True if `password` is `user`'s and neither the user nor the address is locked out; every False
    counts as a failed attempt (a locked-out check is refused without looking at the password)."""
    if not password or not getattr(user, "is_authenticated", False):
        return False
    found = authenticate(request, username=user.get_username(), password=password)
    return found is not None and found.pk == user.pk


def locked_out(request: HttpRequest) -> bool:
    """After a refused check_password (or login): whether the refusal was a lockout."""
    return bool(getattr(request, "axes_locked_out", False))
