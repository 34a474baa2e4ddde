"""Shared fixtures: the cast of users, slide files (good and broken), a real Celery worker, a browser.

Also the run's database server: pytest_configure starts the embedded PostgreSQL (settings only compute
its URL) before pytest-django creates the test database, and pytest_unconfigure stops it again if this
run started it and no other run still uses it.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inference.synthetic.wsi import write_pyramidal_tiff
from tests.db_roles import django_db_setup  # noqa: F401 - the tests run as the application role

# Playwright's sync API keeps an event loop running in the test thread; Django's ORM would then refuse
# to run there. The tests are sequential, so the check guards against nothing real here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-7"


# --- the database server ---------------------------------------------------------------------------
_SERVER = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    # Runs after pytest-django loaded the settings and before any test touches the database.
    if config.getoption("version", 0) or config.getoption("help", False):
        return
    from django.conf import settings

    from webapp import embedded_db

    config.stash[_SERVER] = server = contextlib.ExitStack()
    if settings.EMBEDDED_DATABASE:  # else DATABASE_URL names a server someone else runs
        server.enter_context(embedded_db.running())
        if not embedded_db.serves(settings.DATABASE_URL):
            # Only for a new data directory whose path is too long for a socket inside it: pgserver then
            # names the socket's directory after the new directory's inode, unknown when settings loaded.
            server.close()
            pytest.exit("The embedded server started in a new data directory; run the tests again.", 3)
    # This run's broker and result backend, shared with the workers it starts.
    if settings.EMBEDDED_DATABASE:  # and the test database the owner's, the broker's the app role's
        embedded_db.prepare_test_run(settings.DATABASES["default"]["TEST"]["NAME"], settings.TEST_BROKER_DATABASE)
    else:
        embedded_db.ensure_database(settings.DATABASE_URL, settings.TEST_BROKER_DATABASE)


def pytest_unconfigure(config: pytest.Config) -> None:
    if server := config.stash.get(_SERVER, None):
        server.close()  # after pytest-django dropped the test database


# --- the cast ---------------------------------------------------------------------------------------
@pytest.fixture
def cast(db, django_user_model):
    """A lab admin, two pathologists, an evaluator and an outsider (a pathologist with no cases)."""

    def make(username, role, **extra):
        return django_user_model.objects.create_user(username=username, password=PASSWORD, role=role, **extra)

    class Cast:
        admin = make("admin", "lab_admin")
        path1 = make("dr_one", "pathologist", first_name="Ana", last_name="One")
        path2 = make("dr_two", "pathologist", first_name="Ben", last_name="Two")
        evaluator = make("eva", "evaluator")
        outsider = make("outsider", "pathologist")

    return Cast


@pytest.fixture
def case_factory(db):
    from webapp.cases.models import Case, Part

    counter = iter(range(1, 100000))

    def make(assigned_to=None, parts=("A",), sites=None, status=None, **fields):
        """`sites`: {part label: site} (default "Colon, sigmoid"). A signed-out `status` is set after the
        parts exist: a signed case's parts are locked (cases.models.identity_locked)."""
        number = next(counter)
        case = Case.objects.create(
            accession_number=fields.pop("accession_number", f"S26-{number:05d}"),
            patient_pseudonym=fields.pop("patient_pseudonym", f"PSN-{number:04d}"),
            assigned_to=assigned_to,
            **fields,
        )
        for label in parts:
            site = (sites or {}).get(label, "Colon, sigmoid")
            Part.objects.create(case=case, label=label, site=site, procedure="Biopsy")
        if status:
            Case.objects.filter(pk=case.pk).update(status=status)
            case.refresh_from_db()
        return case

    return make


@pytest.fixture
def client_for(client):
    """`client_for(user)`: a test client logged in as `user` (None: anonymous)."""
    from django.test import Client

    def make(user):
        new = Client()
        if user is not None:
            new.force_login(user)
        return new

    return make


# --- slide files ------------------------------------------------------------------------------------
def tissue_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A quick H&E-ish picture: pink stroma blobs with purple dots on white, enough for tiling tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height / 2, width / 2
    inside = ((yy - cy) / (0.4 * height)) ** 2 + ((xx - cx) / (0.4 * width)) ** 2 < 1
    image = np.full((height, width, 3), 245, np.uint8)
    image[inside] = (226, 160, 190)
    nuclei = inside & (rng.random((height, width)) < 0.01)
    image[nuclei] = (90, 50, 140)
    return image


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def good_slide(slide_dir) -> Path:
    label = np.full((120, 120, 3), 230, np.uint8)
    macro = np.full((120, 360, 3), 180, np.uint8)
    return write_pyramidal_tiff(slide_dir / "good.svs", tissue_like(2048, 3072), mpp=0.5, label=label, macro=macro)


@pytest.fixture(scope="session")
def text_as_svs(slide_dir) -> Path:
    path = slide_dir / "notes.svs"
    path.write_text("This is a text file, not a slide.\n" * 50)
    return path


@pytest.fixture(scope="session")
def truncated_slide(slide_dir, good_slide) -> Path:
    path = slide_dir / "truncated.svs"
    data = good_slide.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


@pytest.fixture(scope="session")
def empty_slide(slide_dir) -> Path:
    path = slide_dir / "empty.svs"
    path.write_bytes(b"")
    return path


# --- a real Celery worker ---------------------------------------------------------------------------
def _worker_env() -> dict:
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings_test", PATHALIGN_USE_TEST_DB="1", PYTHONUNBUFFERED="1")
    return env


def start_worker(queues: str = "default,gpu", name: str = "test", extra_env: dict | None = None,
                 include: str = "") -> subprocess.Popen:
    """A worker process; `include` names extra modules it imports at start (test-only hooks, e.g.
    tests.worker_hooks.slow_steps), so production code carries no test hooks."""
    env = _worker_env()
    env.update(extra_env or {})
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"pathalign-worker-{name}.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", queues, "--pool=solo",
         "-n", f"{name}@%h", "--loglevel=INFO", "--without-gossip", "--without-mingle",
         *(["--include", include] if include else [])],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.25, message: str = "condition"):
    """Poll `predicate` until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")


@pytest.fixture
def celery_worker_process(transactional_db):
    """A real worker process on the test database and this run's own broker database."""
    process = start_worker()
    yield process
    stop_worker(process)


# --- the browser ------------------------------------------------------------------------------------
CHROMIUM = os.environ.get("PATHALIGN_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is required at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page_for(browser, live_server):
    """`page_for(user)`: a browser page logged in as `user` through the real login form."""
    contexts = []

    def make(user, password: str = PASSWORD):
        context = browser.new_context(base_url=live_server.url)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        if user is not None:
            page.goto("/login/")
            page.fill("input[name=username]", user.username)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/login/" not in url)
        return page

    yield make
    for context in contexts:
        context.close()
