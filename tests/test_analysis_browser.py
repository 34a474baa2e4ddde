"""In Chromium: the case page follows a slide's analysis live (htmx polling), and the viewer shows its
attention heatmap."""
from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests import test_analysis_support as support
from webapp.analysis import pipeline, runtime
from webapp.jobs import runner as jobs
from webapp.jobs.models import Job, JobState

pytestmark = pytest.mark.browser
small_slides, tiny_bundle_dir = support.small_slides, support.tiny_bundle_dir
VIEWER = "document.querySelector('[data-pa-viewer]').pathAlignViewer"


@pytest.fixture
def live_bundle(transactional_db, tiny_bundle_dir, settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: True)  # no broker: the test plays the worker
    runtime.forget_models()
    bundle = pipeline.register_bundle(tiny_bundle_dir, activate=True)
    yield bundle
    runtime.forget_models()


def test_case_page_follows_the_job_and_viewer_shows_attention(live_bundle, cast, case_factory, page_for,
                                                               small_slides):
    case = case_factory(assigned_to=cast.path1)
    slide = support.ingest(small_slides[0], case.parts.get())
    job = pipeline.queue_slide_analysis(slide)
    page = page_for(cast.path1)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"/cases/{case.pk}/")
    state = page.locator(f"#analysis-{slide.pk}")
    expect(state).to_contain_text("Analysis queued")
    Job.objects.filter(pk=job.pk).update(state=JobState.RUNNING, progress=0.5, message="Encoding patches",
                                         started_at=timezone.now(), heartbeat_at=timezone.now())
    expect(state).to_contain_text("50%", timeout=10000)  # the 2 s poll picked it up
    Job.objects.filter(pk=job.pk).update(state=JobState.QUEUED)
    jobs.execute(job.pk)  # the "worker" finishes it
    expect(state).to_contain_text("Analysed", timeout=10000)
    expect(state).not_to_have_attribute("hx-trigger", "every 2s")  # polling stopped
    page.click(f"#analysis-{slide.pk} >> text=Similar slides")
    expect(page.locator("#search-summary")).to_contain_text("0 results")
    page.goto(f"/cases/{case.pk}/viewer/?slide={slide.pk}")
    page.wait_for_function(f"() => {VIEWER} && {VIEWER}.element.dataset.state === 'ready'", timeout=20000)
    expect(page.locator("[data-role=overlay-select] option")).to_contain_text(["Attention"])
    page.check("[data-role=overlay-toggle]")
    page.wait_for_function(f"() => {VIEWER}.overlayState().loaded", timeout=20000)
    assert not errors, errors
