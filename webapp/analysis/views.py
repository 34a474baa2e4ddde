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
        "comparison_rows": comparison_rows(comparison), "training_lines": training_lines(bundle.training),
        "encoder_words": spec_words(bundle.encoder), "dims_words": spec_words(bundle.dims),
        "variant_words": VARIANT_WORDS.get(bundle.variant, bundle.variant or "not stated"),
        "gate": pipeline.activation_gate(bundle, active), "override_min": pipeline.OVERRIDE_MIN_CHARS,
        "margin_points": round(100 * settings.BUNDLE_MAX_REGRESSION),
        "figures": _flat_figures(bundle.eval_figures), "search_bundle": runtime.search_bundle(),
        "jobs": Job.objects.filter(params__bundle=bundle.pk, kind=pipeline.REEMBED)[:5],
    }


@lab_admin_required
def bundle_detail(request: HttpRequest, bundle_id: int) -> HttpResponse:
    bundle = get_object_or_404(ModelBundle, pk=bundle_id)
    return render(request, "analysis/bundle_detail.html", _detail_context(bundle))


# --- the bundle page in words ---------------------------------------------------------------------------
# The held-out figures, what each means, and whether higher is better.
FIGURES = [
    ("i2t_r1", "Slide → report, top 1", "held-out slides whose own report the model ranks first among all held-out reports"),
    ("i2t_r5", "Slide → report, top 5", "held-out slides whose own report is among the model's first five"),
    ("t2i_r1", "Report → slide, top 1", "held-out reports whose own slide the model ranks first"),
    ("t2i_r5", "Report → slide, top 5", "held-out reports whose own slide is among the model's first five"),
    ("label_accuracy", "Zero-shot class", "held-out slides given the right class from the class names alone"),
]
FIGURE_NAMES = {key: label for key, label, _ in FIGURES}
SPLIT_WORDS = {"train": "training", "val": "validation (choosing the best epoch)", "test": "testing"}


def _count_of(figures: dict, key: str) -> str:
    """'4 of 12 (33%)' from a comparison's figures."""
    value = figures.get(key)
    if value is None:
        return "–"
    hits = figures.get(f"{key}_hits")
    total = figures.get("texts") if key.startswith("t2i") and figures.get("texts") else figures.get("n")
    if hits is None and total:
        hits = round(value * total)
    share = f"{100 * value:.0f}%"
    return f"{hits} of {total} ({share})" if hits is not None and total else share


def comparison_rows(comparison: dict | None) -> list[dict]:
    """One row per figure both bundles have: the figure in words, both counts and the difference."""
    if not comparison:
        return []
    new, old = comparison.get("new") or {}, comparison.get("active") or {}
    rows = []
    for key, label, meaning in FIGURES:
        if new.get(key) is None or old.get(key) is None:
            continue
        points = round(100 * (new[key] - old[key]))
        verdict = "the same" if points == 0 else f"{'better' if points > 0 else 'worse'} by {abs(points)} points"
        rows.append({"key": key, "label": label, "meaning": meaning, "new": _count_of(new, key),
                     "active": _count_of(old, key), "verdict": verdict,
                     "direction": "same" if points == 0 else "better" if points > 0 else "worse"})
    return rows


def training_lines(training: dict) -> list[str]:
    """bundle.json's training summary as sentences (never a raw dict)."""
    if not isinstance(training, dict) or not training:
        return []
    lines = []
    splits = training.get("splits") if isinstance(training.get("splits"), dict) else {}
    if training.get("slides"):
        order = [*SPLIT_WORDS, *sorted(set(splits) - set(SPLIT_WORDS))]  # the database keeps no key order
        parts = [f"{splits[split]} for {SPLIT_WORDS.get(split, split)}" for split in order if split in splits]
        lines.append(f"{training['slides']} slides" + (f": {', '.join(parts)}" if parts else "") + ".")
    if training.get("bag") == "part" and training.get("bags"):
        lines.append(f"Trained on {training['bags']} case parts, each part's slides read as one bag with the "
                     "part's report.")
    diagnoses = training.get("train_diagnoses")
    if isinstance(diagnoses, dict) and diagnoses:
        top = sorted(diagnoses.items(), key=lambda item: (-item[1], item[0]))
        shown = ", ".join(f"{name} {count}" for name, count in top[:8])
        more = f" and {len(top) - 8} more" if len(top) > 8 else ""
        lines.append(f"Training slides by diagnosis: {shown}{more}.")
    patches = training.get("patches_per_slide")
    if isinstance(patches, dict) and patches.get("max"):
        lines.append(f"Tissue patches per slide: {patches.get('min', 0):,} to {patches['max']:,} "
                     f"(mean {float(patches.get('mean') or 0):,.0f}).")
    epochs = training.get("epochs")
    if isinstance(epochs, list) and epochs:
        lines.append(f"Trained for {len(epochs)} epoch{'s' if len(epochs) != 1 else ''}"
                     + (f"; the best validation loss was {training['best_val_loss']:.3f}."
                        if isinstance(training.get("best_val_loss"), float) else "."))
    if training.get("source"):
        lines.append(f"Source: {training['source']}.")
    return lines


VARIANT_WORDS = {"R": "PathAlign-R (retrieval: finds similar signed-out reports)",
                 "G": "PathAlign-G (generative: writes draft text)"}


def spec_words(spec: dict) -> str:
    """A settings dict as 'name: value' pairs in words ('kind: hf; dim: 768'); nested dicts flattened."""
    if not isinstance(spec, dict) or not spec:
        return "–"
    pairs = []
    first = ("name", "kind", "type")  # then alphabetical: the database keeps no key order
    for key in sorted(spec, key=lambda k: (first.index(k) if k in first else len(first), str(k))):
        value = spec[key]
        if isinstance(value, dict):
            value = spec_words(value)
        elif isinstance(value, list):
            value = ", ".join(str(item) for item in value[:8]) + (" …" if len(value) > 8 else "")
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        pairs.append(f"{str(key).replace('_', ' ')}: {value}")
    return "; ".join(pairs)


def _figure_name(path: list[str]) -> str:
    """('v2', 'mean_pool', 'auc') -> 'V2 · mean pool · AUC'."""
    out = []
    for key in path:
        if key in FIGURE_NAMES:
            out.append(FIGURE_NAMES[key])
            continue
        text = " ".join(str(key).replace("_", " ").split())
        for short in ("auc", "bleu", "rouge", "meteor", "mil", "r1", "r5"):
            text = " ".join(word.upper() if word.lower() == short else word for word in text.split())
        out.append(text[:1].upper() + text[1:])
    return " · ".join(out)


def _flat_figures(figures: dict, path: list[str] | None = None) -> list[tuple[str, str]]:
    """eval.json as (name in words, value) rows; nested sections named in order, long lists skipped, the
    held-out comparison left out (the page states it above in words)."""
    rows = []
    for key, value in figures.items():
        if not path and key == "heldout_comparison":
            continue
        here = [*(path or []), str(key)]
        if isinstance(value, dict):
            rows.extend(_flat_figures(value, here))
        elif isinstance(value, bool):
            rows.append((_figure_name(here), "yes" if value else "no"))
        elif isinstance(value, float):
            rows.append((_figure_name(here), f"{value:.3f}"))
        elif isinstance(value, int | str) or value is None:
            rows.append((_figure_name(here), "–" if value is None else f"{value:,}" if isinstance(value, int) else value))
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
