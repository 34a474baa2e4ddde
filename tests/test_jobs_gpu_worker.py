"""The gpu worker exactly as `make run` starts it (webapp.launcher.worker_command("gpu"): `--pool solo`, not
daemonic): it reads patches in processes; the job runner enforces time limits itself (Celery's work only
in prefork); several queued slides are analysed in one pass with the next slide read while one is encoded,
each slide's job keeping its own progress and result (issue #14, the GPU path in the web app)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from django.db import transaction

import tests.worker_hooks.time_limited  # noqa: F401 - registers the "test_limited" kind here too
from tests import test_analysis_support as support
from tests.conftest import ROOT, _worker_env, stop_worker, wait_for
from webapp import launcher
from webapp.analysis import pipeline
from webapp.analysis.models import QueryEmbedding, SlideEmbedding
from webapp.jobs import runner
from webapp.jobs.models import Job, JobState

small_slides, tiny_bundle_dir, live_bundle = support.small_slides, support.tiny_bundle_dir, support.live_bundle
HOOK = "tests.worker_hooks.time_limited"
FAST = {"PATHALIGN_JOB_PULSE_SECONDS": "1", "PATHALIGN_STALE_JOB_SECONDS": "6", "PATHALIGN_SWEEP_SECONDS": "2",
        "PATHALIGN_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
LIMIT_MESSAGE = "The job was stopped after its time limit of 2 s."


def start_gpu_worker(name: str, extra_env: dict | None = None, include: str = "") -> subprocess.Popen:
    """The launcher's own gpu worker command line, on the test database and broker."""
    command = launcher.worker_command("gpu")
    assert "--pool=solo" in command
    command[command.index("-n") + 1] = f"{name}@%h"
    env = {**_worker_env(), **FAST, **(extra_env or {})}
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"pathalign-worker-{name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen([*command, *(["--include", include] if include else [])], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _final(*ids: int) -> list[Job] | None:
    jobs = list(Job.objects.filter(pk__in=ids).order_by("pk"))
    return jobs if all(j.state in (JobState.SUCCEEDED, JobState.FAILED) for j in jobs) else None


def test_the_launcher_runs_the_gpu_worker_solo_and_the_default_worker_prefork():
    gpu, default = launcher.worker_command("gpu"), launcher.worker_command("default")
    assert "--pool=solo" in gpu and not any(a.startswith("--concurrency") for a in gpu)
    assert "--pool=prefork" in default and "--concurrency=2" in default
    assert gpu[gpu.index("-Q") + 1] == "gpu" and default[default.index("-Q") + 1] == "default"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_job_over_its_time_limit_fails_with_the_message_and_the_worker_takes_the_next_job():
    with transaction.atomic():
        over = runner.create_job("test_limited", params={"seconds": 30, "name": "over"})
        after = runner.create_job("test_limited", params={"seconds": 0.5, "name": "after"})
    worker = start_gpu_worker("gpu-limit", include=HOOK)
    try:
        over_job, after_job = wait_for(lambda: _final(over.pk, after.pk), timeout=90, message="both jobs")
        assert worker.poll() is None  # the same worker goes on
    finally:
        stop_worker(worker)
    assert over_job.state == JobState.FAILED and over_job.error == LIMIT_MESSAGE
    assert over_job.attempts == 1  # never retried: it would overrun again
    assert 2 <= (over_job.finished_at - over_job.started_at).total_seconds() < 8  # stopped at a report, not at 30 s
    assert any(e["event"] == "failed" and "time limit of 2 s" in e["text"] for e in over_job.history)
    assert after_job.state == JobState.SUCCEEDED, after_job.error
    assert after_job.worker == over_job.worker  # the next job ran in the same worker process


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_job_silent_past_its_time_limit_is_failed_by_the_watchdog_and_its_worker_ends():
    with transaction.atomic():
        hung = runner.create_job("test_limited", params={"seconds": 60, "silent": True})
    worker = start_gpu_worker("gpu-hang", include=HOOK)
    try:
        (job,) = wait_for(lambda: _final(hung.pk), timeout=90, message="the watchdog")
        assert worker.wait(timeout=20) != 0  # the worker ended itself (make run / systemd start it again)
    finally:
        stop_worker(worker)
    assert job.state == JobState.FAILED and job.error.startswith(LIMIT_MESSAGE)
    assert "stopped reporting progress" in job.error
    # 2 s limit + 2 s grace, seen by a pulse every second; far less than the 60 s the job would have taken.
    assert (job.finished_at - job.started_at).total_seconds() < 15
    # A fresh worker does not run it again from a stray message, and takes the next job.
    with transaction.atomic():
        following = runner.create_job("test_limited", params={"seconds": 0.5})
    fresh = start_gpu_worker("gpu-fresh", include=HOOK)
    try:
        (done,) = wait_for(lambda: _final(following.pk), timeout=90, message="the next job")
    finally:
        stop_worker(fresh)
    assert done.state == JobState.SUCCEEDED and Job.objects.get(pk=hung.pk).attempts == 1


