"""The slide viewer: pages, slide metadata, Deep Zoom and IIIF tiles, associated images and overlays.

Pixel endpoints (tiles, IIIF, overlays) resolve access through `tile_access.resolve`, which is cached per
session and slide: a warm tile request runs no database query. Pages and metadata check afresh.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid

import openslide
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotFound,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from webapp.accounts.decorators import lab_admin_required
from webapp.audit.log import record
from webapp.cases.access import get_case_for_user

from . import iiif, overlays, resolution, tile_access, tiles
from .models import Slide

CACHE_CONTROL = "private, max-age=86400"  # slide files never change under a slide id
# Large IIIF renders (whole-slide overviews) are few at a time, so they cannot occupy every worker thread.
_big_renders = threading.BoundedSemaphore(2)
BIG_RENDER_PIXELS = 2048 * 2048
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def _text(status: int, message: str) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


def _not_modified(request: HttpRequest, etag: str) -> bool:
    header = request.headers.get("If-None-Match", "")
    if not header:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in candidates or "*" in candidates


def _cached_headers(response: HttpResponse, etag: str) -> HttpResponse:
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_CONTROL
    return response


def _opened(grant: tile_access.SlideGrant) -> tiles.OpenedSlide:
    return tiles.slides.get(grant.slide_id, grant.path)


def _image(
    request: HttpRequest, opened: tiles.OpenedSlide, key: str, content_type: str, make
) -> HttpResponse:
    """A cacheable image response: 304 when the browser holds it, else bytes from the encoded cache."""
    etag = opened.etag(key)
    if _not_modified(request, etag):
        return _cached_headers(HttpResponse(status=304), etag)
    started = time.perf_counter()
    data = make()
    response = _cached_headers(HttpResponse(data, content_type=content_type), etag)
    # Time spent reading and encoding (near zero on a cache hit): visible in the browser's dev tools.
    response["Server-Timing"] = f"tile;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


def _background(osr) -> tuple[int, int, int]:
    value = osr.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR) or "ffffff"
    try:
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
    except ValueError:
        return 255, 255, 255


# --- pages ------------------------------------------------------------------------------------------
def _slide_entry(slide: Slide) -> dict:
    block = f"-{slide.block_label}" if slide.block_label else ""
    return {
        "id": str(slide.pk),
        "title": f"{slide.part.label}{block} {slide.stain}",
        "thumbnail": reverse("slide_thumbnail", args=[slide.pk]),
        "width": slide.width,
        "height": slide.height,
    }


def _uuid_param(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Http404("No such slide.") from None


def viewer_context(
    slides: list[Slide], slide_id: str | None, compare_id: str | None, *, deidentified: bool,
    more_ids: list[str] | None = None,
) -> dict:
    """Context for `slides/_viewer.html`, for pages that embed the viewer (e.g. the report workspace).
    `more_ids`: the third and fourth slides of a grid."""
    entries = [_slide_entry(slide) for slide in slides]
    return {
        "viewer_slides": entries,
        "viewer_slide": slide_id or (entries[0]["id"] if entries else ""),
        "viewer_compare": compare_id or "",
        "viewer_more": ",".join(more_ids or []),
        "viewer_deidentified": deidentified,
        "viewer_meta_url": reverse("slide_viewer_meta", args=[ZERO_UUID]),
        "viewer_zero": ZERO_UUID,
    }


@require_safe
def case_viewer(request: HttpRequest, case_id: int) -> HttpResponse:
    """The whole-page viewer for a case: `?slide=<uuid>&compare=<uuid>&more=<uuid>,<uuid>&deidentified=1`
    (`more`: the third and fourth slides of a grid)."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    case = get_case_for_user(request.user, case_id)
    slides = list(
        Slide.objects.filter(part__case=case)
        .select_related("part")
        .order_by("part__label", "block_label", "created_at")
    )
    ids = {str(slide.pk) for slide in slides}
    slide_id = _uuid_param(request.GET.get("slide"))
    compare_id = _uuid_param(request.GET.get("compare"))
    more_ids = [_uuid_param(value) for value in request.GET.get("more", "").split(",")[:2] if value]
    if any(sid and sid not in ids for sid in (slide_id, compare_id, *more_ids)):
        raise Http404("No such slide in this case.")
    deidentified = request.GET.get("deidentified") == "1"
    context = {"case": case, **viewer_context(slides, slide_id, compare_id, deidentified=deidentified,
                                              more_ids=more_ids),
               "unknown_resolution": [(s, resolution.unknown_reason(s)) for s in slides if s.resolution_unknown],
               "can_set_mpp": request.user.is_lab_admin}
    return render(request, "slides/case_viewer.html", context)


