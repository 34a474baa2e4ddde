"""The tests run as the application role, as the app does (docs/security.md, "The database roles").

On the embedded server pytest-django creates and migrates the test database as the owner (settings_test
names it), the owner's post_migrate grants the application role its rows (webapp/db_roles.py), and this
fixture then switches the connection to the application role for every test. Only the flush between
transactional tests (a TRUNCATE, which the application role may not do) and dropping the test database at
the end run as the owner again. The workers the tests start are the application role from the start.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    from django.conf import settings
    from django.db import connections
    from django.test import TransactionTestCase

    if not settings.EMBEDDED_DATABASE:  # DATABASE_URL: its role is whatever the URL says
        yield
        return
    connection = connections["default"]
    shared = connection.settings_dict  # the dict every thread's connection reads (live server included)
    owner = shared["USER"]
    with django_db_blocker.unblock():
        connection.close()
    shared["USER"] = settings.DATABASE_APP_ROLE
    flush = TransactionTestCase._fixture_teardown

    def flush_as_owner(self):
        connection = connections["default"]
        connection.close()
        connection.settings_dict = {**shared, "USER": owner}  # this thread's connection only
        try:
            flush(self)
        finally:
            connection.close()
            connection.settings_dict = shared

    TransactionTestCase._fixture_teardown = flush_as_owner
    try:
        yield
    finally:
        TransactionTestCase._fixture_teardown = flush
        with django_db_blocker.unblock():
            connection.close()
        shared["USER"] = owner
