"""Sign-ins, sign-outs, failed sign-ins, lockouts and user management are audit events too.

A failed attempt stores whether the typed username exists, never the typed text: people type passwords
into the username box, and this log is append-only.
"""
from __future__ import annotations

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from webapp.accounts.signals import user_managed

from .log import record


@receiver(user_managed)
def _user_managed(sender, request, target, action, before=None, after=None, **kwargs) -> None:
    record(request, action, obj=target, before=before, after=after, target=target.get_username())


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs) -> None:
    record(request, "login", user=user)


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        record(request, "logout", user=user)


def _known_user(credentials: dict):
    username = (credentials or {}).get("username") or ""
    return get_user_model().objects.filter(username=username).first() if username else None


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs) -> None:
    user = _known_user(credentials)
    record(request, "login_failed", user=user, known_user=user is not None)


@receiver(user_locked_out)
def _locked_out(sender, request, username=None, ip_address=None, **kwargs) -> None:
    user = _known_user({"username": username})
    record(request, "login_locked_out", user=user, known_user=user is not None)
