"""Load benchmark: viewers panning slides, pathologists saving drafts and an occasional search, against
the production-style server (gunicorn, production settings, HTTP on loopback), with a reference in the same
run: one viewer alone.

    .venv/bin/python bench/load.py [--viewers 20] [--editors 4] [--seconds 30] [--workers 4] [--threads 4]

1. A bench database (`pathalign_bench_load` on the embedded server, or DATABASE_URL) is migrated and given
   pathologists, cases with synthetic slides (6144x4096, written once under var/bench/load/) and a draft
   report per case. `collectstatic` fills a bench STATIC_ROOT (production settings use hashed names).
2. gunicorn serves webapp.wsgi with webapp.settings_production (DEBUG off, secure cookies, CSP, HSTS;
   PATHALIGN_SSL_REDIRECT=0 because the bench speaks HTTP on 127.0.0.1), gthread workers.
3. Reference: one viewer alone for a few seconds. Then the load: --viewers threads each log in, open the
   viewer's Deep Zoom descriptor and fetch viewports of 12 neighbouring tiles (a pan or zoom in
   OpenSeadragon), with 0.2 s between viewports; --editors threads save their draft every 2 s (htmx POST with
   a version number); one thread runs a case search every 3 s.
Reports requests/s, p50/p95/p99 latency and errors per kind; writes var/bench/load.json.
Target (docs/operations.md): 20 viewers, tile p95 under 100 ms, no errors.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench" / "load"
sys.path.insert(0, str(ROOT))
from bench_server import bench_database, wait_until_serving  # noqa: E402 - bench/ is the script directory

PASSWORD = "bench-load-password-42"  # noqa: S105 - bench-only accounts in the bench database
SLIDE_SIZE = (4096, 6144)  # height, width


def bench_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PATHALIGN_DB_NAME", "pathalign_bench_load")
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", PATHALIGN_LOG_LEVEL="WARNING",
               PATHALIGN_SLIDE_STORE=str(BENCH_DIR / "store"), PATHALIGN_STATIC_ROOT=str(BENCH_DIR / "static"))
    return env


# --- data ------------------------------------------------------------------------------------------------
def prepare(slides: int, editors: int) -> dict:
    """Users, cases, slides and draft reports in the bench database (idempotent)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.update(bench_env())
    import django

    django.setup()
    import numpy as np
    from django.core.management import call_command

    from inference.synthetic.wsi import write_pyramidal_tiff
    from webapp.accounts.models import User
    from webapp.cases.models import Case, Part
    from webapp.reports import services
    from webapp.slides.ingest import ingest_slide

    call_command("migrate", verbosity=0, interactive=False)
    paths = []
    for index in range(max(editors, 4)):
        user, created = User.objects.get_or_create(username=f"bench_path{index}", defaults={"role": "pathologist"})
        if created or not user.check_password(PASSWORD):
            user.set_password(PASSWORD)
            user.save()
        paths.append(user)
    slide_ids, sections = [], []
    for index in range(max(slides, editors)):
        owner = paths[index % len(paths)]
        case, _ = Case.objects.get_or_create(accession_number=f"B26-{index + 1:05d}", defaults={
            "patient_pseudonym": f"BENCH-{index + 1}", "assigned_to": owner})
        part, _ = Part.objects.get_or_create(case=case, label="A", defaults={"site": "Colon", "procedure": "Biopsy"})
        if not part.slides.exists():
            source = BENCH_DIR / f"source-{index % slides}.svs"
            if not source.exists():
                rng = np.random.default_rng(index)
                height, width = SLIDE_SIZE
                image = np.full((height, width, 3), 240, np.uint8)
                yy, xx = np.ogrid[:height, :width]
                inside = ((yy - height / 2) / (0.42 * height)) ** 2 + ((xx - width / 2) / (0.45 * width)) ** 2 < 1
                image[inside] = (225, 160, 190)
                for y, x in rng.integers(0, min(height, width) - 12, size=(40000, 2)):
                    image[y:y + 8, x:x + 8] = (95, 55, 140)
                write_pyramidal_tiff(source, image, mpp=0.5)
            ingest_slide(source, part=part, original_filename=source.name, move=False)
        slide_ids.append((str(part.slides.first().pk), owner.username))
        report = services.start_report(case, owner)
        sections.append((report.pk, report.sections.first().pk, owner.username))
    return {"slides": slide_ids[:slides], "sections": sections[:editors], "users": [u.username for u in paths]}


