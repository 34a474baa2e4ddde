"""Analysis pages: per-slide job state (htmx), similarity search, model bundles (lab admins)."""
from __future__ import annotations

import datetime as dt

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from webapp.accounts.decorators import lab_admin_required
from webapp.audit.log import record
from webapp.jobs.models import Job
from webapp.slides.access import get_slide_for_user
from webapp.slides.models import Slide

from . import pipeline, runtime, search, training
from .models import ModelBundle
from .overlays import attention_for_slide


def viewer_url(slide) -> str:
    return f"{reverse('case_viewer', args=[slide.part.case_id])}?slide={slide.pk}"


# --- per-slide job state -----------------------------------------------------------------------------
def slide_job_context(slide, user) -> dict:
    job = pipeline.latest_job(slide)
    return {"slide": slide, "job": job, "can_manage": user.is_lab_admin,
            "has_model": runtime.active_bundle() is not None}


@login_required
def slide_job_status(request: HttpRequest, slide_id) -> HttpResponse:
    """The slide's analysis state, polled by htmx every 2 s while the job is queued or running."""
    slide = get_slide_for_user(request.user, slide_id)
    return render(request, "analysis/_slide_jobs.html", slide_job_context(slide, request.user))


def slide_retry_fragment(request: HttpRequest, job: Job) -> HttpResponse:
    """What an htmx retry of a slide's analysis answers (registered with the jobs app): the slide's state."""
    return render(request, "analysis/_slide_jobs.html", slide_job_context(job.slide, request.user))


@lab_admin_required
@require_POST
def slide_analyze(request: HttpRequest, slide_id) -> HttpResponse:
    """Queue a slide that has no job (e.g. it arrived before any model was active)."""
    slide = get_slide_for_user(request.user, slide_id)
    job = pipeline.queue_slide_analysis(slide, user=request.user)
    if job is not None:
        record(request, "job_queue", case=slide.part.case_id, obj=job, kind=job.kind)
    return render(request, "analysis/_slide_jobs.html", slide_job_context(slide, request.user))


@login_required
def slide_attention(request: HttpRequest, slide_id) -> JsonResponse:
    """The attention heatmap as overlay JSON (the viewer also serves it via webapp.slides.overlays)."""
    slide = get_slide_for_user(request.user, slide_id)
    data = attention_for_slide(slide)
    if data is None:
        raise Http404("This slide has no attention map yet.")
    record(request, "view_attention", case=slide.part.case_id, obj=slide)
    return JsonResponse(data)


# --- search ------------------------------------------------------------------------------------------
class SearchForm(forms.Form):
    MODES = [("text", "Text → slides"), ("slides", "Slide → similar slides"),
             ("reports", "Slide → signed-out reports of similar cases")]
    mode = forms.ChoiceField(choices=MODES, required=False)
    q = forms.CharField(required=False, max_length=500, label="Text")
    slide = forms.UUIDField(required=False, widget=forms.HiddenInput)
    site = forms.CharField(required=False, max_length=100, label="Organ / site")
    stain = forms.CharField(required=False, max_length=60)
    received_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    received_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    signed_out_only = forms.BooleanField(required=False, label="Signed-out cases only")
    k = forms.IntegerField(required=False, min_value=1, max_value=search.MAX_K, initial=10, label="Results")

    def filters(self) -> search.Filters:
        data = self.cleaned_data
        return search.Filters(site=data.get("site") or "", stain=data.get("stain") or "",
                              received_from=data.get("received_from"), received_to=data.get("received_to"),
                              signed_out_only=bool(data.get("signed_out_only")))


