"""Test-only job kind "test_limited" on the gpu queue with a 2 s time limit (imported by the test and by a
test worker with --include): it sleeps `params["seconds"]` in 0.25 s steps, reporting progress after each
step unless `params["silent"]` (a job hung in a call that never returns). Production code has none."""
from __future__ import annotations

import os
import time

from webapp.jobs.runner import job_handler

LIMIT_SECONDS = 2


@job_handler("test_limited", queue="gpu", time_limit=LIMIT_SECONDS)
def test_limited(job, progress) -> dict:
    seconds = float(job.params.get("seconds", 0))
    end = time.monotonic() + seconds
    step = 0
    while time.monotonic() < end:
        time.sleep(0.25)
        step += 1
        if not job.params.get("silent"):
            progress(min(1.0, step * 0.25 / max(seconds, 0.25)), f"step {step}")
    return {"pid": os.getpid(), "name": job.params.get("name", "")}
