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
from webapp.middleware import RESOURCE_KWARGS


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
        f"for every role ({', '.join(ROLES)}) and method, e.g. \"{missing[0]}\": {{\"GET\": case_read(200)}}.")
    assert not stale, f"tests/access_matrix.py lists URL(s) that no longer exist: {stale}"


def test_resource_parameters_are_known_to_the_denial_log():
    """A URL keyword that names a resource must be resolvable to a case for the 'denied' audit events."""
    unknown = {}
    for name, pattern in ALL:
        extra = set(MATRIX.get(name, {}).get("kwargs", {}))
        for param in url_params(pattern) - extra:
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


@pytest.fixture
def world(cast, case_factory, good_slide) -> World:
    from webapp.slides.ingest import ingest_slide

    case = case_factory(assigned_to=cast.path1)
    other_case = case_factory(assigned_to=cast.path2)
    part = case.parts.get()
    slide = ingest_slide(good_slide, part=part, original_filename="good.svs", user=cast.admin, move=False)
    return World(cast=cast, case=case, part=part, slide=slide, other_case=other_case)


def _user(world: World, role: str):
    return {"anonymous": None, "admin": world.cast.admin, "assigned": world.cast.path1,
            "other": world.cast.path2, "evaluator": world.cast.evaluator, "outsider": world.cast.outsider}[role]


def _url(world: World, name: str) -> str:
    pattern = next(p for n, p in ALL if n == name)
    fixed = MATRIX[name].get("kwargs", {})
    kwargs = {param: fixed[param] if param in fixed else PARAMS[param](world) for param in url_params(pattern)}
    return reverse(name, kwargs=kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_access(name, world, client_for):
    if name not in MATRIX:
        pytest.fail(f"{name} is not in tests/access_matrix.py: add its expected status per role")
    url = _url(world, name)
    entry = MATRIX[name]
    assert "GET" in entry, f"{name}: give at least the GET outcome (405 if the view refuses GET)"
    wrong = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        if method not in entry:
            continue
        for role in ROLES:
            expected = entry[method][role]
            with transaction.atomic():
                response = getattr(client_for(_user(world, role)), method.lower())(url)
                transaction.set_rollback(True)
            status = response.status_code
            if status != expected:
                wrong.append(f"{method} as {role}: {status}, expected {expected}")
            elif role == "anonymous" and status == 302 and expected == 302 and name not in ("logout",):
                if "/login/" not in response["Location"]:
                    wrong.append(f"{method} as anonymous: redirected to {response['Location']}, not the login")
    assert not wrong, f"{name} ({url}):\n  " + "\n  ".join(wrong)
