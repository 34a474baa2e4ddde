"""Load benchmark: viewers panning slides, pathologists saving drafts and an occasional search, against
the production-style server (gunicorn, production settings, HTTP on loopback), with a reference in the same
run: one viewer alone.

    .venv/bin/python bench/load.py [--viewers 50] [--editors 4] [--seconds 30] [--slide-size 50000]
                                   [--workers 2] [--threads 4]

1. A bench database (`pathalign_bench_load` on the embedded server, or DATABASE_URL) is migrated and given
   pathologists, cases with large synthetic Aperio slides (--slide-size a side, 50,000 px by default, so a
   panning viewer mostly asks for tiles no cache holds) and a draft report per case. The slide file is the
   one bench/tiles.py writes (var/bench/synthetic-<size>x<size>-s0.svs, written once, ~4 min at 50,000 px
   on 2 cores); each case's Slide row points at a link of its own to it, so every slide has its own open
   handle and tile-cache entries. `collectstatic` fills a bench STATIC_ROOT (production settings use hashed
   names). Each slide's in-between Deep Zoom levels are rendered into its companion file, as the background
   job does after a slide is stored (webapp/slides/prerendered.py; kept for later runs); `--viewer-levels off`
   serves without them (every other zoom level decoded and encoded per tile), for comparison.
2. gunicorn serves webapp.wsgi with webapp.settings_production (DEBUG off, secure cookies, CSP, HSTS;
   PATHALIGN_SSL_REDIRECT=0 because the bench speaks HTTP on 127.0.0.1), gthread workers.
3. Reference: one viewer alone for a few seconds. Then the load: --viewers threads each log in, open the
   viewer's Deep Zoom descriptor and fetch viewports of 12 neighbouring tiles (a pan or zoom in
   OpenSeadragon), with 0.2 s between viewports; --editors threads save their draft every 2 s (htmx POST with
   a version number); one thread runs a case search every 3 s.
Reports requests/s, p50/p95/p99 latency and errors per kind, the share of tile requests that were the first
for their address (cold: no cache of ours could hold them), and the CPU used by the load generator itself,
by the gunicorn processes and by the bench database's PostgreSQL backends (they share the machine), per
second and per request; writes var/bench/load/load.json.
4. Before all that, in the same run (--probe-seconds, 0 skips it): CPU per tile request with a few viewers
   against Django's full request cycle for every request (webapp.wsgi:django_application) and against the
   deployed application with the tile fast path (webapp.wsgi:application, webapp/slides/fast_tiles.py).
   CPU per request is robust to other work on the machine; latency is not: the load average is printed
   with each figure.
Target (issue #18, docs/operations.md): 50 viewers, tile p95 under 100 ms, no errors, on 2 cores.
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
from bench_server import bench_database, migrate_as_owner, wait_until_serving  # noqa: E402 - bench/ is the script directory

PASSWORD = "bench-load-password-42"  # noqa: S105 - bench-only accounts in the bench database
TILES_BENCH_DIR = ROOT / "var" / "bench"


def bench_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PATHALIGN_DB_NAME", "pathalign_bench_load")
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", PATHALIGN_LOG_LEVEL="WARNING",
               PATHALIGN_SLIDE_STORE=str(BENCH_DIR / "store"), PATHALIGN_STATIC_ROOT=str(BENCH_DIR / "static"),
               PATHALIGN_VIEWER_LEVELS=str(BENCH_DIR / "viewer-levels"))
    return env


# --- data ------------------------------------------------------------------------------------------------
def large_slide(size: int) -> Path:
    """The large synthetic slide bench/tiles.py uses, written once if missing."""
    path = TILES_BENCH_DIR / f"synthetic-{size}x{size}-s0.svs"
    if not path.exists():
        from inference.synthetic.wsi import write_large_synthetic_slide

        TILES_BENCH_DIR.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.svs")
        print(f"writing {path} (once; cached for later runs)")
        write_large_synthetic_slide(partial, size, size, 0, mpp=0.25)
        os.replace(partial, path)
    return path


def prepare(slides: int, editors: int, slide_size: int) -> dict:
    """Users, cases, slides and draft reports in the bench database (idempotent)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.update(bench_env())
    import django

    django.setup()
    from django.conf import settings

    from webapp.accounts.models import User
    from webapp.cases.models import Case, Part
    from webapp.reports import services
    from webapp.slides.ingest import inspect_slide
    from webapp.slides.models import Slide
    from webapp.slides.prerender import prerender_slide

    migrate_as_owner()
    paths = []
    for index in range(max(editors, 4)):
        user, created = User.objects.get_or_create(username=f"bench_path{index}", defaults={"role": "pathologist"})
        if created or not user.check_password(PASSWORD):
            user.set_password(PASSWORD)
            user.save()
        paths.append(user)
    source = large_slide(slide_size)
    store = Path(settings.SLIDE_STORE_DIR)
    slide_ids, sections = [], []
    for index in range(max(slides, editors)):
        owner = paths[index % len(paths)]
        case, _ = Case.objects.get_or_create(accession_number=f"B26-{index + 1:05d}", defaults={
            "patient_pseudonym": f"BENCH-{index + 1}", "assigned_to": owner})
        part, _ = Part.objects.get_or_create(case=case, label="A", defaults={"site": "Colon", "procedure": "Biopsy"})
        link = store / "bench-load" / f"case{index + 1}-{source.name}"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source.resolve())  # by reference: no copy of a large file per case
        slide = part.slides.filter(file_path=str(link.relative_to(store))).first()
        if slide is None:
            part.slides.all().delete()  # slides of an earlier bench layout
            metadata, handle = inspect_slide(link)
            handle.close()
            slide = Slide.objects.create(part=part, file_path=str(link.relative_to(store)),
                                         original_filename=source.name, **metadata.__dict__)
        slide_ids.append((str(slide.pk), owner.username))
        started = time.perf_counter()
        result = prerender_slide(slide)  # what the job queued when a slide is stored does
        print(f"viewer levels of slide {index + 1}: {result['message']} ({time.perf_counter() - started:.1f} s)")
        report = services.start_report(case, owner)
        sections.append((report.pk, report.sections.first().pk, owner.username))
    return {"slides": slide_ids[:slides], "sections": sections[:editors], "users": [u.username for u in paths]}


