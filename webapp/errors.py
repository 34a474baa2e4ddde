"""Friendly error pages (403, 404, 500) with the site's navigation, and without reading the request body.

Django's own handlers are wrapped in `requires_csrf_token`, which checks the CSRF token of a POST and so
parses its body first: a refused upload would have streamed the whole file to disk before its 404. These
render the same templates without that (`{% csrf_token %}` in the navigation still works: the CSRF
middleware has already run). The 500 page renders with the navigation when it can and falls back to a plain
page when rendering itself fails (the database may be why we are here).
"""
from __future__ import annotations

import logging

from django.http import HttpResponseServerError
from django.shortcuts import render

log = logging.getLogger(__name__)


def _message(exception) -> str:
    # Only messages written for users (Http404/PermissionDenied raised by the access helpers) are shown;
    # Django's resolver messages name patterns and are not.
    text = str(exception or "")
    return text if text and "urlconf" not in text.lower() and "tried" not in text.lower() else ""


def page_not_found(request, exception=None):
    return render(request, "404.html", {"message": _message(exception)}, status=404)


def permission_denied(request, exception=None):
    return render(request, "403.html", {"message": _message(exception)}, status=403)


CSRF_MESSAGE = ("The form could not be sent: the page was open too long, or you signed in again in another "
                "tab since it was loaded. Go back, reload the page and try again; nothing was changed.")


def csrf_failure(request, reason: str = ""):
    """A refused form (CSRF) in words: Django's page speaks of tokens and referers. The reason is logged."""
    log.warning("form refused (CSRF): %s", reason)
    return render(request, "403.html", {"message": CSRF_MESSAGE, "title": "The form had expired"}, status=403)


PLAIN_500 = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Something went wrong"
             "</title></head><body><h1>Something went wrong</h1><p>The error was recorded. Please try again in a "
             "moment; if it keeps happening, tell the lab administrator.</p><p><a href=\"/\">Back to the start "
             "page</a></p></body></html>")


def server_error(request):
    try:
        return render(request, "500.html", status=500)
    except Exception:  # noqa: BLE001 - the page must come out whatever broke
        log.exception("the 500 page itself failed; answering a plain one")
        return HttpResponseServerError(PLAIN_500)
