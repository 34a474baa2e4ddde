"""Rating studies. Lab admins create studies and read results; evaluators rate their own queue.

Blinding: evaluator pages address work as (study, queue position) and render only the item's text,
specimen line, optional history and a de-identified slide. Nothing that reaches an evaluator names a
source, an item id, an accession number or a pseudonym. Results and exports are for lab admins only.
"""
from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from webapp.accounts.decorators import lab_admin_required, role_required
from webapp.audit.log import record
from webapp.slides.tile_access import grant_deidentified_access
from webapp.slides.viewer_views import viewer_context

from . import results, sources, studies
from .forms import RatingForm, StudyForm
from .models import ERROR_REQUIRED_MAX, SCORE_ANCHORS, Assignment, ErrorKind, Study, StudyStatus

SHORTCUTS = [("1 - 5", "rate"), ("D M H G O", "kind of error"), ("C", "comment"),
             ("N or Enter", "save and next"), ("B", "back"), ("Esc", "leave the comment box")]
ERROR_KEYS = {"wrong_diagnosis": "d", "missed_finding": "m", "hallucinated_finding": "h",
              "wrong_grade_stage": "g", "other": "o"}


# --- access ---------------------------------------------------------------------------------------------
def _rater_study(user, study_id: int) -> Study:
    """A study this user rates in (404 for everyone else, lab admins included: they read results)."""
    study = Study.objects.filter(pk=study_id, assignments__evaluator=user).distinct().first()
    if study is None or not user.is_evaluator:
        raise Http404("No such study.")
    return study


def _assignment(user, study: Study, position: int) -> Assignment:
    try:
        return (Assignment.objects.select_related("item__slide", "item__part").select_related("rating")
                .get(study=study, evaluator=user, position=position))
    except Assignment.DoesNotExist:
        raise Http404("No such item.") from None


# --- lists ----------------------------------------------------------------------------------------------
@role_required("is_lab_admin", "is_evaluator")
@require_safe
def study_list(request: HttpRequest) -> HttpResponse:
    if request.user.is_lab_admin:
        rows = [{"study": study, **results.live_counts(study)} for study in Study.objects.all()]
        return render(request, "evaluation/study_list.html", {"rows": rows, "admin": True})
    rows = [{"study": study, "progress": studies.progress(study, request.user)}
            for study in Study.objects.filter(assignments__evaluator=request.user).distinct()]
    return render(request, "evaluation/study_list.html", {"rows": rows, "admin": False})


# --- creating a study -----------------------------------------------------------------------------------
@lab_admin_required
@require_http_methods(["GET", "POST"])
def study_create(request: HttpRequest) -> HttpResponse:
    form = StudyForm(request.POST or None)
    unbalanced = ""
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        selection = form.selection()
        try:
            study = studies.build_study(
                name=data["name"], description=data["description"], parts=studies.select_parts(selection),
                source_keys=data["sources"], evaluators=list(data["evaluators"]),
                raters_per_item=data["raters_per_item"], seed=data["seed"],
                include_clinical_history=data["include_clinical_history"], created_by=request.user,
                selection=selection.as_json(), rater_instruction=data["rater_instruction"],
                show_overlays=data["show_overlays"], show_annotations=data["show_annotations"],
                paired=data["paired"],
                drop_duplicates=data["drop_duplicates"], accept_unbalanced=data["accept_unbalanced"],
            )
        except studies.UnbalancedArms as exc:
            unbalanced = str(exc)  # a warning: the form comes back with the box to build it anyway
        except studies.StudyError as exc:
            form.add_error(None, str(exc))
        else:
            record(request, "evaluation_create_study", obj=study, items=study.items.count(),
                   raters=study.evaluators.count(), seed=study.seed)
            build = study.selection.get("build", {})
            left_out = len(build.get("unpaired_left_out", []))
            messages.success(request, f"Study created: {study.items.count()} items, "
                                      f"{study.assignments.count()} ratings to collect."
                                      + (f" {left_out} part{'s' if left_out != 1 else ''} left out: not every "
                                         "source has a text for them." if left_out else ""))
            if not build.get("balanced", True):
                messages.warning(request, "Built with unbalanced arms, as you chose.")
            return redirect("evaluation_results", study_id=study.pk)
    return render(request, "evaluation/study_form.html", {"form": form, "unbalanced": unbalanced})