@login_required
def search_page(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_lab_admin or request.user.is_pathologist):
        raise PermissionDenied
    form = SearchForm(request.GET or None)
    result, source = None, None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        mode = data.get("mode") or ("text" if data.get("q") else "slides")
        k = data.get("k") or 10
        filters = form.filters()
        if mode == "text" and data.get("q"):
            result = search.text_search(request.user, data["q"], k, filters)
        elif mode in ("slides", "reports") and data.get("slide"):
            source = get_slide_for_user(request.user, data["slide"])
            finder = search.similar_slides if mode == "slides" else search.similar_reports
            result = finder(request.user, source, k, filters)
        if result is not None:
            record(request, "search", case=source.part.case_id if source else None, obj=source,
                   query_kind=result.kind, hits=len(result.hits), filters=filters.describe(),
                   bundle=str(result.bundle) if result.bundle else "",
                   slides=[str(hit.slide.pk) for hit in result.hits])
    hits = [{"hit": hit, "viewer": viewer_url(hit.slide)} for hit in (result.hits if result else [])]
    template = "analysis/_search_results.html" if request.htmx else "analysis/search.html"
    return render(request, template, {"form": form, "result": result, "hits": hits, "source": source,
                                      "bundle": runtime.search_bundle()})


# --- model bundles (lab admins) ----------------------------------------------------------------------
class RegisterForm(forms.Form):
    path = forms.CharField(max_length=500, label="Bundle directory on the server")
    activate = forms.BooleanField(required=False, label="Make it the active model")


class TrainForm(forms.Form):
    name = forms.CharField(max_length=100, initial="pathalign-local")
    version = forms.CharField(max_length=40)
    epochs = forms.IntegerField(min_value=1, max_value=200, initial=20)


def _bundle_rows() -> list[dict]:
    total = Slide.objects.count()
    rows = []
    for bundle in ModelBundle.objects.all():
        done = bundle.slide_embeddings.count()
        rows.append({"bundle": bundle, "done": done, "total": total,
                     "percent": round(100 * done / total) if total else 100})
    return rows


def _readiness() -> training.Readiness | None:
    try:
        return training.training_readiness()
    except ImproperlyConfigured:  # no pair source registered (the reports app is not installed)
        return None


@lab_admin_required
def bundle_list(request: HttpRequest) -> HttpResponse:
    register = RegisterForm(request.POST or None)
    if request.method == "POST" and register.is_valid():
        try:
            bundle = pipeline.register_bundle(register.cleaned_data["path"], user=request.user)
        except pipeline.BundleInvalid as exc:
            register.add_error("path", str(exc))
        else:
            record(request, "model_register", obj=bundle, path=bundle.path, active=False)
            messages.success(request, f"Registered {bundle}.")
            if register.cleaned_data["activate"]:  # the same gate as "Make active"
                _activate(request, bundle, "")
            return redirect("bundle_detail", bundle_id=bundle.pk)
    version = dt.datetime.now().strftime("%Y.%m.%d-%H%M")
    jobs = Job.objects.filter(kind__in=[pipeline.REEMBED, training.TRAIN]).order_by("-created_at")[:10]
    active = runtime.active_bundle()
    rows = _bundle_rows()
    for row in rows:
        row["gate"] = pipeline.activation_gate(row["bundle"], active)
    return render(request, "analysis/bundle_list.html", {
        "rows": rows, "register": register, "train": TrainForm(initial={"version": version}),
        "jobs": jobs, "search_bundle": runtime.search_bundle(), "readiness": _readiness(),
    })


def _detail_context(bundle: ModelBundle) -> dict:
    done, total = pipeline.coverage(bundle)
    active = runtime.active_bundle()
    comparison = bundle.eval_figures.get("heldout_comparison")
    compared = (comparison or {}).get("active_bundle_key") or (comparison or {}).get("active_bundle") or ""
    return {
        "bundle": bundle, "done": done, "total": total, "active": active, "comparison": comparison,
        "comparison_lines": pipeline.comparison_lines(comparison, f"the active one ({compared})"),
        "gate": pipeline.activation_gate(bundle, active), "override_min": pipeline.OVERRIDE_MIN_CHARS,
        "margin_points": round(100 * settings.BUNDLE_MAX_REGRESSION),
        "figures": _flat_figures(bundle.eval_figures), "search_bundle": runtime.search_bundle(),
        "jobs": Job.objects.filter(params__bundle=bundle.pk, kind=pipeline.REEMBED)[:5],
    }


