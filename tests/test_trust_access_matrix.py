"""Access control for every URL of the app times every role, from `tests/access_matrix.py`.

The URL list comes from Django's resolver, so a view nobody thought about cannot slip through: a URL that
is missing from the matrix fails with instructions. Each role's request runs inside a savepoint that is
rolled back, so one role's POST does not change what the next role sees.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.access_matrix import MATRIX, PARAMS, ROLES, SKIPPED_NAMESPACES
from tests.model_fixtures import bundle_row
from webapp.middleware import PLAIN_KWARGS, RESOURCE_KWARGS


def walk(patterns=None, namespace: str = "") -> list[tuple[str, URLPattern]]:
    """Every (full name, pattern) under the root URLconf, recursing into includes."""
    found = []
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            if entry.namespace in SKIPPED_NAMESPACES:
                continue
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            found += walk(entry.url_patterns, inner)
        else:
            found.append((f"{namespace}{entry.name}" if entry.name else "", entry))
    return found


def url_params(pattern: URLPattern) -> set[str]:
    return set(pattern.pattern.converters) or set(pattern.pattern.regex.groupindex)


ALL = walk()
NAMES = sorted({name for name, _ in ALL if name})


def test_every_url_has_a_name():
    unnamed = [str(p.pattern) for name, p in ALL if not name]
    assert not unnamed, f"Give these URL patterns a name= so the access matrix can list them: {unnamed}"


def test_matrix_lists_every_url_and_nothing_else():
    missing = [name for name in NAMES if name not in MATRIX]
    stale = [name for name in MATRIX if name not in NAMES]
    assert not missing, (
        f"URL(s) {missing} are not in tests/access_matrix.py. Read the view and add the expected status "
        f"for every role ({', '.join(ROLES)}) and method, e.g. \"{missing[0]}\": {{\"GET\": case_read(200)}}; "
        "test_access_matrix shows what each answers today.")
    assert not stale, f"tests/access_matrix.py lists URL(s) that no longer exist: {stale}"


def test_resource_parameters_are_known_to_the_denial_log():
    """A URL keyword that names a resource must be resolvable to a case for the 'denied' audit events."""
    unknown = {}
    for name, pattern in ALL:
        extra = set(MATRIX.get(name, {}).get("kwargs", {}))
        for param in url_params(pattern) - extra:
            if param in PLAIN_KWARGS and param in PARAMS:
                continue
            if param not in RESOURCE_KWARGS or param not in PARAMS:
                unknown.setdefault(param, []).append(name)
    assert not unknown, (
        f"URL parameters {unknown}: add them to webapp.middleware.RESOURCE_KWARGS (model, path to case id) and "
        f"to PARAMS in tests/access_matrix.py, or give a fixed value in the entry's \"kwargs\".")


@dataclass
class World:
    cast: type
    case: object
    part: object
    slide: object
    other_case: object
    report: object = None
    section: object = None
    classification: object = None
    labelset: object = None
    job: object = None
    bundle: object = None
    study: object = None
    signed_report: object = None


@pytest.fixture
def world(cast, case_factory, good_slide) -> World:
    """dr_one's case with part A, a slide, a draft report (one saved version, one classification), a job
    and a model bundle; a rating study assigned to the evaluator (on cases of its own)."""
    from tests.test_evaluation_studies import make_study
    from webapp.analysis.models import ModelBundle
    from webapp.jobs.models import Job
    from webapp.reports import services
    from webapp.reports.models import Classification, Label, LabelSet
    from webapp.slides.ingest import ingest_slide

    case = case_factory(assigned_to=cast.path1)
    other_case = case_factory(assigned_to=cast.path2)
    part = case.parts.get()
    slide = ingest_slide(good_slide, part=part, original_filename="good.svs", user=cast.admin, move=False)
    world = World(cast=cast, case=case, part=part, slide=slide, other_case=other_case)
    world.report = services.start_report(case, cast.path1)
    world.section = world.report.sections.get()
    services.save_section(world.section, "Tubular adenoma.", world.section.version, cast.path1)
    world.labelset = LabelSet.objects.create(name="Matrix organ")
    Label.objects.create(label_set=world.labelset, name="colon")
    world.classification = Classification.objects.create(
        section=world.section, label_set=world.labelset, scores={"colon": 0.9}, model_label="colon",
        model_confidence=0.9, bundle=bundle_row("demo@1"))
    world.job = Job.objects.create(kind="draft_report", slide=slide, case=case, created_by=cast.admin)
    world.bundle = ModelBundle.objects.create(name="matrix", version="1", path="/nonexistent/matrix-bundle")
    world.study = make_study(case_factory, [cast.evaluator], parts=1, per_item=1)
    signed_case = case_factory(assigned_to=cast.path1)
    world.signed_report = services.start_report(signed_case, cast.path1)
    section = world.signed_report.sections.get()
    services.save_section(section, "Benign colonic mucosa.", section.version, cast.path1)
    services.sign(world.signed_report, cast.path1, no_slides_reason="a report-only case in the matrix")
    return world


def _user(world: World, role: str):
    return {"anonymous": None, "admin": world.cast.admin, "assigned": world.cast.path1,
            "other": world.cast.path2, "evaluator": world.cast.evaluator, "outsider": world.cast.outsider}[role]


def _url(world: World, name: str) -> str:
    pattern = next(p for n, p in ALL if n == name)
    fixed = MATRIX.get(name, {}).get("kwargs", {})
    kwargs = {param: (fixed[param](world) if callable(fixed[param]) else fixed[param]) if param in fixed
              else PARAMS[param](world) for param in url_params(pattern)}
    return reverse(name, kwargs=kwargs)


def _request(client, method: str, url: str):
    """One request in a savepoint that is rolled back; the client keeps its session cookie (a logout or a
    rotated session would otherwise change who the next request is)."""
    from django.conf import settings

    cookies = {key: morsel.value for key, morsel in client.cookies.items()}
    with transaction.atomic():
        response = getattr(client, method.lower())(url)
        transaction.set_rollback(True)
    client.cookies.clear()
    for key, value in cookies.items():
        client.cookies[key] = value
    assert settings.SESSION_COOKIE_NAME in client.cookies or not cookies
    return response


def _observe(url: str, clients: dict) -> dict:
    return {method: {role: _request(clients[role], method, url).status_code for role in ROLES}
            for method in ("GET", "POST")}


def test_access_matrix(world):
    """Every URL x every role x its methods, against one world (built once: this is ~1000 requests).

    Each request runs in a savepoint that is rolled back, so a POST by one role changes nothing for the next.
    """
    from django.test import Client

    clients = {}
    for role in ROLES:
        clients[role] = Client()
        if _user(world, role) is not None:
            clients[role].force_login(_user(world, role))
    problems, unlisted = [], []
    for name in NAMES:
        pattern = next(p for n, p in ALL if n == name)
        if name not in MATRIX:
            missing = [p for p in url_params(pattern) if p not in PARAMS]
            seen = "" if missing else f" (today: {_observe(_url(world, name), clients)})"
            unlisted.append(name + seen)
            continue
        url, entry = _url(world, name), MATRIX[name]
        if "GET" not in entry:
            problems.append(f"{name}: give at least the GET outcome (405 if the view refuses GET)")
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            for role, expected in entry.get(method, {}).items():
                response = _request(clients[role], method, url)
                if response.status_code != expected:
                    problems.append(f"{name} {method} {url} as {role}: {response.status_code}, expected {expected}")
                elif role == "anonymous" and expected == 302 and name != "logout" \
                        and "/login/" not in response["Location"]:
                    problems.append(f"{name} {method} as anonymous: redirected to {response['Location']}")
    assert not unlisted, (
        "URL(s) missing from tests/access_matrix.py; read each view and add the expected status per role and "
        "method (the statuses seen today are shown: check them against the view's intent before copying):\n  "
        + "\n  ".join(unlisted))
    assert not problems, "Access control differs from tests/access_matrix.py:\n  " + "\n  ".join(problems)


# --- content, not only status codes (issue 16: list pages answered 200 to everyone and nobody looked inside) ---
LIST_PAGES = [("home", ""), ("case_list", ""), ("case_list", "?q=S26-71"), ("case_list", "?q=PSN-"),
              ("worklist", ""), ("analysis_search", "?mode=text&q=adenoma"), ("evaluation_studies", ""),
              ("job_list", ""), ("audit_log", "")]


def test_list_pages_and_search_show_nobody_elses_cases(cast, case_factory, client_for):
    from django.urls import reverse

    cases = {
        "path1": case_factory(assigned_to=cast.path1, accession_number="S26-71001", patient_pseudonym="PSN-ALPHA"),
        "path2": case_factory(assigned_to=cast.path2, accession_number="S26-71002", patient_pseudonym="PSN-BRAVO"),
        None: case_factory(accession_number="S26-71003", patient_pseudonym="PSN-CHARLIE"),
    }
    for viewer in ("outsider", "evaluator", "path2"):
        client = client_for(getattr(cast, viewer))
        hidden = [c for owner, c in cases.items() if owner != viewer]
        answered = 0
        for name, query in LIST_PAGES:
            response = client.get(reverse(name) + query)
            if response.status_code != 200:
                assert response.status_code in (302, 403, 404), (viewer, name, response.status_code)
                continue
            answered += 1
            page = response.content.decode()
            for case in hidden:
                assert case.accession_number not in page, (viewer, name + query, case.accession_number)
                assert case.patient_pseudonym not in page, (viewer, name + query, case.patient_pseudonym)
        assert answered >= 3, (viewer, "expected some list pages to answer 200")
        if viewer == "path2":  # and the pathologist does see their own case in the list and the search
            own = client.get(reverse("case_list") + "?q=S26-71").content.decode()
            assert "S26-71002" in own
