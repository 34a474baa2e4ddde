"""Reporting benchmark: AI draft latency per method, and the sign-out round trip over HTTP, each against a
reference measured in the same run.

    .venv/bin/python bench/reporting.py [--bundle DIR] [--runs 5] [--patches 1000] [--signs 10]

1. A bench database (`pathalign_bench_reporting` on the embedded server, or DATABASE_URL) is migrated; the
   model is --bundle (a real bundle directory) or, by default, a tiny untrained one built under var/bench/
   (one Q-Former layer, random 32-d patch encoder: the real code paths at a fraction of the cost; an
   untrained decoder never stops early, so its drafts always run to the token limit, the worst case).
2. Drafts: `webapp.reports.drafting.draft_report` (what the gpu worker runs: features from the cache ->
   Q-Former -> text, evidence, 3 label sets of zero-shot classification, database writes) per method, on
   one part of --patches patch features, --runs times. Reference: `model.embed(features)` alone, the least
   any method must do. Retrieval ranks the text embeddings of the signed reports of step 3.
3. Sign-out round trip: gunicorn serves the app (DEBUG off, production password hashing, i.e. Django's
   PBKDF2); a session posts the password to /reports/<id>/sign/ for --signs fresh drafts (check_password,
   locking, hash, case status, audit). Reference: GET of the case page (a plain page render) on the same
   connection, and a sign-out with a wrong password (the check alone, refused).
"""
from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
sys.path.insert(0, str(ROOT))
from bench_server import bench_database, migrate_as_owner, wait_until_serving  # noqa: E402 - bench/ is the script directory

PASSWORD = "bench-password-1234"  # noqa: S105 - a bench-only account in the bench database


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(label: str, seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    result = {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "mean_ms": statistics.fmean(ms)}
    print(f"  {label:<44} n={result['n']:<4} p50 {result['p50_ms']:9.1f} ms   p95 {result['p95_ms']:9.1f} ms")
    return result


def bench_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PATHALIGN_DB_NAME", "pathalign_bench_reporting")
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", DJANGO_DEBUG="0", PATHALIGN_LOG_LEVEL="WARNING",
               PATHALIGN_AXES_ENABLED="0", PATHALIGN_SLIDE_STORE=str(BENCH_DIR / "store"))
    return env


def tiny_bundle() -> Path:
    from tests.model_fixtures import build_tiny_bundle

    return build_tiny_bundle(BENCH_DIR / "tiny-report-bundle", name="bench-tiny")


def setup(bundle_dir: Path):
    os.environ.update(bench_env())
    migrate_as_owner()  # the app role this process runs as may not create tables
    import django

    django.setup()

    from webapp.accounts.models import User
    from webapp.analysis import pipeline
    from webapp.analysis.models import ModelBundle
    from webapp.reports.labelsets import ensure_default_label_sets

    ensure_default_label_sets()
    bundle = ModelBundle.objects.filter(path=str(bundle_dir.resolve())).first()
    bundle = pipeline.activate_bundle(bundle) if bundle else pipeline.register_bundle(bundle_dir, activate=True)
    user = User.objects.filter(username="bench_path").first()
    if user is None:
        user = User.objects.create_user("bench_path", password=PASSWORD, role="pathologist", first_name="Bench")
    return bundle, user


def new_case(user, prefix: str):
    """A case with one part and one file-less slide whose features are written to the cache."""
    from webapp.cases.models import Case, Part
    from webapp.slides.models import Slide

    number = Case.objects.filter(accession_number__startswith=prefix).count() + 1
    while Case.objects.filter(accession_number=f"{prefix}26-{number:05d}").exists():
        number += 1
    case = Case.objects.create(accession_number=f"{prefix}26-{number:05d}", patient_pseudonym=f"BENCH-{number}",
                               assigned_to=user, status="assigned")
    part = Part.objects.create(case=case, label="A", site="Colon, sigmoid", procedure="Biopsy")
    slide = Slide.objects.create(part=part, file_path=f"bench/{case.accession_number}.svs", width=40000,
                                 height=30000)
    return case, slide


def prime(slide, bundle, patches: int, seed: int) -> None:
    from tests.model_fixtures import prime_features

    dim = int(bundle.dims.get("feature", 32))
    if dim != 32:  # a real bundle: random features of its own width (the cost is the same)
        import numpy as np
        import torch
        from safetensors.torch import save_file

        from webapp.analysis.runtime import features_path

        path = features_path(slide, bundle)
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        save_file({"features": torch.from_numpy(rng.normal(size=(patches, dim)).astype(np.float32)).half(),
                   "coords": torch.zeros(patches, 2, dtype=torch.int32)}, str(path), metadata={"patch_size": "256"})
        return
    prime_features(slide, bundle, n=patches, seed=seed)


