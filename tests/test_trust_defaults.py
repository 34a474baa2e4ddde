"""Safe defaults: DEBUG off unless asked for (static files through whitenoise), friendly error pages with the
navigation, and wsgi/asgi on production settings.

Findings (issue 16): DEBUG was on under `make run`, so a pathologist opening a case URL they may not see got
Django's debug 404 page with the full URL map; 403 was a bare "403 Forbidden" without navigation; wsgi.py fell
back to development settings.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.urls import reverse

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("module", ["webapp.wsgi", "webapp.asgi"])
def test_the_servers_entry_points_default_to_production_settings(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    # Production settings refuse to start without a real secret key: proof of which settings were loaded.
    assert done.returncode != 0 and "ImproperlyConfigured" in done.stderr and "DJANGO_SECRET_KEY" in done.stderr


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the test's own server
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_the_development_server_runs_without_debug_and_serves_static_files(db):
    from django.db import connection

    from webapp import embedded_db

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = _env(DJANGO_SETTINGS_MODULE="webapp.settings")  # as `make run` starts it: no DJANGO_DEBUG
    env["DATABASE_URL"] = embedded_db.url(connection.settings_dict["NAME"], embedded_db.APP_ROLE)
    server = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: server.poll() is not None or _get(base + "/login/")[0] == 200 if _port_open(port) else False,
                 timeout=60, message="the development server")
        assert server.poll() is None
        status, body = _get(base + "/static/css/app.css")
        assert status == 200 and body.strip()
        status, body = _get(base + "/cases/999999/no-such-page/")
        assert status == 404 and "Not found" in body
        assert "URLconf" not in body and "urlpatterns" not in body.lower() and "DEBUG = True" not in body
    finally:
        server.terminate()
        server.wait(timeout=20)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_refusals_are_friendly_pages_with_the_navigation(cast, case_factory, client_for):
    case = case_factory(assigned_to=cast.path1)
    hidden = client_for(cast.outsider).get(reverse("case_detail", args=[case.pk]))
    assert hidden.status_code == 404
    page = hidden.content.decode()
    assert "Not found" in page and reverse("worklist") in page and "Log out" in page
    assert case.accession_number not in page and "URLconf" not in page
    refused = client_for(cast.path1).get(reverse("case_edit", args=[case.pk]))
    assert refused.status_code == 403
    page = refused.content.decode()
    assert "Not allowed" in page and reverse("worklist") in page and "Log out" in page


def test_a_server_error_is_a_friendly_page_with_the_navigation(cast, rf):
    """The 500 handler: the site's page with the navigation, and a plain page when rendering itself fails
    (the database may be why we are there); never Django's technical page."""
    from django.contrib.messages.storage.fallback import FallbackStorage

    from webapp import errors, urls

    assert urls.handler500 is errors.server_error
    request = rf.get("/cases/1/")
    request.user = cast.path1
    request.session = {}
    request._messages = FallbackStorage(request)
    response = errors.server_error(request)
    page = response.content.decode()
    assert response.status_code == 500 and "Something went wrong" in page
    assert reverse("worklist") in page and "Log out" in page and "Traceback" not in page

    class Broken:
        is_authenticated = True

        def __getattr__(self, name):
            raise RuntimeError("the database went away")

    request.user = Broken()
    plain = errors.server_error(request)
    assert plain.status_code == 500 and b"Something went wrong" in plain.content and b"RuntimeError" not in plain.content
