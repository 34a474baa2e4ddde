"""Sessions end when they should, and slide grants end with them, in every web process at once.

Findings (issue 16): any session write pushed the expiry to now + 8 h, so "8 hours at most" was false, and
there was no idle timeout; cached tile grants kept working after the case was reassigned or the user
deactivated (a full-slide IIIF render answered 200 while pages already redirected to the login page); an
evaluator's de-identified grant lasted 4 h and survived the study's closure; grants lived in a per-process
cache, so logout revoked them only in the process that served the logout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from tests.conftest import PASSWORD
from tests.test_evaluation_studies import make_study

ROOT = Path(__file__).resolve().parent.parent


def _signed_in(username: str) -> Client:
    client = Client()
    assert client.post("/login/", {"username": username, "password": PASSWORD}).status_code == 302
    return client


# --- the session's own limits -----------------------------------------------------------------------
def test_writes_do_not_extend_the_absolute_lifetime(cast, settings, monkeypatch):
    monkeypatch.setattr("webapp.middleware.SEEN_WRITE_SECONDS", 0)  # the activity clock moves on every page
    settings.SESSION_COOKIE_AGE = 4
    client = _signed_in("dr_one")
    signed_in = time.time()
    while time.time() < signed_in + 3:  # busy all along, and the session is written every time
        assert client.get(reverse("worklist")).status_code == 200
        session = client.session
        session["note"] = time.time()
        session.save()
        time.sleep(0.5)
    time.sleep(max(0.0, signed_in + 4.5 - time.time()))  # 4.5 s after sign-in, 1.5 s after the last use
    response = client.get(reverse("worklist"))
    assert response.status_code == 302 and "/login/" in response["Location"]
    cookie = response.cookies.get(settings.SESSION_COOKIE_NAME)
    assert cookie is None or not cookie["max-age"]  # still a browser-session cookie


def test_an_idle_session_ends(cast, settings, monkeypatch):
    monkeypatch.setattr("webapp.middleware.SEEN_WRITE_SECONDS", 0)
    settings.SESSION_IDLE_SECONDS = 2
    client = _signed_in("dr_one")
    for _ in range(3):  # in use: each request moves the idle clock on
        assert client.get(reverse("worklist")).status_code == 200
        time.sleep(1.2)
    time.sleep(2)
    response = client.get(reverse("worklist"))
    assert response.status_code == 302 and "/login/" in response["Location"]


# --- grants: another web process serves the tiles ------------------------------------------------------
SERVE = """
import sys
import django
django.setup()
from django.conf import settings
from django.test import Client
client = Client()
client.cookies[settings.SESSION_COOKIE_NAME] = sys.argv[1]
print("ready", flush=True)
for line in sys.stdin:
    print(client.get(line.strip()).status_code, flush=True)
"""


class OtherProcess:
    """A second web process (its own per-process caches) asking for URLs with the same session cookie."""

    def __init__(self, cookie: str) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test", "PATHALIGN_USE_TEST_DB": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", SERVE, cookie], cwd=ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.process.stdout.readline().strip() == "ready"

    def get(self, path: str) -> int:
        self.process.stdin.write(path + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture
def other_process():
    started = []

    def start(client: Client) -> OtherProcess:
        started.append(OtherProcess(client.cookies[settings.SESSION_COOKIE_NAME].value))
        return started[-1]

    yield start
    for process in started:
        process.close()


@pytest.fixture
def viewed(cast, case_factory, good_slide):
    from webapp.slides.ingest import ingest_slide

    case = case_factory(assigned_to=cast.path1)
    slide = ingest_slide(good_slide, part=case.parts.get(), original_filename="s.svs", move=False)
    tile = reverse("slide_dzi_tile", args=[slide.pk, 10, 0, 0, "jpeg"])
    full = reverse("slide_iiif_image", args=[slide.pk, "full", "max", "0", "default.jpg"])
    return case, tile, full


def _tiles_served(process: OtherProcess, *paths: str) -> list[int]:
    return [process.get(path) for path in paths]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["reassign", "deactivate", "logout"])
def test_a_change_stops_tiles_at_once_in_another_process(cast, viewed, other_process, change):
    case, tile, full = viewed
    client = _signed_in("dr_one")
    process = other_process(client)
    assert _tiles_served(process, tile, full) == [200, 200]  # granted and cached in that process
    if change == "reassign":
        case.assigned_to = cast.path2
        case.save()
    elif change == "deactivate":
        cast.path1.is_active = False
        cast.path1.save()
    else:
        assert client.post(reverse("logout")).status_code == 302  # served by this process, not that one
    assert _tiles_served(process, tile, full) == [404, 404]
    page = client.get(reverse("case_detail", args=[case.pk]))
    assert page.status_code in (302, 404)


@pytest.mark.django_db(transaction=True)
def test_closing_a_study_stops_its_raters_tiles(cast, case_factory, good_slide, other_process):
    from webapp.evaluation import studies
    from webapp.evaluation.models import StudyStatus
    from webapp.slides.ingest import ingest_slide

    study = make_study(case_factory, [cast.evaluator], parts=2, per_item=1)
    item = study.items.first()
    ingest_slide(good_slide, part=item.part, original_filename="s.svs", move=False)
    study.items.filter(part=item.part).update(slide=item.part.slides.get())
    assignment = studies.queue(study, cast.evaluator).filter(item__slide__isnull=False).first()
    slide = assignment.item.slide
    client = _signed_in("eva")
    assert client.get(reverse("evaluation_rate", args=[study.pk, assignment.position])).status_code == 200
    process = other_process(client)
    tile = reverse("slide_dzi_tile", args=[slide.pk, 10, 0, 0, "jpeg"])
    assert process.get(tile) == 200  # the de-identified grant
    study.status = StudyStatus.CLOSED
    study.save()
    assert process.get(tile) == 404
    assert client.get(tile).status_code == 404


def test_the_grant_stamp_query_names_the_models_tables():
    """tile_access.STAMP_SQL spells its tables out (no string building); they must stay the models'."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session

    from webapp.cases.models import Case
    from webapp.slides import tile_access

    tables = (get_user_model()._meta.db_table, Case._meta.db_table, Session._meta.db_table)
    assert tile_access.STAMP_TABLES == tables
    assert all(table in tile_access.STAMP_SQL for table in tables)