@require_POST
@lab_admin_required
def slide_set_mpp(request: HttpRequest, slide_id) -> HttpResponse:
    """A lab admin sets a slide's microns per pixel (its file's is missing or implausible); analysis follows."""
    slide = Slide.objects.select_related("part__case").filter(pk=slide_id).first()
    if slide is None:
        raise Http404("No such slide.")
    case = get_case_for_user(request.user, slide.part.case_id)
    before = slide.mpp_override
    try:
        resolution.set_mpp(slide, float(request.POST.get("mpp", "")), request.user)
    except ValueError as exc:
        return _text(400, f"Not a plausible resolution: {exc}")
    record(request, "slide_set_mpp", case=case, obj=slide, before={"mpp": before}, after={"mpp": slide.mpp_override})
    return HttpResponseRedirect(f"{reverse('case_viewer', args=[case.pk])}?slide={slide.pk}")


@require_safe
def deidentified_viewer(request: HttpRequest, slide_id) -> HttpResponse:
    """One slide, with no case identifiers, label or macro: what an evaluation task embeds or links to."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    grant, slide = tile_access.resolve_slide(request, slide_id)
    context = viewer_context([slide], grant.slide_id, None, deidentified=True)
    context["viewer_slides"] = [{**context["viewer_slides"][0], "title": slide.stain}]
    return render(request, "slides/deidentified_viewer.html", context)


# --- metadata ---------------------------------------------------------------------------------------
def _bounds(slide: Slide) -> dict:
    props = slide.properties or {}

    def prop(name: str, default: int) -> int:
        try:
            return int(props.get(name, default))
        except (TypeError, ValueError):
            return default

    return (
        {
            "x": prop(openslide.PROPERTY_NAME_BOUNDS_X, 0),
            "y": prop(openslide.PROPERTY_NAME_BOUNDS_Y, 0),
            "width": prop(openslide.PROPERTY_NAME_BOUNDS_WIDTH, slide.width),
            "height": prop(openslide.PROPERTY_NAME_BOUNDS_HEIGHT, slide.height),
        }
        if tiles.DZ_LIMIT_BOUNDS
        else {"x": 0, "y": 0, "width": slide.width, "height": slide.height}
    )


@require_safe
def slide_meta(request: HttpRequest, slide_id) -> JsonResponse:
    """What the viewer needs about one slide. `?deidentified=1` (or a de-identified grant) leaves out
    everything that names the case, the file or the patient, and the label and macro images."""
    grant, slide = tile_access.resolve_slide(request, slide_id)
    deidentified = request.GET.get("deidentified") == "1" or not grant.full
    sid = grant.slide_id
    data = {
        "id": sid,
        "deidentified": deidentified,
        "stain": slide.stain,
        "vendor": slide.vendor,
        "scanner": slide.scanner,
        "width": slide.width,
        "height": slide.height,
        "mpp_x": slide.mpp_x,
        "mpp_y": slide.mpp_y,
        "objective_power": slide.objective_power,
        "levels": [
            {"width": dims[0], "height": dims[1], "downsample": ds}
            for dims, ds in zip(slide.level_dimensions, slide.level_downsamples, strict=False)
        ],
        "bounds": _bounds(slide),
        # The grid version in the URL (OpenSeadragon carries it to the tile URLs): tiles cached by a browser
        # under another Deep Zoom grid are never reused.
        "dzi": f"{reverse('slide_dzi', args=[sid])}?grid={tiles.GRID_VERSION}",
        "iiif": reverse("slide_iiif_info", args=[sid]),
        "overlays": reverse("slide_overlays", args=[sid]),
        "associated": [],
    }
    if not deidentified:
        data["title"] = str(slide)
        data["original_filename"] = slide.original_filename
        if grant.associated:
            data["associated"] = [
                {"name": name, "url": reverse("slide_associated", args=[sid, name])}
                for name in slide.associated_images
                if name in ("label", "macro")
            ]
    response = JsonResponse(data)
    response["Cache-Control"] = "private, no-cache"
    return response


@require_safe
def associated_image(request: HttpRequest, slide_id, name: str) -> HttpResponse:
    """Label or macro image: lab admins and the assigned pathologist only; never through a de-identified
    grant. Checked afresh on every request (rare, and these images carry identifiers)."""
    grant, slide = tile_access.resolve_slide(request, slide_id)
    if not grant.associated or name not in ("label", "macro") or name not in slide.associated_images:
        raise Http404("No such image.")
    try:
        opened = _opened(grant)
        data = tiles.cached_render(
            opened,
            ("associated", name),
            lambda: tiles.encode(
                iiif._flatten(tiles.associated_image(opened.osr, name).convert("RGBA"), _background(opened.osr)),
                "jpeg",
            ),
        )
    except (tiles.SlideUnreadable, KeyError):
        return HttpResponseNotFound("The image could not be read.", content_type="text/plain")
    record(request, "view_slide_associated_image", case=grant.case_id, obj=slide, image=name)
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, no-store"
    return response


# --- Deep Zoom --------------------------------------------------------------------------------------
@require_safe
def dzi_descriptor(request: HttpRequest, slide_id) -> HttpResponse:
    grant = tile_access.resolve(request, slide_id)
    try:
        opened = _opened(grant)
    except tiles.SlideUnreadable as exc:
        return _text(404, str(exc))
    response = HttpResponse(opened.dz.get_dzi("jpeg"), content_type="application/xml")
    return _cached_headers(response, opened.etag("dzi"))


@require_safe
def dzi_tile(request: HttpRequest, slide_id, level: int, col: int, row: int, fmt: str) -> HttpResponse:
    if fmt not in tiles.TILE_FORMATS:
        return _text(400, f"Tile format {fmt!r} is not served; use jpeg or png.")
    return dzi_tile_response(request, tile_access.resolve(request, slide_id), level, col, row, fmt)


def dzi_tile_response(
    request: HttpRequest, grant: tile_access.SlideGrant, level: int, col: int, row: int, fmt: str
) -> HttpResponse:
    """A Deep Zoom tile for a granted request (also the tile fast path's answer, webapp/slides/fast_tiles.py):
    304 when the browser holds it, a 404 with the reason for an address outside the pyramid or pixels that
    cannot be read."""
    try:
        opened = _opened(grant)
        return _image(
            request,
            opened,
            f"dz/{level}/{col}_{row}.{fmt}",
            tiles.TILE_FORMATS[fmt],
            lambda: tiles.dz_tile(opened, level, col, row, fmt),
        )
    except (tiles.TileNotFound, tiles.SlideUnreadable) as exc:
        return _text(404, str(exc))


# --- IIIF Image API 3.0 -----------------------------------------------------------------------------
def _iiif_cors(view):
    """CORS headers on an IIIF response (compliance level 1): the app's own origin and
    PATHALIGN_IIIF_CORS_ORIGINS (iiif.cors_headers). Refusals raised as 404 get none."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        own = settings.PUBLIC_BASE_URL or f"{request.scheme}://{request.get_host()}"
        own_origin = "/".join(own.split("/")[:3])
        for name, value in iiif.cors_headers(request.headers.get("Origin"), own_origin,
                                             settings.IIIF_CORS_ORIGINS).items():
            response[name] = value
        return response

    return wrapped


@_iiif_cors
@require_safe
def iiif_base(request: HttpRequest, slide_id) -> HttpResponse:
    tile_access.resolve(request, slide_id)
    response = HttpResponseRedirect(reverse("slide_iiif_info", args=[slide_id]))
    response.status_code = 303  # the spec: the base URI redirects to info.json with 303 See Other
    return response


@_iiif_cors
@require_safe
def iiif_info(request: HttpRequest, slide_id) -> HttpResponse:
    grant = tile_access.resolve(request, slide_id)
    try:
        opened = _opened(grant)
    except tiles.SlideUnreadable as exc:
        return _text(404, str(exc))
    width, height = opened.osr.dimensions
    base = request.build_absolute_uri(reverse("slide_iiif_base", args=[grant.slide_id]))
    response = JsonResponse(iiif.info(base, width, height))
    if "application/ld+json" in request.headers.get("Accept", ""):
        response["Content-Type"] = f'application/ld+json;profile="{iiif.CONTEXT}"'
    response["Cache-Control"] = "private, max-age=3600"
    return response


@_iiif_cors
@require_safe
def iiif_image(
    request: HttpRequest, slide_id, region: str, size: str, rotation: str, quality_format: str
) -> HttpResponse:
    grant = tile_access.resolve(request, slide_id)
    try:
        opened = _opened(grant)
    except tiles.SlideUnreadable as exc:
        return _text(404, str(exc))
    width, height = opened.osr.dimensions
    try:
        parsed = iiif.parse_request(region, size, rotation, quality_format, width, height)
    except iiif.IIIFError as exc:
        return _text(exc.status, exc.message)
    fmt = "jpeg" if parsed.format == "jpg" else "png"
    content_type = "image/jpeg" if fmt == "jpeg" else "image/png"

    def make() -> bytes:
        return tiles.cached_render(opened, parsed.cache_key, render_bytes)

    def render_bytes() -> bytes:
        big = (
            parsed.region[2] * parsed.region[3] > BIG_RENDER_PIXELS * 16
            or parsed.size[0] * parsed.size[1] > BIG_RENDER_PIXELS
        )
        if big and not _big_renders.acquire(timeout=20):
            raise iiif.IIIFError(503, "The server is busy rendering large images; try again shortly.")
        try:
            return tiles.encode(iiif.render(opened.osr, parsed, _background(opened.osr)), fmt)
        finally:
            if big:
                _big_renders.release()

    key = "iiif/" + "/".join(str(part) for part in parsed.cache_key)
    try:
        response = _image(request, opened, key, content_type, make)
    except iiif.IIIFError as exc:
        return _text(exc.status, exc.message)
    except tiles.SlideUnreadable as exc:
        return _text(404, str(exc))
    response["Link"] = f'<{iiif.PROFILE_URI}>;rel="profile"'
    return response


# --- overlays ---------------------------------------------------------------------------------------
def _overlay_slide(request: HttpRequest, slide_id) -> tuple[Slide, bool]:
    """The slide and whether this grant may see its overlays (a rating study's de-identified grant only
    when the study allows them: raters are blind to the model otherwise)."""
    grant = tile_access.resolve(request, slide_id)
    return Slide.objects.select_related("part").get(pk=grant.slide_id), tile_access.overlays_allowed(grant)


@require_safe
def overlay_list(request: HttpRequest, slide_id) -> JsonResponse:
    slide, allowed = _overlay_slide(request, slide_id)
    items = [
        {**item, "url": reverse("slide_overlay", args=[slide.pk, item["name"]])}
        for item in (overlays.available_overlays(slide) if allowed else [])
    ]
    response = JsonResponse({"overlays": items})
    response["Cache-Control"] = "private, no-cache"
    return response


@require_safe
def overlay_data(request: HttpRequest, slide_id, name: str) -> JsonResponse:
    slide, allowed = _overlay_slide(request, slide_id)
    if not allowed:
        raise Http404("No such overlay for this slide.")
    try:
        data = overlays.get_overlay(slide, name)
    except overlays.OverlayError as exc:
        return JsonResponse({"error": str(exc)}, status=500)
    if data is None:
        raise Http404("No such overlay for this slide.")
    data["tissue"] = _tissue_mask(request, slide_id, slide)
    response = JsonResponse(data)
    response["Cache-Control"] = "private, no-cache"
    return response


def _tissue_mask(request: HttpRequest, slide_id, slide: Slide) -> dict | None:
    """The slide's tissue mask (overlays.tissue_mask_json), made once per slide file and resolution and kept
    in the encoded cache; None where the file cannot be read or masked within the pixel budget."""
    grant = tile_access.resolve(request, slide_id)
    try:
        opened = _opened(grant)
        raw = tiles.cached_render(
            opened, ("tissue-mask", slide.mpp_x), lambda: overlays.tissue_mask_json(opened.osr, slide.mpp_x)
        )
    except tiles.SlideUnreadable:
        return None
    return json.loads(raw) if raw else None
