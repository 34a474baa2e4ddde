"""Least privilege in the database: what the application role may do, and a check that the app uses it.

Two roles (docs/security.md, "The database roles"): the **owner** runs the migrations and owns every table;
the **application role** (`settings.DATABASE_APP_ROLE`, `pathalign_app`) is what the web app and the
workers connect as. It is no superuser and owns nothing, so it cannot `SET session_replication_role`,
`ALTER TABLE ... DISABLE TRIGGER`, drop or truncate anything: the triggers that keep the audit log
append-only and signed reports immutable hold against it. `grant_app_role` gives it rows only:

- SELECT, INSERT, UPDATE, DELETE on the app's tables; USAGE/SELECT on their sequences;
- the audit log INSERT and SELECT only (no UPDATE, DELETE, TRUNCATE even before the trigger);
- django_migrations SELECT only (the schema is the owner's business);
- never TRUNCATE, TRIGGER or REFERENCES.

It runs after every `migrate` made by the owner (post_migrate), so a new table is granted as it appears, and
pg_dump/pg_restore carry the grants (webapp/backup.py keeps privileges). `check_database_role` is a system
check: connected as a superuser or as an owner of the app's tables it warns in development and is an
error under production settings, unless `PATHALIGN_DB_ROLE=owner` says this process is the owner's on
purpose (migrate, restore).
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core import checks
from django.db import DatabaseError, connections
from psycopg import sql

log = logging.getLogger(__name__)

APPEND_ONLY_TABLES = ("audit_auditevent",)
READ_ONLY_TABLES = ("django_migrations",)


def _role_exists(cursor, role: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    return cursor.fetchone() is not None


def grant_app_role(using: str = "default") -> bool:
    """Grant the application role its rows (idempotent). False (and a warning) when it cannot: the
    connection is the application role itself, or that role does not exist on this server."""
    role = settings.DATABASE_APP_ROLE
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        if cursor.fetchone()[0] == role:
            return False  # e.g. a test flush re-sending post_migrate: nothing to grant to oneself
        if not _role_exists(cursor, role):
            log.warning("No database role %r: the app would run with the migrating role's rights "
                        "(docs/operations.md, 'The database roles').", role)
            return False
        who = sql.Identifier(role)
        statements = [
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who),
            sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(who),
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(who),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(who),
        ]
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
                       [list(APPEND_ONLY_TABLES + READ_ONLY_TABLES)])
        for (table,) in cursor.fetchall():
            rights = "SELECT, INSERT" if table in APPEND_ONLY_TABLES else "SELECT"
            statements.append(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(table), who))
            statements.append(sql.SQL("GRANT " + rights + " ON {} TO {}").format(sql.Identifier(table), who))
        for statement in statements:
            cursor.execute(statement.as_string(cursor.connection))
    return True


def grant_after_migrate(sender, using: str = "default", **kwargs) -> None:
    """post_migrate: Django sends it once per app with models, in order, after every migration ran;
    the grants follow the last one (every table exists by then)."""
    from django.apps import apps

    last = [config for config in apps.get_app_configs() if config.models_module is not None][-1]
    if sender is last:
        grant_app_role(using)


def role_problems(using: str = "default") -> list[str]:
    """Why the connection of `using` is not a least-privilege application role ([] when it is)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        user, superuser, bypass = cursor.fetchone()
        tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)"
            " AND pg_has_role(current_user, tableowner, 'USAGE') ORDER BY tablename", [tables])
        owned = [row[0] for row in cursor.fetchall()]
    problems = []
    if superuser:
        problems.append(f"the app connects as {user!r}, a PostgreSQL superuser: it can switch the triggers "
                        "that protect signed reports and the audit log off")
    if bypass:
        problems.append(f"the app's role {user!r} bypasses row-level security")
    if owned and not superuser:
        problems.append(f"the app's role {user!r} owns {len(owned)} of the app's tables ({', '.join(owned[:3])}"
                        f"{', ...' if len(owned) > 3 else ''}): an owner can disable their triggers or truncate them")
    return problems


def _role_check(databases) -> list[checks.CheckMessage]:
    if settings.DATABASE_ROLE == "owner":
        return []  # migrate/restore, run as the owner on purpose
    level = checks.Error if settings.DATABASE_ROLE_CHECK == "error" else checks.Warning
    hint = ("Connect as the application role (docs/operations.md, 'The database roles'); only migrations "
            "and restores run as the owner, with PATHALIGN_DB_ROLE=owner.")
    messages = []
    for alias in databases or ():
        try:
            problems = role_problems(alias)
        except DatabaseError as exc:
            messages.append(level(f"Could not check the database role of {alias!r}: {exc}", hint=hint,
                                  id="webapp.E102" if level is checks.Error else "webapp.W102"))
            continue
        for problem in problems:
            messages.append(level(problem[0].upper() + problem[1:] + ".", hint=hint,
                                  id="webapp.E101" if level is checks.Error else "webapp.W101"))
    return messages


@checks.register(checks.Tags.database)
def check_database_role(app_configs=None, databases=None, **kwargs) -> list[checks.CheckMessage]:
    """With the database checks (`check --database default`, `migrate`)."""
    return _role_check(databases)


@checks.register(checks.Tags.security, deploy=True)
def check_database_role_deploy(app_configs=None, databases=None, **kwargs) -> list[checks.CheckMessage]:
    """And with `check --deploy`, which every deployment runs (docs/operations.md); with `--database`
    the database check above says it already."""
    return [] if databases else _role_check(["default"])
