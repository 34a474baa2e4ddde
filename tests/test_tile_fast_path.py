"""The tile fast path (webapp/slides/fast_tiles.py, in front of Django in webapp/wsgi.py) answers only what
Django's tile view would answer with a tile, the same way, and keeps every access guarantee of issue 16:
outsiders and strangers get Django's 404 (audited), a revoked grant stops at once in another process (a real
gunicorn serving webapp.wsgi:application), ETag/304 as before, a corrupt tile a 404 with its reason, a
database connection that died a normal answer from Django instead of an error.
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, RequestFactory
from django.urls import resolve, reverse

from tests.conftest import PASSWORD
from tests.test_evaluation_studies import make_study
from tests.test_tiles_passthrough import files  # noqa: F401 - the module's slide files (fixture)
from webapp.audit.models import AuditEvent
from webapp.slides import fast_tiles, tiles
from webapp.slides.ingest import ingest_slide

ROOT = Path(__file__).resolve().parent.parent


# --- in this process: the fast path in front of a recorded Django ------------------------------------------
class Recorded:
    """Django's WSGI application, counting the requests that reach it."""

    def __init__(self) -> None:
        self.django, self.calls = WSGIHandler(), 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.django(environ, start_response)


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_code, self.headers, self.content = int(status.split()[0]), dict(headers), body

    @property
    def fast(self) -> bool:
        return "fastpath" in self.headers.get("Server-Timing", "")


@pytest.fixture
def app():
    return fast_tiles.TileFastPath(Recorded())


def call(app, path: str, cookie: str | None = None, method: str = "GET", **headers) -> Answer:
    factory = RequestFactory()
    if cookie:
        factory.cookies[settings.SESSION_COOKIE_NAME] = cookie
    environ = factory.generic(method, path, headers=headers).environ
    started = {}
    body = app(environ, lambda status, items: started.update(status=status, headers=items))
    try:
        data = b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return Answer(started["status"], started["headers"], data)


def signed_in(username: str) -> tuple[Client, str]:
    client = Client()
    assert client.post("/login/", {"username": username, "password": PASSWORD}).status_code == 302
    return client, client.cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture
def slide(cast, case_factory, good_slide):
    case = case_factory(assigned_to=cast.path1)
    yield ingest_slide(good_slide, part=case.parts.get(), original_filename="s.svs", move=False)
    tiles.encoded.clear()


def tile(slide, col: int = 0, row: int = 0, fmt: str = "jpeg", level: int | None = None) -> str:
    top = tiles.slides.get(str(slide.pk), slide.path).dz.level_count - 1
    return reverse("slide_dzi_tile", args=[slide.pk, top if level is None else level, col, row, fmt])


def test_the_tile_pattern_is_the_url_confs():
    slide_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    for args in ((0, 0, 0, "jpeg"), (17, 123, 4567, "jpg"), (3, 10, 0, "png")):
        path = reverse("slide_dzi_tile", args=[slide_id, *args])
        match = fast_tiles.TILE_PATH.match(path)
        assert match and resolve(path).url_name == "slide_dzi_tile"
        assert (match["slide_id"], int(match["level"]), int(match["col"]), int(match["row"]), match["fmt"]) == (
            slide_id, *args)
    for other in (f"/slides/{slide_id}/dzi/slide.dzi", f"/slides/{slide_id}/dzi/slide_files/1/0_0.gif",
                  f"/slides/{slide_id}/dzi/slide_files/1/0_0.jpeg/x", f"/slides/{slide_id.upper()}/dzi/slide_files/1/0_0.jpeg"):
        assert not fast_tiles.TILE_PATH.match(other)


@pytest.mark.django_db(transaction=True)
def test_a_granted_tile_is_djangos_answer_without_django(app, cast, slide):
    client, cookie = signed_in("dr_one")
    first = call(app, tile(slide, 0, 0), cookie)  # no grant cached yet: Django checks, audits and caches it
    assert first.status_code == 200 and not first.fast and app.app.calls == 1
    assert AuditEvent.objects.filter(action="view_slide", object_id=str(slide.pk)).count() == 1
    fast = call(app, tile(slide, 1, 0), cookie)
    assert fast.status_code == 200 and fast.fast and app.app.calls == 1
    reference = client.get(tile(slide, 1, 0))  # Django's full cycle (the test client) for the same tile
    assert reference.status_code == 200 and fast.content == reference.content
    assert {k: v for k, v in fast.headers.items() if k != "Server-Timing"} == {
        k: v for k, v in reference.items() if k != "Server-Timing"}  # security headers, CSP, ETag, caching
    # The browser's cached copy: 304 with the same ETag, still without Django.
    again = call(app, tile(slide, 1, 0), cookie, If_None_Match=fast.headers["ETag"])
    assert again.status_code == 304 and again.fast and again.content == b"" and again.headers["ETag"] == fast.headers["ETag"]
    assert app.app.calls == 1 and app.served == 2
    assert AuditEvent.objects.filter(action="view_slide", object_id=str(slide.pk)).count() == 1  # once a session