@pytest.mark.worker
def test_a_cases_three_slides_are_analysed_in_one_pass_read_ahead_in_processes_each_with_its_own_job(
    live_bundle, cast, case_factory, small_slides, tmp_path
):
    case = case_factory()
    part = case.parts.get()
    with transaction.atomic():  # three slides stored, their analyses queued (at the commit) before the worker starts
        slides = [support.ingest(path, part) for path in small_slides]
    jobs = [pipeline.latest_job(slide) for slide in slides]
    assert all(job and job.state == JobState.QUEUED for job in jobs)
    env = {"PATHALIGN_VAR_DIR": str(tmp_path / "var"), "PATHALIGN_PATCH_READERS": "processes"}
    worker = start_gpu_worker("gpu-pass", extra_env=env)
    try:
        done = wait_for(lambda: _final(*(j.pk for j in jobs)), timeout=240, message="the three analyses")
    finally:
        stop_worker(worker)
    for job in done:
        assert job.state == JobState.SUCCEEDED, job.error
        assert job.progress == 1.0 and job.message == "Done" and job.attempts == 1
        row = SlideEmbedding.objects.get(slide_id=job.slide_id, bundle=live_bundle)
        assert job.result["patches"] == row.n_patches > 0 and row.job_id == job.pk  # its own slide's result
        assert QueryEmbedding.objects.filter(slide_id=job.slide_id).count() == 32
        # Read in spawned processes: the solo worker is not daemonic (prefork children would get threads).
        assert job.result["readers"] == "processes"
    lead, second, third = sorted(done, key=lambda j: j.result["position"])
    t0 = lead.result["read_started"]
    for job in (lead, second, third):  # shown with -s: the pass as it ran
        r = job.result
        print(f"slide {r['position'] + 1}: {r['patches']} patches, read from +{r['read_started'] - t0:.2f} s, encoded by "
              f"+{r['features_at'] - t0:.2f} s, saved +{r['saved_at'] - t0:.2f} s; read {r['read_seconds']} s, "
              f"waited {r['read_wait_seconds']} s, encoded {r['encode_seconds']} s ({r['readers']})")
    assert lead.result["batch"] == second.result["batch"] == third.result["batch"] == [lead.pk, second.pk, third.pk]
    assert lead.worker == second.worker == third.worker
    assert [e["event"] for e in second.history] == ["started"] and f"job #{lead.pk}" in second.history[0]["text"]
    # The overlap, as recorded event times: each slide was being read before the slide before it had its
    # last patch encoded (two slides are read ahead: runtime.IN_FLIGHT).
    assert second.result["read_started"] < lead.result["features_at"], (lead.result, second.result)
    assert third.result["read_started"] < second.result["features_at"], (second.result, third.result)


@pytest.mark.django_db(transaction=True)
def test_jobs_taken_along_finish_on_their_own_and_go_back_to_the_queue_when_the_lead_stops(monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(runner, "dispatch", lambda pk, countdown=None: sent.append(pk))
    lead, first, second = (Job.objects.create(kind="selftest", params={"n": i}) for i in range(3))
    seen = {}

    def handler(job, progress):
        taken = runner.take_along(job, 5)
        seen["taken"] = [c.job.pk for c in taken]
        seen["states"] = set(Job.objects.filter(pk__in=seen["taken"]).values_list("state", flat=True))
        try:
            runner.conclude(job, taken[0], lambda: {"slide": "done on its own"})
            runner.cancel_job(job)
            progress(0.5, "the lead's next report")  # raises JobCancelled
        finally:
            for companion in taken:
                runner.release(job, companion, "stopped before reaching its slide")

    monkeypatch.setitem(runner.HANDLERS, "selftest", runner.Handler(handler, "default"))
    assert runner.execute(lead.pk).state == JobState.CANCELLED
    assert seen["taken"] == [first.pk, second.pk] and seen["states"] == {JobState.RUNNING}
    first, second = Job.objects.get(pk=first.pk), Job.objects.get(pk=second.pk)
    assert first.state == JobState.SUCCEEDED and first.result == {"slide": "done on its own"} and first.attempts == 1
    assert second.state == JobState.QUEUED and second.attempts == 0 and sent == [second.pk]
    assert [e["event"] for e in second.history] == ["started", "requeued"]


@pytest.mark.django_db(transaction=True)
def test_the_watchdog_fails_a_silent_job_and_its_late_success_does_not_overwrite_that(monkeypatch, settings):
    settings.JOB_PULSE_SECONDS = 0.2
    job = Job.objects.create(kind="selftest")

    def silent(job, progress):
        time.sleep(1 + runner.grace_seconds(1) + 1)  # past its 1 s limit and the grace, without a report
        return {"late": True}

    monkeypatch.setitem(runner.HANDLERS, "selftest", runner.Handler(silent, "default", time_limit=1))
    done = runner.execute(job.pk)  # in this process: no hard stop, the job is failed and stays so
    assert done.state == JobState.FAILED and done.error.startswith("The job was stopped after its time limit of 1 s.")
    assert done.result == {} and runner.execute(job.pk).attempts == 1  # a late message does not run it again


@pytest.mark.django_db(transaction=True)
def test_a_lead_that_recorded_its_own_outcome_keeps_it_whatever_the_rest_of_its_pass_does(monkeypatch):
    job = Job.objects.create(kind="selftest")
    seen = {}

    def handler(job, progress):
        runner.conclude_own(job, progress, lambda: {"own": "result"})
        seen["state"] = Job.objects.get(pk=job.pk).state  # done before the handler returns
        raise RuntimeError("a later slide of the pass broke")

    monkeypatch.setitem(runner.HANDLERS, "selftest", runner.Handler(handler, "default"))
    done = runner.execute(job.pk)
    assert seen["state"] == JobState.SUCCEEDED
    assert done.state == JobState.SUCCEEDED and done.result == {"own": "result"} and done.error == ""