# --- the server -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FAST_APP = "webapp.wsgi:application"  # as deployed: the tile fast path in front of Django
DJANGO_APP = "webapp.wsgi:django_application"  # Django's full request cycle for every request


VIEWER_LEVELS = {"on": BENCH_DIR / "viewer-levels", "off": BENCH_DIR / "viewer-levels-off"}  # off: empty


def server_env(viewer_levels: str = "on") -> dict:
    env = bench_env()
    env.update(PATHALIGN_VIEWER_LEVELS=str(VIEWER_LEVELS[viewer_levels]))
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings_production", DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
               DJANGO_ALLOWED_HOSTS="127.0.0.1", PATHALIGN_SSL_REDIRECT="0")
    return env


def collect_static() -> None:
    """Production settings serve hashed static names from a manifest: collect them as a deploy would."""
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT,
                   env=server_env(), check=True)


def start_gunicorn(port: int, workers: int, threads: int, access_log: bool = True,
                   app: str = FAST_APP, viewer_levels: str = "on") -> subprocess.Popen:
    env = server_env(viewer_levels)
    log = open(BENCH_DIR / "gunicorn.log", "ab")
    # The access log without query strings (they could hold a searched accession number), as deployed
    # (docs/operations.md); --no-access-log measures what its lines cost.
    access = (["--access-logfile", "-", "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms']
              if access_log else [])
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
         "--timeout", "60", "--graceful-timeout", "10", "--keep-alive", "30", *access],
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
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

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
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.last_headers = response.headers
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
        self.addresses: set[str] = set()  # tile URLs asked for so far (the server's caches start empty)
        self.first_requests = 0
        self.fast = 0  # tile responses of the fast path (its Server-Timing metric)

    def address(self, url: str) -> None:
        with self.lock:
            if url not in self.addresses:
                self.addresses.add(url)
                self.first_requests += 1

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
                url = f"/slides/{slide_id}/dzi/slide_files/{level}/{min(col + dc, cols - 1)}_{min(row + dr, rows - 1)}.jpeg"
                rec.address(url)
                start = time.perf_counter()
                status, data = session.request("GET", url)
                rec.add("tile", time.perf_counter() - start, status == 200 and data[:2] == b"\xff\xd8",
                        f"HTTP {status}")
                if "fastpath" in (session.last_headers.get("Server-Timing") or ""):
                    with rec.lock:
                        rec.fast += 1
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


