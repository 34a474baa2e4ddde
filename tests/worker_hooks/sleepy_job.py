"""Test-only job kind "test_sleep" (imported by the test and by a test worker with --include): it sleeps
`params["seconds"]` in steps, reporting progress, and records when it started. Production code has none."""
from __future__ import annotations

import time

from webapp.jobs.runner import job_handler


@job_handler("test_sleep")
def test_sleep(job, progress) -> dict:
    started = time.time()
    seconds = float(job.params.get("seconds", 0))
    steps = max(1, int(seconds * 2))
    for step in range(steps):
        time.sleep(seconds / steps)
        progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return {"started": started, "name": job.params.get("name", "")}