@lab_admin_required
@require_safe
def study_preview(request: HttpRequest) -> HttpResponse:
    """htmx: how many parts the filters match, how many texts each source has for them and, once sources
    are chosen, what the study would hold (pairs, texts the same in two arms, balance)."""
    form = StudyForm(request.GET)
    form.is_valid()  # partial data is fine here: only the selection and source fields are read
    form.cleaned_data.setdefault("accessions", "")
    parts = studies.select_parts(form.selection())
    keys = [key for key in request.GET.getlist("sources") if key]
    plan = None
    if keys and parts.exists():
        paired = request.GET.get("paired") in ("on", "true", "1")
        plan = studies.plan_study(sources.collect(parts, keys), keys, paired=paired, quick=True,
                                  drop_duplicates=request.GET.get("drop_duplicates") in ("on", "true", "1"))
    return render(request, "evaluation/_preview.html", {
        "parts": parts.count(), "cases": parts.values("case").distinct().count(),
        "options": sources.available_sources(parts), "plan": plan,
    })


# --- results (lab admins) -------------------------------------------------------------------------------
def _results_context(study: Study, live: dict) -> dict:
    return {
        "study": study, "live": live,
        "distribution_chart": results.distribution_chart(live["per_source"]),
        "error_chart": results.error_chart(live["per_source"]),
        "interval_chart": results.interval_chart(live["per_source"]),
        "score_colours": results.SCORE_COLOURS,
    }


@lab_admin_required
@require_safe
def study_results(request: HttpRequest, study_id: int) -> HttpResponse:
    study = get_object_or_404(Study, pk=study_id)
    context = _results_context(study, results.live_results(study))
    context["metrics"] = [{"key": key, "label": study.source_labels().get(key, key), **figures}
                          for key, figures in results.text_metrics(study).items()]
    context["workflow"] = results.workflow_edit_distance(study)
    context["evaluators"] = study.evaluators.order_by("username")
    record(request, "evaluation_view_results", obj=study)
    return render(request, "evaluation/results.html", context)


@lab_admin_required
@require_safe
def study_results_live(request: HttpRequest, study_id: int) -> HttpResponse:
    """htmx polling target: the parts of the results that move as ratings arrive."""
    study = get_object_or_404(Study, pk=study_id)
    return render(request, "evaluation/_live.html", _results_context(study, results.live_results(study)))


@lab_admin_required
@require_POST
def study_status(request: HttpRequest, study_id: int) -> HttpResponse:
    study = get_object_or_404(Study, pk=study_id)
    new = StudyStatus.CLOSED if study.is_open else StudyStatus.OPEN
    Study.objects.filter(pk=study.pk).update(status=new)
    record(request, "evaluation_study_status", obj=study, before={"status": study.status}, after={"status": new})
    messages.success(request, f"Study {'closed' if new == StudyStatus.CLOSED else 'reopened'}.")
    return redirect("evaluation_results", study_id=study.pk)