@pytest.mark.django_db(transaction=True)
def test_the_fast_path_never_refuses_django_does(app, cast, slide):
    _, own = signed_in("dr_one")
    assert call(app, tile(slide), own).status_code == 200  # a grant exists in this process, for that session
    _, outsider = signed_in("outsider")
    refused = call(app, tile(slide), outsider)
    assert refused.status_code == 404 and not refused.fast
    assert AuditEvent.objects.filter(action="denied", user=cast.outsider).exists()  # Django's audit
    for cookie in (None, "not-a-session-key", own[:-1] + ("x" if own[-1] != "x" else "y")):
        answer = call(app, tile(slide), cookie)
        assert answer.status_code == 404 and not answer.fast
    assert not call(app, tile(slide), own, method="HEAD").fast  # only GET is taken
    assert call(app, tile(slide), own, method="POST").status_code in (403, 405)
    assert call(app, tile(slide), own, Host="evil.example").status_code == 400  # Django's DisallowedHost
    assert app.served == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["reassign", "deactivate", "logout"])
def test_a_change_stops_fast_path_tiles_at_once(app, cast, slide, change):
    client, cookie = signed_in("dr_one")
    assert call(app, tile(slide), cookie).status_code == 200
    assert call(app, tile(slide), cookie).fast
    if change == "reassign":
        case = slide.part.case
        case.assigned_to = cast.path2
        case.save()
    elif change == "deactivate":
        cast.path1.is_active = False
        cast.path1.save()
    else:
        assert client.post(reverse("logout")).status_code == 302
    answer = call(app, tile(slide), cookie)
    assert answer.status_code == 404 and not answer.fast


@pytest.mark.django_db(transaction=True)
def test_a_corrupt_tile_is_a_404_with_its_reason_on_the_fast_path(app, cast, case_factory, files):  # noqa: F811
    case = case_factory(assigned_to=cast.path1)
    slide = ingest_slide(files["corrupt"], part=case.parts.first(), original_filename="c.svs", move=False)
    _, cookie = signed_in("dr_one")
    try:
        assert call(app, tile(slide, 2, 1), cookie).status_code == 200  # grant cached
        bad = call(app, tile(slide, 1, 1), cookie)
        assert bad.fast and bad.status_code == 404 and b"Source tile 1,1 of level 0" in bad.content
        assert bad.headers["Content-Type"].startswith("text/plain")
        top = tiles.slides.get(str(slide.pk), slide.path).dz.level_count - 1
        half = call(app, tile(slide, 0, 0, level=top - 1), cookie)  # decoded from the same source tiles
        assert half.fast and half.status_code == 404 and b"Source tile 1,1" in half.content
    finally:
        tiles.slides.clear()
        tiles.encoded.clear()


@pytest.mark.django_db(transaction=True)
def test_a_dead_database_connection_gets_djangos_answer(app, cast, slide):
    from django.db import connection, connections

    _, cookie = signed_in("dr_one")
    assert call(app, tile(slide), cookie).status_code == 200
    assert call(app, tile(slide), cookie).fast
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = connections.create_connection("default")  # a second connection of the same role ends the first
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            assert cursor.fetchone()[0]
    finally:
        other.close()
    time.sleep(0.2)
    answer = call(app, tile(slide), cookie)  # the stamp query fails: Django reconnects and answers
    assert answer.status_code == 200 and not answer.fast
    assert call(app, tile(slide), cookie).fast  # and the next one is the fast path's again


# --- another process: a real gunicorn serving webapp.wsgi:application --------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    def __init__(self) -> None:
        self.port = _free_port()
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test", "PATHALIGN_USE_TEST_DB": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "1", "--worker-class", "gthread", "--threads", "2"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "gunicorn exited"
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("gunicorn did not start")

    def get(self, path: str, cookie: str | None = None, **headers) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if cookie:
            headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.body = response.read()
        connection.close()
        return response

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def gunicorn():
    server = Gunicorn()
    yield server
    server.close()


def _fast(response) -> bool:
    return "fastpath" in (response.getheader("Server-Timing") or "")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["reassign", "deactivate", "logout", "close study"])
def test_gunicorn_stops_fast_path_tiles_at_once(gunicorn, cast, case_factory, good_slide, change):
    if change == "close study":
        from webapp.evaluation import studies

        study = make_study(case_factory, [cast.evaluator], parts=2, per_item=1)
        item = study.items.first()
        ingest_slide(good_slide, part=item.part, original_filename="s.svs", move=False)
        study.items.filter(part=item.part).update(slide=item.part.slides.get())
        assignment = studies.queue(study, cast.evaluator).filter(item__slide__isnull=False).first()
        slide = assignment.item.slide
        client, cookie = signed_in("eva")
        assert client.get(reverse("evaluation_rate", args=[study.pk, assignment.position])).status_code == 200
    else:
        case = case_factory(assigned_to=cast.path1)
        slide = ingest_slide(good_slide, part=case.parts.get(), original_filename="s.svs", move=False)
        client, cookie = signed_in("dr_one")
    first = gunicorn.get(tile(slide), cookie)
    assert first.status == 200 and not _fast(first)  # Django in that process checks and caches the grant
    second = gunicorn.get(tile(slide), cookie)
    assert second.status == 200 and _fast(second) and second.body == first.body
    cached = gunicorn.get(tile(slide), cookie, **{"If-None-Match": second.getheader("ETag")})
    assert cached.status == 304 and _fast(cached)
    if change == "reassign":
        case.assigned_to = cast.path2
        case.save()
    elif change == "deactivate":
        cast.path1.is_active = False
        cast.path1.save()
    elif change == "logout":
        assert client.post(reverse("logout")).status_code == 302  # served by this process, not gunicorn
    else:
        from webapp.evaluation.models import StudyStatus

        study.status = StudyStatus.CLOSED
        study.save()
    after = gunicorn.get(tile(slide), cookie)
    assert after.status == 404 and not _fast(after)
    assert gunicorn.get(tile(slide), cookie, **{"If-None-Match": second.getheader("ETag")}).status == 404