# --- the server -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(port: int, workers: int, threads: int) -> subprocess.Popen:
    env = bench_env()
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings_production", DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
               DJANGO_ALLOWED_HOSTS="127.0.0.1", PATHALIGN_SSL_REDIRECT="0")
    # Production settings serve hashed static names from a manifest: collect them as a deploy would.
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                   check=True)
    log = open(BENCH_DIR / "gunicorn.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
         "--timeout", "60", "--graceful-timeout", "10", "--keep-alive", "30",
         # The access log without query strings (they could hold a searched accession number).
         "--access-logfile", "-", "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        return wait_until_serving(process, port, path="/login/", ok_statuses=(200,), timeout=90)
    except RuntimeError as exc:
        raise SystemExit(f"{exc}; see {BENCH_DIR / 'gunicorn.log'}") from None


# --- clients ----------------------------------------------------------------------------------------------
class Session:
    """One browser: a keep-alive connection and its cookies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: str | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in range(2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt:  # the server closed an idle keep-alive connection: reconnect once
                    raise
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response.status, data

    def csrf(self) -> str:
        return next(v for k, v in self.cookies.items() if "csrf" in k)

    def login(self, username: str) -> None:
        status, page = self.request("GET", "/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        status, _ = self.request("POST", "/login/", urlencode({"username": username, "password": PASSWORD,
                                                                "csrfmiddlewaretoken": token}),
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 302:
            raise SystemExit(f"login of {username} failed: HTTP {status}")


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, list[str]] = {}

    def add(self, kind: str, seconds: float, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.samples.setdefault(kind, []).append(seconds)
            if not ok:
                self.errors.setdefault(kind, []).append(detail)


def dzi_levels(session: Session, slide_id: str) -> list[tuple[int, int]]:
    status, xml = session.request("GET", f"/slides/{slide_id}/dzi/slide.dzi")
    if status != 200:
        raise SystemExit(f"the viewer's DZI descriptor answered {status}")
    width = int(re.search(rb'Width="(\d+)"', xml).group(1))
    height = int(re.search(rb'Height="(\d+)"', xml).group(1))
    tile = int(re.search(rb'TileSize="(\d+)"', xml).group(1))
    levels = []
    for level in range(math.ceil(math.log2(max(width, height))) + 1):
        scale = 2 ** (math.ceil(math.log2(max(width, height))) - level)
        w, h = math.ceil(width / scale), math.ceil(height / scale)
        levels.append((math.ceil(w / tile), math.ceil(h / tile)))
    return levels


def viewer(port: int, username: str, slide_id: str, stop: threading.Event, rec: Recorder, seed: int,
           ready: threading.Barrier) -> None:
    rng = random.Random(seed)
    session = Session(port)
    session.login(username)
    levels = dzi_levels(session, slide_id)
    ready.wait()
    top = len(levels) - 1
    while not stop.is_set():
        level = rng.choice([top, top - 1, top - 2, top - 3])  # the zoom levels a reader works at
        cols, rows = levels[level]
        col, row = rng.randrange(max(1, cols - 3)), rng.randrange(max(1, rows - 2))
        for dc in range(4):
            for dr in range(3):
                start = time.perf_counter()
                status, data = session.request("GET", f"/slides/{slide_id}/dzi/slide_files/{level}/"
                                                      f"{min(col + dc, cols - 1)}_{min(row + dr, rows - 1)}.jpeg")
                rec.add("tile", time.perf_counter() - start, status == 200 and data[:2] == b"\xff\xd8",
                        f"HTTP {status}")
        stop.wait(0.2)


def editor(port: int, username: str, report_id: int, section_id: int, stop: threading.Event, rec: Recorder,
           ready: threading.Barrier) -> None:
    session = Session(port)
    session.login(username)
    path = f"/reports/{report_id}/sections/{section_id}/save/"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-CSRFToken": session.csrf(),
               "HX-Request": "true"}
    # Learn the section's current version the way the page would after a conflict (409 carries it).
    status, data = session.request("POST", path, urlencode({"text": "sync", "version": -1}), headers)
    version, count = int(re.search(rb'data-version="(\d+)"', data).group(1)), 0
    ready.wait()
    while not stop.is_set():
        count += 1
        body = urlencode({"text": f"Sections show colonic mucosa. Edit {count} at {time.time():.3f}.",
                          "version": version})
        start = time.perf_counter()
        status, data = session.request("POST", path, body, headers)
        rec.add("save draft", time.perf_counter() - start, status == 200 and b"data-version" in data,
                f"HTTP {status}")
        match = re.search(rb'data-version="(\d+)"', data)
        version = int(match.group(1)) if match else version
        stop.wait(2.0)


def searcher(port: int, username: str, stop: threading.Event, rec: Recorder, ready: threading.Barrier) -> None:
    session = Session(port)
    session.login(username)
    ready.wait()
    while not stop.is_set():
        start = time.perf_counter()
        status, _ = session.request("GET", "/cases/?" + urlencode({"q": "B26"}))
        rec.add("search", time.perf_counter() - start, status == 200, f"HTTP {status}")
        stop.wait(3.0)


def run_phase(port: int, data: dict, viewers: int, editors: int, search: bool, seconds: float) -> tuple[Recorder, float]:
    rec, stop, threads = Recorder(), threading.Event(), []
    # Everyone logs in (PBKDF2: deliberately slow) and opens the descriptor before the clock starts.
    ready = threading.Barrier(viewers + min(editors, len(data["sections"])) + (1 if search else 0) + 1)
    for index in range(viewers):
        slide_id, owner = data["slides"][index % len(data["slides"])]
        threads.append(threading.Thread(target=viewer, args=(port, owner, slide_id, stop, rec, index, ready)))
    for report_id, section_id, owner in data["sections"][:editors]:
        threads.append(threading.Thread(target=editor, args=(port, owner, report_id, section_id, stop, rec,
                                                             ready)))
    if search:
        threads.append(threading.Thread(target=searcher, args=(port, data["users"][0], stop, rec, ready)))
    for thread in threads:
        thread.daemon = True
        thread.start()
    ready.wait(timeout=180)
    started = time.monotonic()
    time.sleep(seconds)
    stop.set()
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=30)
    return rec, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else math.nan


def report(title: str, rec: Recorder, elapsed: float) -> dict:
    print(f"\n{title} ({elapsed:.0f} s)")
    print(f"  {'kind':<12} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    result = {}
    for kind, samples in sorted(rec.samples.items()):
        ms = [s * 1000 for s in samples]
        errors = len(rec.errors.get(kind, []))
        row = {"requests": len(ms), "per_second": len(ms) / elapsed, "p50_ms": percentile(ms, 50),
               "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms),
               "errors": errors, "error_rate": errors / len(ms), "error_examples": rec.errors.get(kind, [])[:3]}
        result[kind] = row
        print(f"  {kind:<12} {row['requests']:>9} {row['per_second']:>8.1f} {row['p50_ms']:>8.1f} "
              f"{row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} {errors:>7}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--editors", type=int, default=4)
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--reference-seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2))
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.update(bench_env())  # before anything imports the settings, which read it once
    with bench_database(os.environ["PATHALIGN_DB_NAME"]):
        return run(args)


def run(args: argparse.Namespace) -> int:
    data = prepare(args.slides, args.editors)
    port = free_port()
    server = start_gunicorn(port, args.workers, args.threads)
    try:
        print(f"gunicorn: {args.workers} gthread workers x {args.threads} threads on 127.0.0.1:{port}, "
              f"{os.cpu_count()} CPUs; slides {SLIDE_SIZE[1]}x{SLIDE_SIZE[0]}")
        alone, alone_s = run_phase(port, data, 1, 0, False, args.reference_seconds)
        reference = report("Reference: one viewer alone", alone, alone_s)
        loaded, loaded_s = run_phase(port, data, args.viewers, args.editors, True, args.seconds)
        load = report(f"Load: {args.viewers} viewers, {args.editors} editors saving every 2 s, a search every 3 s",
                      loaded, loaded_s)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    tile = load.get("tile", {})
    passed = bool(tile) and tile["p95_ms"] < 100 and all(row["errors"] == 0 for row in load.values())
    print(f"\nTarget {args.viewers} viewers, tile p95 < 100 ms, no errors: {'MET' if passed else 'NOT MET'}")
    (BENCH_DIR / "load.json").write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(),
                                                     "reference": reference, "load": load, "target_met": passed},
                                                    indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
