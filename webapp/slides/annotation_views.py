"""Annotation API for the viewer (JSON), GeoJSON import/export, and the lab admins' label list page.

Every view resolves the slide through `annotations.annotation_access` (404 for anyone who may not see the
case, 403 for readers who may not write; a rater whose study shows the shared layer reads it de-identified
and is refused every write, import and export) and writes an audit event for every change, import and
export. Reading the list is covered by the viewer's "view_slide" event (webapp.slides.tile_access).
"""
from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from webapp.accounts.decorators import lab_admin_required
from webapp.audit.log import record

from . import annotations as rules
from .models import Annotation, AnnotationLabel

MAX_JSON_BODY = 2 * 1024 * 1024  # one annotation, free-hand outlines included


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _json_body(request: HttpRequest):
    if len(request.body) > MAX_JSON_BODY:
        raise rules.AnnotationError("The annotation is too large to save in one request.")
    try:
        return json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise rules.AnnotationError("Send the annotation as JSON.") from None


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def annotation_list(request: HttpRequest, slide_id) -> JsonResponse:
    """GET: the labels, whether the user may write, and the annotations the user can see.
    POST (JSON {kind, geometry, layer, label, comment}): create one; 201 with it."""
    write = request.method == "POST"
    access = rules.annotation_access(request, slide_id, write=write)
    slide = access.slide
    case = slide.part.case
    mpp = slide.effective_mpp
    writable = not access.deidentified and rules.can_annotate(request.user, case)
    if write:
        try:
            annotation = rules.create(slide, request.user, _json_body(request))
        except rules.AnnotationError as exc:
            return _error(400, str(exc))
        record(request, "annotation_create", case=case, obj=annotation, after=rules.audit_snapshot(annotation),
               slide=str(slide.pk))
        return _no_store(JsonResponse(rules.annotation_dict(annotation, request.user, mpp, writable=True), status=201))
    items = rules.visible_annotations(request.user, slide, access)
    data = {
        "slide": str(slide.pk),
        "mpp": mpp,
        "resolution_unknown": mpp is None,
        "can_edit": writable,
        "deidentified": access.deidentified,
        "user": "" if access.deidentified else request.user.username,
        "labels": [rules.label_dict(label) for label in AnnotationLabel.objects.filter(active=True)],
        "annotations": [rules.deidentified_dict(a, mpp) if access.deidentified
                        else rules.annotation_dict(a, request.user, mpp, writable=writable) for a in items],
    }
    return _no_store(JsonResponse(data))


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def annotation_detail(request: HttpRequest, slide_id, annotation_id) -> JsonResponse:
    """GET: one annotation. POST (JSON with any of label, comment, layer, geometry): change it."""
    write = request.method == "POST"
    access = rules.annotation_access(request, slide_id, write=write)
    slide = access.slide
    mpp = slide.effective_mpp
    if access.deidentified:
        annotation = rules.visible_annotations(request.user, slide, access).filter(pk=annotation_id).first()
        if annotation is None:
            raise Http404("No such annotation.")
        return _no_store(JsonResponse(rules.deidentified_dict(annotation, mpp)))
    if not write:
        annotation = rules.get_annotation_for_user(request.user, slide, annotation_id)
    else:
        with transaction.atomic():  # the row stays locked from the check to the save
            annotation = rules.get_annotation_for_user(request.user, slide, annotation_id, write=True)
            before = rules.audit_snapshot(annotation)
            try:
                rules.update(annotation, request.user, _json_body(request))
            except rules.AnnotationConflict as exc:
                return _error(409, str(exc))
            except rules.AnnotationError as exc:
                return _error(400, str(exc))
            record(request, "annotation_edit", case=slide.part.case, obj=annotation, before=before,
                   after=rules.audit_snapshot(annotation), slide=str(slide.pk))
    writable = rules.can_annotate(request.user, slide.part.case)
    return _no_store(JsonResponse(rules.annotation_dict(annotation, request.user, mpp, writable=writable)))


@login_required
@require_POST
def annotation_delete(request: HttpRequest, slide_id, annotation_id) -> JsonResponse:
    """Soft delete: the row stays (with who and when) and the audit log keeps what it was."""
    slide = rules.annotation_access(request, slide_id, write=True).slide
    with transaction.atomic():
        annotation = rules.get_annotation_for_user(request.user, slide, annotation_id, write=True)
        before = rules.audit_snapshot(annotation)
        rules.soft_delete(annotation, request.user)
        record(request, "annotation_delete", case=slide.part.case, obj=annotation, before=before,
               slide=str(slide.pk))
    return _no_store(JsonResponse({"deleted": str(annotation.pk)}))


