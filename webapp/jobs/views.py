"""The jobs page for lab admins: every job, newest first, filterable by state and kind, a page at a time,
with when it was queued, started and finished; cancel and retry."""
from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from webapp.accounts.decorators import lab_admin_required
from webapp.audit.log import record

from .models import Job, JobState
from .runner import HANDLERS, cancel_job, retry_job

JOB_PAGE = 50
RetryFragment = Callable[[HttpRequest, Job], HttpResponse]
# How an htmx retry answers, by job kind: a higher app shows its own fragment (the analysis app: the slide's
# analysis state on the case page). A retry from a plain form goes back to the page it came from.
_retry_fragments: dict[str, RetryFragment] = {}


def register_retry_fragment(kind: str, render_fragment: RetryFragment) -> None:
    _retry_fragments[kind] = render_fragment


@lab_admin_required
def job_list(request: HttpRequest) -> HttpResponse:
    """Every job, newest first, filterable by state and kind, JOB_PAGE to a page."""
    from .templatetags.jobs_tags import job_kind

    jobs = Job.objects.select_related("slide__part__case", "case").order_by("-created_at", "-id")
    state, kind = request.GET.get("state", ""), request.GET.get("kind", "")
    state = state if state in JobState.values else ""
    kind = kind if kind in HANDLERS else ""
    if state:
        jobs = jobs.filter(state=state)
    if kind:
        jobs = jobs.filter(kind=kind)
    counts = {row["state"]: row["n"] for row in Job.objects.values("state").annotate(n=Count("id"))}
    page = Paginator(jobs, JOB_PAGE).get_page(request.GET.get("page"))
    for job in page.object_list:  # history times are ISO strings in JSON: as datetimes for the template
        job.history = [{**entry, "when": parse_datetime(str(entry.get("at", "")))}
                       for entry in job.history if isinstance(entry, dict)]
    context = {
        "jobs": page.object_list,
        "page": page,
        "query": urlencode({key: value for key, value in (("state", state), ("kind", kind)) if value}),
        "states": [(value, label, counts.get(value, 0)) for value, label in JobState.choices],
        "kinds": sorted(((name, job_kind(name)) for name in HANDLERS), key=lambda pair: pair[1]),
        "state": state,
        "kind": kind,
    }
    return render(request, "jobs/job_list.html", context)


@lab_admin_required
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=job_id)
    if cancel_job(job):
        record(request, "job_cancel", case=job.case_id, obj=job, kind=job.kind)
        messages.success(request, f"Job #{job.pk} cancelled.")
    else:
        messages.info(request, "Only a queued or running job can be cancelled.")
    return redirect("job_list")


@lab_admin_required
@require_POST
def job_retry(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=job_id)
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        messages.info(request, "Only a failed job can be retried.")
    else:
        job = retry_job(job)
        record(request, "job_retry", case=job.case_id, obj=job, kind=job.kind)
    fragment = _retry_fragments.get(job.kind)
    if request.htmx and fragment is not None:
        return fragment(request, job)
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=False):
        target = reverse("job_list")
    return redirect(target)
