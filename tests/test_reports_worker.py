"""The draft job through a real Celery worker process (queue "gpu"), with the tiny model."""
from __future__ import annotations

import pytest
from django.urls import reverse

from tests.conftest import start_worker, stop_worker, wait_for
from tests.model_fixtures import prime_features, tiny_bundle_dir, tiny_model  # noqa: F401
from tests.test_reports_support import fake_slide
from webapp.jobs.models import Job, JobState
from webapp.reports.labelsets import ensure_default_label_sets
from webapp.reports.models import AIDraft, Classification

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_draft_job_on_a_worker(cast, case_factory, client_for, request, settings):
    bundle = request.getfixturevalue("tiny_model")
    ensure_default_label_sets()
    case = case_factory(assigned_to=cast.path1)
    prime_features(fake_slide(case.parts.get()), bundle)
    worker = start_worker(queues="gpu", name="reports", extra_env={
        "PATHALIGN_VAR_DIR": str(settings.VAR_DIR), "PATHALIGN_DRAFT_BEAMS": "1", "PATHALIGN_DRAFT_MAX_TOKENS": "24",
    })
    try:
        client = client_for(cast.path1)
        response = client.post(reverse("report_draft", args=[case.pk]), {"method": "qformer"}, HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        job = Job.objects.get(case=case, kind="draft_report")
        assert job.queue == "gpu"
        done = wait_for(lambda: Job.objects.filter(pk=job.pk, state__in=[JobState.SUCCEEDED, JobState.FAILED]).first(),
                        timeout=180, interval=1, message="the draft job on the worker")
        assert done.state == JobState.SUCCEEDED, done.error
        draft = AIDraft.objects.get(section__report__case=case)
        assert draft.job_id == job.pk and draft.section.text == draft.text
        assert Classification.objects.filter(section=draft.section).count() == 3
        status = client.get(reverse("report_draft_status", args=[case.pk, job.pk]), HTTP_HX_REQUEST="true")
        assert status["HX-Refresh"] == "true"
    finally:
        stop_worker(worker)