def _ticks(pid: int) -> int:
    """utime + stime of a process in clock ticks (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def server_pids(master: int) -> list[int]:
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def database_pids() -> list[int]:
    """The PostgreSQL backends serving the bench database (other than this process's own connection)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return [row[0] for row in cursor.fetchall()]


class CpuMeter:
    """CPU seconds used by this process (the load generator), by the gunicorn processes and by the bench
    database's PostgreSQL backends over a phase (a backend that starts during the phase counts whole; one on
    another machine, with DATABASE_URL, is not seen and counts 0)."""

    def __init__(self, master: int) -> None:
        self.pids = server_pids(master)
        self.hz = os.sysconf("SC_CLK_TCK")
        self.db_start = {pid: _ticks(pid) for pid in database_pids()}
        self.start = (time.process_time(), sum(_ticks(pid) for pid in self.pids))

    def stop(self, elapsed: float) -> dict:
        own = time.process_time() - self.start[0]
        server = (sum(_ticks(pid) for pid in self.pids) - self.start[1]) / self.hz
        database = sum(_ticks(pid) - self.db_start.get(pid, 0) for pid in database_pids()) / self.hz
        return {"load_generator_cpu_s": own, "load_generator_cores": own / elapsed,
                "server_cpu_s": server, "server_cores": server / elapsed,
                "database_cpu_s": database, "database_cores": database / elapsed}


def guarded(target, ready: threading.Barrier, failures: list[str]):
    """Run a client; if it fails, say why and break the start barrier at once (no silent 180 s wait)."""
    def run(*args) -> None:
        try:
            target(*args)
        except Exception as exc:  # noqa: BLE001 - reported by run_phase
            failures.append(f"{target.__name__}: {exc!r}")
            ready.abort()
    return run


def run_phase(port: int, data: dict, viewers: int, editors: int, search: bool, seconds: float,
              master: int | None = None) -> tuple[Recorder, float, dict]:
    rec, stop, threads, failures = Recorder(), threading.Event(), [], []
    # Everyone logs in (PBKDF2: deliberately slow) and opens the descriptor before the clock starts.
    ready = threading.Barrier(viewers + min(editors, len(data["sections"])) + (1 if search else 0) + 1)
    for index in range(viewers):
        slide_id, owner = data["slides"][index % len(data["slides"])]
        threads.append(threading.Thread(target=guarded(viewer, ready, failures),
                                        args=(port, owner, slide_id, stop, rec, index, ready)))
    for report_id, section_id, owner in data["sections"][:editors]:
        threads.append(threading.Thread(target=guarded(editor, ready, failures),
                                        args=(port, owner, report_id, section_id, stop, rec, ready)))
    if search:
        threads.append(threading.Thread(target=guarded(searcher, ready, failures),
                                        args=(port, data["users"][0], stop, rec, ready)))
    for thread in threads:
        thread.daemon = True
        thread.start()
    try:
        ready.wait(timeout=180)
    except threading.BrokenBarrierError:
        stop.set()
        raise SystemExit(f"a client failed before the start: {failures[:3] or 'timed out'}") from None
    rec.addresses.clear()  # descriptor fetches and logins are not part of the measure
    rec.first_requests = rec.fast = 0
    meter = CpuMeter(master) if master else None
    started = time.monotonic()
    time.sleep(seconds)
    stop.set()
    elapsed = time.monotonic() - started
    cpu = meter.stop(elapsed) if meter else {}
    for thread in threads:
        thread.join(timeout=30)
    for failure in failures:  # a client that died mid-run (a timeout, a broken page) is an error too
        rec.add("client died", 0.0, False, failure)
    return rec, elapsed, cpu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))] if ordered else math.nan