def bench_drafts(bundle, user, runs: int, patches: int) -> dict:
    from webapp.analysis import runtime
    from webapp.reports import services
    from webapp.reports.drafting import draft_report, embed_report, method_options

    model = runtime.get_model(bundle)
    # Signed-out reports to retrieve from (and to warm up the model).
    texts = ["Tubular adenoma with low-grade dysplasia.", "Invasive adenocarcinoma, moderately differentiated.",
             "Benign colonic mucosa, no diagnostic abnormality.", "Hyperplastic polyp."]
    for index, text in enumerate(texts):
        case, slide = new_case(user, "R")
        prime(slide, bundle, patches, seed=100 + index)
        report = services.start_report(case, user)
        section = report.sections.get()
        services.save_section(section, text, section.version, user)
        embed_report(services.sign(report, user).report)
    case, slide = new_case(user, "D")
    prime(slide, bundle, patches, seed=1)
    report = services.start_report(case, user)
    features = runtime.slide_features(slide, bundle).features
    model.embed(features)  # warm-up
    results = {}
    print(f"\nAI drafts: one part, {patches} patches, {runs} runs each (bundle {bundle})")
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        model.embed(runtime.slide_features(slide, bundle).features)
        timings.append(time.perf_counter() - started)
    results["reference_embed_only"] = summary("reference: features from cache + embed", timings)
    for option in method_options():
        if not option.available:
            print(f"  {option.value:<44} n/a: {option.reason}")
            results[option.value] = {"available": False, "reason": option.reason}
            continue
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            draft_report(report, option.value, user, None, lambda fraction, message: None)
            timings.append(time.perf_counter() - started)
        results[option.value] = summary(f"draft_report ({option.value})", timings)
    return results


def start_server(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "webapp.wsgi:application", "-b", f"127.0.0.1:{port}", "-w", "1",
         "-k", "gthread", "--threads", "2", "--keep-alive", "30", "--log-level", "warning"],
        cwd=ROOT, env=bench_env(),
    )
    return wait_until_serving(process, port)


class Session:
    """A logged-in browser-like session over one keep-alive connection (cookies and CSRF by hand)."""

    def __init__(self, port: int, username: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.cookies: dict[str, str] = {}
        page = self.request("GET", "/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        self.request("POST", "/login/", {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token})
        if "sessionid" not in self.cookies:
            raise RuntimeError("login failed")

    def request(self, method: str, path: str, form: dict | None = None) -> str:
        from urllib.parse import urlencode

        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode(form)
            headers.update({"Content-Type": "application/x-www-form-urlencoded",
                            "X-CSRFToken": self.cookies.get("csrftoken", "")})
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        self.status = response.status
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";", 1)[0]
        return response.read().decode(errors="replace")


def bench_signout(user, signs: int, port: int) -> dict:
    from webapp.reports import services

    reports = []
    for _ in range(signs):
        case, _ = new_case(user, "S")
        report = services.start_report(case, user)
        section = report.sections.get()
        services.save_section(section, "Tubular adenoma with low-grade dysplasia.", section.version, user)
        reports.append(report)
    server = start_server(port)
    try:
        session = Session(port, user.username)
        results = {}
        print(f"\nSign-out round trip over HTTP (gunicorn, DEBUG off), {signs} reports")
        page, wrong, sign = [], [], []
        for report in reports:
            started = time.perf_counter()
            session.request("GET", f"/cases/{report.case_id}/")
            page.append(time.perf_counter() - started)
            assert session.status == 200, session.status
            started = time.perf_counter()
            session.request("POST", f"/reports/{report.pk}/sign/", {"password": "wrong-password"})
            wrong.append(time.perf_counter() - started)
            assert session.status == 303, session.status  # back to the workspace with the reason
            started = time.perf_counter()
            session.request("POST", f"/reports/{report.pk}/sign/", {"password": PASSWORD})
            sign.append(time.perf_counter() - started)
            assert session.status == 302, session.status
        results["reference_case_page"] = summary("reference: GET case page", page)
        results["sign_refused_wrong_password"] = summary("POST sign, wrong password (303 to the workspace)", wrong)
        results["sign_out"] = summary("POST sign, right password (302)", sign)
        from webapp.reports.models import Report

        assert all(Report.objects.get(pk=r.pk).status == "signed" for r in reports)
        return results
    finally:
        server.terminate()
        server.wait(timeout=20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="a real model bundle directory (default: a tiny one)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--patches", type=int, default=1000)
    parser.add_argument("--signs", type=int, default=10)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    os.environ.update(bench_env())  # before anything imports the settings, which read it once
    with bench_database(os.environ["PATHALIGN_DB_NAME"]):
        return run(args)


def run(args: argparse.Namespace) -> int:
    bundle_dir = args.bundle or tiny_bundle()
    bundle, user = setup(bundle_dir)
    import torch

    print(f"PathAlign reporting bench · {platform.processor() or platform.machine()} · torch threads "
          f"{torch.get_num_threads()} · bundle {bundle_dir}")
    from webapp.analysis.runtime import generation_config

    print(f"generation: {generation_config()}")
    bench_drafts(bundle, user, args.runs, args.patches)
    bench_signout(user, args.signs, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