@lab_admin_required
@require_safe
def export(request: HttpRequest, study_id: int, what: str) -> HttpResponse:
    """JSON (everything) or CSV (ratings, per-source summary, agreement). They name sources: lab admins only."""
    study = get_object_or_404(Study, pk=study_id)
    record(request, "evaluation_export", obj=study, format=what)
    filename = f"study-{study.pk}"
    if what == "json":
        data = results.full_results(study)
        data["ratings"] = list(_csv_rows(results.ratings_csv(study)))
        response = HttpResponse(json.dumps(data, indent=2, default=str), content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="{filename}.json"'
        return response
    writers = {"ratings.csv": results.ratings_csv, "summary.csv": results.summary_csv,
               "agreement.csv": results.agreement_csv}
    if what in writers:
        body = writers[what](study)
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{filename}-{what}"'
        return response
    raise Http404("No such export.")


def _csv_rows(text: str):
    import csv
    import io

    return csv.DictReader(io.StringIO(text))


# --- rating (evaluators) --------------------------------------------------------------------------------
@role_required("is_evaluator")
@require_safe
def rater_queue(request: HttpRequest, study_id: int) -> HttpResponse:
    study = _rater_study(request.user, study_id)
    queue = studies.queue(study, request.user).select_related("rating")
    return render(request, "evaluation/queue.html", {
        "study": study, "queue": queue, "progress": studies.progress(study, request.user),
        "next": studies.next_unrated(study, request.user),
    })


@role_required("is_evaluator")
@require_safe
def rater_continue(request: HttpRequest, study_id: int) -> HttpResponse:
    """Resume: the first item not yet rated (the queue when everything is done)."""
    study = _rater_study(request.user, study_id)
    pending = studies.next_unrated(study, request.user)
    if pending is None:
        messages.success(request, "Every item in this study is rated. Thank you.")
        return redirect("evaluation_queue", study_id=study.pk)
    return redirect("evaluation_rate", study_id=study.pk, position=pending.position)


def _viewer(request: HttpRequest, assignment: Assignment) -> dict:
    """The de-identified viewer for the item's slide (none for an item without a slide)."""
    slide = assignment.item.slide
    if slide is None:
        return {"viewer_available": False}
    grant_deidentified_access(request, slide, ("study", assignment.study_id))  # ends when the study closes
    context = viewer_context([slide], str(slide.pk), None, deidentified=True)
    # The title would name the part; raters get the stain only.
    context["viewer_slides"] = [{**entry, "title": slide.stain} for entry in context["viewer_slides"]]
    # The shared annotation layer, read-only, only if the study allows it (the API checks it again).
    context["viewer_annotations"] = assignment.study.show_annotations
    # The text beside the slide needs the width: slide information starts folded on this page (a rater who
    # unfolds it is remembered under its own key, apart from the case viewer's choice).
    context["viewer_info"], context["viewer_info_key"] = "folded", "rating"
    return {"viewer_available": True, **context}


@role_required("is_evaluator")
@require_http_methods(["GET", "POST"])
def rate(request: HttpRequest, study_id: int, position: int) -> HttpResponse:
    study = _rater_study(request.user, study_id)
    assignment = _assignment(request.user, study, position)
    item = assignment.item
    existing = getattr(assignment, "rating", None)
    initial = ({"score": existing.score, "error_kind": existing.error_kind, "comment": existing.comment}
               if existing else None)
    form = RatingForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        if not study.is_open:
            raise PermissionDenied("This study is closed.")
        if form.is_valid():
            data = form.cleaned_data
            try:
                studies.save_rating(assignment, data["score"], data["error_kind"], data["comment"])
            except studies.StudyError as exc:
                form.add_error(None, str(exc))
            else:
                record(request, "evaluation_rate", case=item.case_id, obj=assignment, study=study.pk,
                       position=position, score=data["score"])
                if request.POST.get("go") == "stay":
                    return redirect("evaluation_rate", study_id=study.pk, position=position)
                pending = studies.next_unrated(study, request.user, after=position)
                if pending is None:
                    messages.success(request, "Every item in this study is rated. Thank you.")
                    return redirect("evaluation_queue", study_id=study.pk)
                return redirect("evaluation_rate", study_id=study.pk, position=pending.position)
        status = 400
    else:
        record(request, "evaluation_view_item", case=item.case_id, obj=assignment, study=study.pk,
               position=position)
    progress = studies.progress(study, request.user)
    context = {
        "study": study, "assignment": assignment, "item": item, "form": form, "rated": existing is not None,
        "progress": progress, "total": progress["total"],
        "previous": position - 1 if position > 1 else None,
        "following": position + 1 if position < progress["total"] else None,
        "anchors": sorted(SCORE_ANCHORS.items(), reverse=True),
        "error_kinds": [(value, label, ERROR_KEYS[value]) for value, label in ErrorKind.choices],
        "error_required_max": ERROR_REQUIRED_MAX, "shortcuts": SHORTCUTS,
        "selected_score": str(form["score"].value() or ""), "selected_error": form["error_kind"].value() or "",
        **_viewer(request, assignment),
    }
    return render(request, "evaluation/rate.html", context, status=status)