def report(title: str, rec: Recorder, elapsed: float, cpu: dict | None = None) -> dict:
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
    tiles = len(rec.samples.get("tile", []))
    if tiles:
        result["tile"]["cold_share"] = rec.first_requests / tiles
        result["tile"]["fast_path_share"] = rec.fast / tiles
        print(f"  tile requests that were the first for their address (cold): {rec.first_requests / tiles:.0%}; "
              f"answered by the tile fast path: {rec.fast / tiles:.0%}")
    if cpu:
        requests = sum(len(samples) for samples in rec.samples.values())
        result["cpu"] = {**cpu, "requests": requests, "load_average": os.getloadavg()[0], **{
            f"{name}_ms_per_request": cpu[f"{name}_cpu_s"] * 1000 / max(1, requests)
            for name in ("load_generator", "server", "database")}}
        per = result["cpu"]
        print(f"  CPU: load generator {cpu['load_generator_cpu_s']:.1f} s ({cpu['load_generator_cores']:.2f} cores), "
              f"gunicorn {cpu['server_cpu_s']:.1f} s ({cpu['server_cores']:.2f} cores), PostgreSQL "
              f"{cpu['database_cpu_s']:.1f} s ({cpu['database_cores']:.2f} cores), of {os.cpu_count()} CPUs")
        print(f"  CPU per request ({requests} requests): gunicorn {per['server_ms_per_request']:.2f} ms, "
              f"PostgreSQL {per['database_ms_per_request']:.2f} ms, load generator "
              f"{per['load_generator_ms_per_request']:.2f} ms; load average now {per['load_average']:.2f}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--editors", type=int, default=4)
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--slide-size", type=int, default=50_000, help="slide width and height in pixels")
    parser.add_argument("--reference-seconds", type=float, default=8)
    parser.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2))
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="gunicorn without its access log (each line costs CPU: see docs/operations.md)")
    parser.add_argument("--app", choices=("fast", "django"), default="fast",
                        help=f"what serves the load: {FAST_APP} (as deployed) or {DJANGO_APP}")
    parser.add_argument("--viewer-levels", choices=("on", "off"), default="on",
                        help="serve the in-between zoom levels from their rendered companions (as deployed) or not")
    parser.add_argument("--probe-seconds", type=float, default=10,
                        help="CPU per tile request against each application first, this long each (0: skip)")
    parser.add_argument("--probe-viewers", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ.update(bench_env())  # before anything imports the settings, which read it once
    with bench_database(os.environ["PATHALIGN_DB_NAME"]):
        return run(args)


def probe(args: argparse.Namespace, data: dict) -> dict:
    """CPU per tile request with --probe-viewers viewers, against Django's full cycle and the fast path."""
    results = {}
    for name, app in (("django", DJANGO_APP), ("fast", FAST_APP)):
        port = free_port()
        server = start_gunicorn(port, args.workers, args.threads, args.access_log, app, args.viewer_levels)
        try:
            rec, elapsed, cpu = run_phase(port, data, args.probe_viewers, 0, False, args.probe_seconds, server.pid)
            results[name] = report(f"CPU probe: {args.probe_viewers} viewers, {app}", rec, elapsed, cpu)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print("\nCPU per tile request, same run, same slides (ms; robust to other work on the machine):")
    print(f"  {'application':<34} {'gunicorn':>9} {'PostgreSQL':>11} {'both':>7} {'tiles/s':>8} {'tile p95':>9} {'load avg':>9}")
    for name, app in (("django", DJANGO_APP), ("fast", FAST_APP)):
        cpu, tile = results[name]["cpu"], results[name]["tile"]
        print(f"  {app:<34} {cpu['server_ms_per_request']:>9.2f} {cpu['database_ms_per_request']:>11.2f} "
              f"{cpu['server_ms_per_request'] + cpu['database_ms_per_request']:>7.2f} {tile['per_second']:>8.0f} "
              f"{tile['p95_ms']:>9.1f} {cpu['load_average']:>9.2f}")
    return results


def run(args: argparse.Namespace) -> int:
    data = prepare(args.slides, args.editors, args.slide_size)
    collect_static()
    (BENCH_DIR / "gunicorn.log").write_bytes(b"")
    app = FAST_APP if args.app == "fast" else DJANGO_APP
    print(f"gunicorn: {args.workers} gthread workers x {args.threads} threads on 127.0.0.1, access log "
          f"{'on' if args.access_log else 'off'}, viewer levels {args.viewer_levels}, {os.cpu_count()} CPUs; "
          f"{len(data['slides'])} slides "
          f"{args.slide_size}x{args.slide_size}; load average {os.getloadavg()[0]:.2f}")
    probed = probe(args, data) if args.probe_seconds > 0 else {}
    port = free_port()
    server = start_gunicorn(port, args.workers, args.threads, args.access_log, app, args.viewer_levels)
    try:
        load_before = os.getloadavg()[0]
        print(f"\nThe load, served by {app}; load average {load_before:.2f}")
        alone, alone_s, alone_cpu = run_phase(port, data, 1, 0, False, args.reference_seconds, server.pid)
        reference = report("Reference: one viewer alone", alone, alone_s, alone_cpu)
        loaded, loaded_s, loaded_cpu = run_phase(port, data, args.viewers, args.editors, True, args.seconds,
                                                 server.pid)
        load = report(f"Load: {args.viewers} viewers, {args.editors} editors saving every 2 s, a search every 3 s",
                      loaded, loaded_s, loaded_cpu)
        print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (1 min)")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    tile = load.get("tile", {})
    passed = bool(tile) and tile["p95_ms"] < 100 and all(row.get("errors", 0) == 0 for row in load.values())
    print(f"\nTarget {args.viewers} viewers, tile p95 < 100 ms, no errors: {'MET' if passed else 'NOT MET'}")
    (BENCH_DIR / "load.json").write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(), "probe": probed,
                                                     "reference": reference, "load": load, "target_met": passed},
                                                    indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
