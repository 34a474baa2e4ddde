"""Slide upload, drop-folder import and thumbnails."""
from __future__ import annotations

import contextlib
import errno
import logging
import re
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, JsonResponse, QueryDict
from django.shortcuts import redirect, render
from django.utils.datastructures import MultiValueDict
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from webapp.accounts.decorators import lab_admin_required
from webapp.audit.log import record
from webapp.cases import access as case_access
from webapp.cases.models import Part

from . import dropbox
from .access import get_slide_for_user
from .forms import DropImportForm, SlideFieldsForm
from .ingest import UPLOAD_EXTENSIONS, SlideRejected, ingest_slide, safe_display_name
from .uploads import SizeLimitedUploadHandler

log = logging.getLogger(__name__)


def _error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"ok": False, "error": message}, status=status)


_SERVER_PATH = re.compile(r"(?<![\w.])(?:/[^\s/:;,'\"]+){2,}")  # an absolute path of 2+ parts


def public_reason(exc: Exception) -> str:
    """A refusal for the user: OpenSlide/libtiff messages name the file's path on the server; drop it."""
    return _SERVER_PATH.sub("(file)", str(exc))


@csrf_exempt  # the handler must be installed before CSRF reads the body; csrf_protect runs inside
@login_required
def slide_upload(request, case_id: int, part_id: int):
    request.upload_handlers = [SizeLimitedUploadHandler(request)]
    if request.method == "POST":
        # Authorise before one byte of the body is read: someone who may not add slides to this part (an
        # evaluator, another pathologist) is answered 404/403 without streaming gigabytes to disk first.
        case_access.get_part_for_user(request.user, case_id, part_id, edit=True)
        # Read the body here, where a failure (over the limit, disk full, a broken body) gets a clear answer
        # below; csrf_protect would otherwise read it first and let any such error become a 500.
        try:
            request.POST, request.FILES  # noqa: B018 - evaluated for the parse
        except Exception as exc:  # noqa: BLE001
            request.upload_error = exc
            request._post, request._files = QueryDict(), MultiValueDict()  # as Django does on a parse error
            for handler in request.upload_handlers:  # close (so delete) a half-written temporary file now
                with contextlib.suppress(Exception):
                    if getattr(handler, "file", None) is not None:
                        handler.file.close()
    return _slide_upload(request, case_id, part_id)


DISK_FULL = ("The server has run out of storage space, so the slide was not stored. Nothing was saved; "
             "please try again later and tell the lab administrator.")


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@csrf_protect
@require_POST
def _slide_upload(request, case_id: int, part_id: int):
    part = case_access.get_part_for_user(request.user, case_id, part_id, edit=True)
    limit_gb = settings.SLIDE_UPLOAD_MAX_BYTES / 1024**3
    failure = getattr(request, "upload_error", None)
    upload = None
    if failure is None:
        try:
            upload = request.FILES.get("file")
        except Exception as exc:  # noqa: BLE001 - a malformed or interrupted multipart body
            failure = exc
    if getattr(request, "upload_too_large", False):
        return _error(f"The file is larger than the upload limit of {limit_gb:g} GB.", 413)
    if failure is not None and _disk_full(failure):
        log.error("upload refused: no space left in the upload area (%s)", settings.FILE_UPLOAD_TEMP_DIR)
        return _error(DISK_FULL, 507)
    if failure is not None:
        return _error("The upload could not be read; please try again.", 400)
    if upload is None:
        return _error("No file was sent.", 400)
    form = SlideFieldsForm(request.POST)
    if not form.is_valid():
        return _error("Stain and block label are invalid: " + form.errors.as_text(), 400)
    name = safe_display_name(upload.name)
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_EXTENSIONS:
        return _error(
            f"'{suffix or 'no extension'}' is not a slide format we accept for upload "
            f"({', '.join(sorted(UPLOAD_EXTENSIONS))}).",
            400,
        )
    temporary = Path(upload.temporary_file_path()) if hasattr(upload, "temporary_file_path") else None
    try:
        if temporary is None:  # small files stay in memory: write them to the upload area first
            temporary = _spool(upload)
        slide = ingest_slide(
            temporary, part=part, original_filename=name, user=request.user, **form.cleaned_data, move=True
        )
    except SlideRejected as exc:
        record(request, "reject_slide", case=part.case_id, obj=part, reason=str(exc)[:300])
        return _error(f"{name}: {public_reason(exc)}", 400)
    except OSError as exc:
        if not _disk_full(exc):
            raise
        log.error("upload refused: no space left in the slide store (%s)", settings.SLIDE_STORE_DIR)
        return _error(DISK_FULL, 507)
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        upload.close()
    record(request, "upload_slide", case=part.case_id, obj=slide, after={"stain": slide.stain,
           "block_label": slide.block_label, "file_size": slide.file_size})
    return JsonResponse({"ok": True, "slide": str(slide.pk), "name": str(slide)}, status=201)


def _spool(upload) -> Path:
    import tempfile

    handle = tempfile.NamedTemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR, delete=False, suffix=".upload")
    try:
        with handle:
            for chunk in upload.chunks():
                handle.write(chunk)
    except BaseException:  # a full disk: leave no partial file behind
        Path(handle.name).unlink(missing_ok=True)
        raise
    return Path(handle.name)


@login_required
def slide_thumbnail(request, slide_id):
    slide = get_slide_for_user(request.user, slide_id)
    if not slide.thumbnail_path.exists():
        raise Http404("No thumbnail.")
    record(request, "view_thumbnail", case=slide.part.case_id, obj=slide)
    response = FileResponse(open(slide.thumbnail_path, "rb"), content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@lab_admin_required
def dropbox_list(request):
    """Files a scanner wrote to the drop folder, with their matching case and part when the name says."""
    entries = dropbox.scan()
    parts = Part.objects.select_related("case").order_by("-case__received_date", "case__accession_number", "label")
    return render(request, "slides/dropbox.html", {"entries": entries, "parts": parts[:500],
                                                   "drop_dir": settings.SLIDE_DROP_DIR})


@lab_admin_required
@require_POST
def dropbox_import(request):
    form = DropImportForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a file and a part.")
        return redirect("dropbox_list")
    try:
        part = Part.objects.select_related("case").get(pk=form.cleaned_data["part"])
        slide = dropbox.import_entry(
            form.cleaned_data["filename"], part=part, stain=form.cleaned_data["stain"],
            block_label=form.cleaned_data["block_label"], user=request.user,
        )
    except Part.DoesNotExist:
        messages.error(request, "That part does not exist.")
    except (SlideRejected, dropbox.DropboxError) as exc:
        messages.error(request, public_reason(exc))
    else:
        record(request, "import_slide", case=part.case_id, obj=slide, source="dropbox")
        messages.success(request, f"Imported {slide} into {part.case}.")
    return redirect("dropbox_list")


@lab_admin_required
@require_POST
def dropbox_import_matched(request):
    """Import every file whose name names an existing case and part."""
    imported, failed = dropbox.import_matched(user=request.user)
    for slide in imported:
        record(request, "import_slide", case=slide.part.case_id, obj=slide, source="dropbox-matched")
    if imported:
        messages.success(request, f"Imported {len(imported)} slide(s).")
    for name, reason in failed:
        messages.error(request, f"{name}: {public_reason(Exception(reason))}")
    if not imported and not failed:
        messages.info(request, "No file in the drop folder names an existing case and part.")
    return redirect("dropbox_list")