@lab_admin_required
def bundle_detail(request: HttpRequest, bundle_id: int) -> HttpResponse:
    bundle = get_object_or_404(ModelBundle, pk=bundle_id)
    return render(request, "analysis/bundle_detail.html", _detail_context(bundle))


def _flat_figures(figures: dict, prefix: str = "") -> list[tuple[str, str]]:
    """eval.json as (name, value) rows; nested sections become dotted names, long lists are skipped."""
    rows = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flat_figures(value, name + "."))
        elif isinstance(value, float):
            rows.append((name, f"{value:.3f}"))
        elif isinstance(value, int | str | bool) or value is None:
            rows.append((name, str(value)))
    return rows[:200]


def _activate(request: HttpRequest, bundle: ModelBundle, reason: str) -> pipeline.Gate | None:
    """Through the gate; audited either way. None when refused (the message says why)."""
    previous = runtime.active_bundle()
    try:
        gate, overridden = pipeline.make_active(bundle, override_reason=reason)
    except pipeline.ActivationRefused as refused:
        record(request, "model_activate_refused", obj=bundle, previous=str(previous) if previous else "",
               **refused.gate.details())
        messages.error(request, f"{bundle} was not made active. {refused.gate.reason}")
        return None
    record(request, "model_activate_override" if overridden else "model_activate", obj=bundle,
           previous=str(previous) if previous else "", override=overridden,
           reason=reason.strip() if overridden else "", **gate.details())
    messages.success(request, f"{bundle} is now the active model{' (gate overridden)' if overridden else ''}. "
                              "New slides are embedded with it; re-embed the archive so search can switch to it.")
    return gate


@lab_admin_required
@require_POST
def bundle_activate(request: HttpRequest, bundle_id: int) -> HttpResponse:
    """ "Make active": allowed by the gate (pipeline.activation_gate), or with a written override reason."""
    bundle = get_object_or_404(ModelBundle, pk=bundle_id)
    reason = request.POST.get("override_reason", "")[:2000]
    if _activate(request, bundle, reason) is None:
        context = _detail_context(bundle)
        context["override_reason"] = reason
        return render(request, "analysis/bundle_detail.html", context, status=409)
    return redirect("bundle_detail", bundle_id=bundle.pk)


@lab_admin_required
@require_POST
def bundle_reembed(request: HttpRequest, bundle_id: int) -> HttpResponse:
    bundle = get_object_or_404(ModelBundle, pk=bundle_id)
    job = pipeline.queue_reembed(bundle, user=request.user)
    record(request, "model_reembed", obj=bundle, job=job.pk)
    messages.success(request, f"Re-embedding the archive with {bundle} in the background.")
    return redirect("bundle_detail", bundle_id=bundle.pk)


@lab_admin_required
@require_POST
def bundle_train(request: HttpRequest) -> HttpResponse:
    form = TrainForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give a name, a version and a number of epochs.")
        return redirect("bundle_list")
    readiness = _readiness()
    if readiness is None or not readiness.ok:
        messages.error(request, "Training is not offered yet. " + (readiness.summary() if readiness else
                                                                   "No source of signed-out cases is installed."))
        return redirect("bundle_list")
    data = form.cleaned_data
    job = training.queue_training(request.user, data["name"], data["version"], {"epochs": data["epochs"]})
    record(request, "model_train", obj=job, name=data["name"], version=data["version"])
    messages.success(request, "Training started in the background; its progress is below.")
    return redirect("bundle_list")


@lab_admin_required
def job_status(request: HttpRequest, job_id: int) -> HttpResponse:
    """A job's row on the model pages (re-embedding, training), polled while the job runs."""
    job = get_object_or_404(Job, pk=job_id)
    return render(request, "analysis/_job_row.html", {"job": job})
