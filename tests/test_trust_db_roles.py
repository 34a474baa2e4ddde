"""Least privilege in the database: the app (and these tests) connect as the application role, which can
neither switch off nor get around the triggers that keep signed reports and the audit log unchanged.

Findings (issue 16): the app connected as the `postgres` superuser with trust authentication, so `SET
session_replication_role = replica`, `ALTER TABLE ... DISABLE TRIGGER`, DELETE/TRUNCATE on the audit log and
`TRUNCATE reports_report CASCADE` all succeeded; nothing warned about it.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from webapp import embedded_db

ROOT = Path(__file__).resolve().parent.parent

# Each must be refused with SQLSTATE 42501 (insufficient privilege: a missing right, "must be owner", or the
# signed-report trigger, which raises that code).
BYPASSES = {
    "replica mode (triggers off)": "SET session_replication_role = replica",
    "disable the report trigger": "ALTER TABLE reports_report DISABLE TRIGGER reports_report_guard",
    "disable the audit triggers": "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
    "drop the audit trigger": "DROP TRIGGER audit_event_no_update ON audit_auditevent",
    "replace the report guard": "CREATE OR REPLACE FUNCTION reports_guard_report() RETURNS trigger AS "
                                "$$ BEGIN RETURN NEW; END $$ LANGUAGE plpgsql",
    "truncate the audit log": "TRUNCATE audit_auditevent",
    "truncate reports": "TRUNCATE reports_report CASCADE",
    "delete from the audit log": "DELETE FROM audit_auditevent",
    "update the audit log": "UPDATE audit_auditevent SET action = 'x'",
    "update a signed report": "UPDATE reports_report SET reason = 'changed' WHERE status = 'signed'",
    "delete a signed report": "DELETE FROM reports_report WHERE status = 'signed'",
    "drop the audit table": "DROP TABLE audit_auditevent",
    "create a table in the schema": "CREATE TABLE public.shadow (id int)",
    "become the owner": "SET ROLE pathalign_owner",
    "make itself superuser": "ALTER ROLE pathalign_app SUPERUSER",
}

ATTEMPT = """
import json, sys, psycopg
outcome = {}
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    who = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    before = conn.execute("SELECT (SELECT count(*) FROM audit_auditevent), "
                          "(SELECT count(*) FROM reports_report WHERE status = 'signed')").fetchone()
    for name, statement in json.loads(sys.argv[2]).items():
        try:
            conn.execute(statement)
            outcome[name] = "ACCEPTED"
        except psycopg.Error as exc:
            outcome[name] = exc.sqlstate
    after = conn.execute("SELECT (SELECT count(*) FROM audit_auditevent), "
                         "(SELECT count(*) FROM reports_report WHERE status = 'signed'),"
                         "(SELECT count(*) FROM reports_report WHERE reason = 'changed')").fetchone()
print(json.dumps({"user": who[0], "superuser": who[1], "before": before, "after": after, "outcome": outcome}))
"""


def attempt_bypasses(url: str) -> dict:
    """Every bypass, each in its own statement on one autocommit connection (a child process: the real
    server, a separate session, nothing shared with Django's connection)."""
    import json

    done = subprocess.run([sys.executable, "-c", ATTEMPT, url, json.dumps(BYPASSES)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_all_refused(found: dict) -> None:
    assert found["user"] == "pathalign_app" and not found["superuser"]
    assert found["before"][0] > 0 and found["before"][1] > 0, "the world needs audit events and a signed report"
    accepted = {name: code for name, code in found["outcome"].items() if code != "42501"}
    assert not accepted, f"not refused as insufficient privilege: {accepted}"
    assert found["after"] == [found["before"][0], found["before"][1], 0]


def signed_world(cast, case_factory):
    from webapp.audit.log import record
    from webapp.reports.models import Report

    case = case_factory(assigned_to=cast.path1)
    Report.objects.create(case=case, status="signed", created_by=cast.path1, signed_by=cast.path1,
                          signed_at=timezone.now(), content_hash="0" * 64)
    record(None, "view_case", user=cast.path1, case=case)
    return case


def _embedded_only():
    if not settings.EMBEDDED_DATABASE:
        pytest.skip("DATABASE_URL names an external server: its roles are its administrator's")


@pytest.mark.django_db
def test_the_tests_and_the_app_connect_as_the_application_role():
    _embedded_only()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                       " WHERE rolname = current_user")
        assert cursor.fetchone() == ("pathalign_app", False, False, False)
        cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user")
        assert cursor.fetchone()[0] == 0
    from webapp import db_roles

    assert db_roles.role_problems() == []
    from django.core.checks import run_checks

    assert [m for m in run_checks(databases=["default"]) if m.id and m.id.startswith("webapp.")] == []


@pytest.mark.django_db(transaction=True)  # the other session must see the committed rows
def test_every_bypass_is_refused_as_the_application_role(cast, case_factory):
    _embedded_only()
    signed_world(cast, case_factory)
    assert_all_refused(attempt_bypasses(embedded_db.url(connection.settings_dict["NAME"], "pathalign_app")))


@pytest.mark.django_db(transaction=True)
def test_the_triggers_refuse_even_the_owner(cast, case_factory):
    _embedded_only()
    signed_world(cast, case_factory)
    with psycopg.connect(embedded_db.url(connection.settings_dict["NAME"], "pathalign_owner"),
                         autocommit=True) as owner:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            owner.execute("DELETE FROM audit_auditevent")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="signed out"):
            owner.execute("UPDATE reports_report SET reason = 'changed' WHERE status = 'signed'")


def test_the_embedded_server_asks_every_role_for_its_password():
    _embedded_only()
    bare = embedded_db.url("postgres", "pathalign_app").split("&passfile=")[0]
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(bare, connect_timeout=5).close()
    for role in embedded_db.ROLES:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(bare.replace("pathalign_app@", f"{role}@"), password="wrong-" + secrets.token_hex(4),
                            connect_timeout=5).close()
    path = embedded_db.passfile(embedded_db.pgdata())
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700


def _check(url: str, role: str, settings_module: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PATHALIGN_DB_ROLE"))}
    env.update(DJANGO_SETTINGS_MODULE=settings_module, DATABASE_URL=url, PATHALIGN_DB_ROLE=role,
               DJANGO_SECRET_KEY=secrets.token_urlsafe(64), DJANGO_ALLOWED_HOSTS="pathalign.example.org")
    return subprocess.run([sys.executable, "manage.py", "check", "--database", "default", "--deploy"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.django_db
def test_the_role_check_refuses_a_superuser_or_owner_in_production_and_warns_in_development():
    _embedded_only()
    name = connection.settings_dict["NAME"]
    for role, problem in (("postgres", "superuser"), ("pathalign_owner", "owns")):
        production = _check(embedded_db.url(name, role), "app", "webapp.settings_production")
        assert production.returncode != 0 and "webapp.E101" in production.stderr and problem in production.stderr
        development = _check(embedded_db.url(name, role), "app", "webapp.settings")
        assert "webapp.W101" in development.stderr and problem in development.stderr
    # The owner's own processes (migrate, restore) say so; the application role passes.
    assert _check(embedded_db.url(name, "pathalign_owner"), "owner", "webapp.settings_production").returncode == 0
    app = _check(embedded_db.url(name, "pathalign_app"), "app", "webapp.settings_production")
    assert app.returncode == 0 and "webapp." not in app.stderr, app.stderr