@login_required
@require_safe
def annotation_export(request: HttpRequest, slide_id) -> HttpResponse:
    """The annotations the user can see as QuPath-style GeoJSON (`?layer=personal|shared`, default both).
    Not for raters: the file carries authors and comments, and a rating study keeps its material in."""
    access = rules.annotation_access(request, slide_id)
    if access.deidentified:
        raise PermissionDenied
    slide = access.slide
    items = Annotation.objects.visible_to(request.user).filter(slide=slide).select_related("label", "owner")
    layer = request.GET.get("layer", "")
    if layer in Annotation.Layer.values:
        items = items.filter(layer=layer)
    items = list(items)
    record(request, "annotation_export", case=slide.part.case, obj=slide, count=len(items), layer=layer or "all")
    body = json.dumps(rules.export_geojson(slide, items), ensure_ascii=False, separators=(",", ":"))
    response = HttpResponse(body, content_type=rules.GEOJSON_CONTENT_TYPE)
    response["Content-Disposition"] = f'attachment; filename="slide-{slide.pk}-annotations.geojson"'
    return _no_store(response)


@login_required
@require_POST
def annotation_import(request: HttpRequest, slide_id) -> JsonResponse:
    """A GeoJSON file (form field `file`, or the request body) onto `layer`; all or nothing."""
    slide = rules.annotation_access(request, slide_id, write=True).slide
    upload = None
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        upload = request.FILES.get("file")
        if upload is None:
            return _error(400, "Choose a GeoJSON file to import.")
        if upload.size > rules.MAX_IMPORT_BYTES:
            return _error(400, f"The file is larger than {rules.MAX_IMPORT_BYTES // (1024 * 1024)} MB; split it.")
        raw = upload.read()
        layer = request.POST.get("layer", "")
    else:
        raw = request.body  # the GeoJSON itself as the request body; ?layer= names the layer
        layer = request.GET.get("layer", "")
    if not raw:
        return _error(400, "Choose a GeoJSON file to import.")
    try:
        result = rules.import_geojson(raw, slide, request.user, layer)
    except rules.AnnotationError as exc:
        return _error(400, str(exc))
    record(request, "annotation_import", case=slide.part.case, obj=slide, count=len(result.annotations),
           skipped=result.skipped, layer=result.annotations[0].layer,
           filename=getattr(upload, "name", "")[:200])
    return _no_store(JsonResponse({"imported": len(result.annotations), "skipped": result.skipped}, status=201))


# --- the lab's label list ------------------------------------------------------------------------------
@lab_admin_required
@require_http_methods(["GET", "HEAD", "POST"])
def annotation_labels(request: HttpRequest) -> HttpResponse:
    """Lab admins add, rename, recolour, reorder and retire annotation labels (retired labels stay on the
    annotations that use them but are no longer offered)."""
    if request.method == "POST":
        try:
            changed = _save_label(request.POST)
        except (ValueError, IntegrityError) as exc:
            messages.error(request, f"Not saved: {exc}")
        else:
            record(request, "annotation_label_save", after=changed)
            messages.success(request, f"Saved label “{changed['name']}”.")
        return redirect("annotation_labels")
    return render(request, "slides/annotation_labels.html", {"labels": AnnotationLabel.objects.all()})


def _save_label(form) -> dict:
    name = (form.get("name") or "").strip()
    color = (form.get("color") or "").strip()
    if not name or len(name) > 80:
        raise ValueError("a label needs a name of at most 80 characters")
    if not rules.HEX_COLOR.match(color):
        raise ValueError("the colour must look like #rrggbb")
    try:
        position = int(form.get("position") or 0)
    except ValueError:
        raise ValueError("the position must be a whole number") from None
    if not 0 <= position <= 999:
        raise ValueError("the position must be between 0 and 999")
    with transaction.atomic():
        if form.get("id"):
            label = AnnotationLabel.objects.filter(pk=form.get("id")).first()
            if label is None:
                raise ValueError("no such label")
        else:
            if AnnotationLabel.objects.filter(name__iexact=name).exists():
                raise ValueError(f"a label named “{name}” exists already")
            label = AnnotationLabel()
        label.name, label.color, label.position = name, color.lower(), position
        label.active = form.get("active") == "on" if form.get("id") else True
        label.save()
    return {"id": label.pk, "name": label.name, "color": label.color, "position": label.position,
            "active": label.active}
