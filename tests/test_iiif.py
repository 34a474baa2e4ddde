"""IIIF Image API 3.0 level 1: parameter parsing (pure), rendering, and the HTTP endpoints."""
from __future__ import annotations

import io
import runpy

import numpy as np
import openslide
import pytest
from django.urls import reverse
from PIL import Image

from webapp.slides import iiif
from webapp.slides.ingest import ingest_slide

W, H = 3072, 2048


# --- parsing, no database -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("full", (0, 0, W, H)),
        ("square", (512, 0, H, H)),
        ("0,0,512,512", (0, 0, 512, 512)),
        ("3000,2000,500,500", (3000, 2000, 72, 48)),  # partly outside: cropped
        ("pct:50,50,50,50", (1536, 1024, 1536, 1024)),
    ],
)
def test_regions(text, expected):
    assert iiif.parse_region(text, W, H) == expected


@pytest.mark.parametrize("text", ["", "0,0,0,10", "0,0,10", "a,b,c,d", "-1,0,10,10", "3072,0,10,10", "0,2048,5,5",
                                  "pct:x", "0.5,0,10,10", "Full"])
def test_bad_regions(text):
    with pytest.raises(iiif.IIIFError) as error:
        iiif.parse_region(text, W, H)
    assert error.value.status == 400 and error.value.message


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("max", (512, 256), (512, 256)),
        ("max", (8192, 4096), (4096, 2048)),  # limited by maxWidth
        ("^max", (512, 256), (4096, 2048)),
        ("256,", (512, 256), (256, 128)),
        (",128", (512, 256), (256, 128)),
        ("100,100", (512, 256), (100, 100)),  # distorting is allowed
        ("pct:25", (512, 256), (128, 64)),
        ("!100,100", (512, 256), (100, 50)),
        ("!1000,1000", (512, 256), (512, 256)),  # no upscaling without ^
        ("^!1024,1024", (512, 256), (1024, 512)),
        ("^1024,", (512, 256), (1024, 512)),
        ("^pct:200", (512, 256), (1024, 512)),
    ],
)
def test_sizes(text, region, expected):
    assert iiif.parse_size(text, *region) == expected


@pytest.mark.parametrize("text", ["", ",", "0,", ",0", "513,", ",257", "600,100", "pct:0", "pct:101", "abc", "!w,h",
                                  "^5000,", "pct:", "-5,"])
def test_bad_sizes(text):
    with pytest.raises(iiif.IIIFError) as error:
        iiif.parse_size(text, 512, 256)
    assert error.value.status == 400


def test_rotation_quality_format():
    iiif.parse_rotation("0")
    iiif.parse_rotation("360")
    for unsupported in ("90", "!0", "22.5"):
        with pytest.raises(iiif.IIIFError) as error:
            iiif.parse_rotation(unsupported)
        assert error.value.status == 501
    for bad in ("", "x", "-90", "361"):
        with pytest.raises(iiif.IIIFError) as error:
            iiif.parse_rotation(bad)
        assert error.value.status == 400
    assert iiif.parse_quality_format("default.jpg") == ("default", "jpg")
    assert iiif.parse_quality_format("color.png") == ("color", "png")
    assert iiif.parse_quality_format("gray.jpg") == ("gray", "jpg")
    for unsupported in ("bitonal.jpg", "default.webp", "default.tif"):
        with pytest.raises(iiif.IIIFError) as error:
            iiif.parse_quality_format(unsupported)
        assert error.value.status == 501
    for bad in ("default", "fancy.jpg", "default.bmp", ".jpg"):
        with pytest.raises(iiif.IIIFError) as error:
            iiif.parse_quality_format(bad)
        assert error.value.status == 400


def test_info_document():
    doc = iiif.info("https://example.org/slides/x/iiif", 100_000, 50_000)
    assert doc["@context"] == "http://iiif.io/api/image/3/context.json"
    assert doc["type"] == "ImageService3" and doc["protocol"] == "http://iiif.io/api/image"
    assert doc["profile"] == "level1" and doc["id"] == "https://example.org/slides/x/iiif"
    assert (doc["width"], doc["height"]) == (100_000, 50_000)
    tile = doc["tiles"][0]
    assert tile["width"] == 512 and tile["scaleFactors"][0] == 1
    assert 100_000 / tile["scaleFactors"][-1] <= 512  # the coarsest level fits one tile
    assert all(s["width"] <= doc["maxWidth"] for s in doc["sizes"]) and doc["sizes"]
    assert doc["sizes"] == sorted(doc["sizes"], key=lambda s: s["width"])


# --- rendering against a real slide file, no database -------------------------------------------------
def test_render_reads_from_the_right_level(good_slide):
    osr = openslide.OpenSlide(str(good_slide))
    calls = []
    original = osr.read_region

    def spy(location, level, size):
        calls.append((location, level, size))
        return original(location, level, size)

    osr.read_region = spy
    image = iiif.render(osr, iiif.parse_request("full", "max", "0", "default.jpg", W, H))
    assert image.size == (W, H) and calls[-1][1] == 0
    image = iiif.render(osr, iiif.parse_request("full", "384,", "0", "default.jpg", W, H))
    assert image.size == (384, 256) and calls[-1][1] == 1  # downsample 8: level 1 (4x) and resize
    image = iiif.render(osr, iiif.parse_request("1024,1024,256,256", "max", "0", "gray.png", W, H))
    assert image.size == (256, 256) and image.mode == "L"


def test_render_in_chunks_matches_a_single_read(good_slide, monkeypatch):
    osr = openslide.OpenSlide(str(good_slide))
    request = iiif.parse_request("full", "768,", "0", "default.jpg", W, H)
    whole = iiif.render(osr, iiif.parse_request("full", "768,", "0", "default.jpg", W, H))
    monkeypatch.setattr(iiif, "READ_CHUNK", 300)
    chunked = iiif.render(osr, request)
    assert chunked.size == whole.size
    difference = np.abs(np.asarray(chunked, dtype=float) - np.asarray(whole, dtype=float)).mean()
    assert difference < 6  # resampling seams only


def test_render_refuses_huge_reads(good_slide, monkeypatch):
    osr = openslide.OpenSlide(str(good_slide))
    monkeypatch.setattr(iiif, "MAX_READ_PIXELS", 1000)
    with pytest.raises(iiif.IIIFError) as error:
        iiif.render(osr, iiif.parse_request("full", "max", "0", "default.jpg", W, H))
    assert error.value.status == 400 and "smaller" in error.value.message


# --- HTTP ---------------------------------------------------------------------------------------------
@pytest.fixture
def slide(cast, case_factory, good_slide):
    case = case_factory(assigned_to=cast.path1)
    return ingest_slide(good_slide, part=case.parts.first(), original_filename="x.svs", move=False)


def image_url(slide, region="full", size="max", rotation="0", qf="default.jpg") -> str:
    return reverse("slide_iiif_image", args=[slide.pk, region, size, rotation, qf])


def test_info_json_endpoint(slide, cast, client_for):
    client = client_for(cast.path1)
    response = client.get(reverse("slide_iiif_info", args=[slide.pk]))
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    doc = response.json()
    assert doc["id"] == f"http://testserver/slides/{slide.pk}/iiif"
    assert doc["profile"] == "level1" and doc["type"] == "ImageService3"
    assert (doc["width"], doc["height"]) == (W, H)
    assert doc["tiles"][0]["scaleFactors"] == [1, 2, 4, 8]
    assert {"width": 384, "height": 256} in doc["sizes"]
    ld = client.get(reverse("slide_iiif_info", args=[slide.pk]), HTTP_ACCEPT="application/ld+json")
    assert ld["Content-Type"].startswith("application/ld+json")
    base = client.get(reverse("slide_iiif_base", args=[slide.pk]))
    assert base.status_code == 303 and base["Location"].endswith("/iiif/info.json")


@pytest.mark.parametrize(
    ("region", "size", "qf", "expected_size", "fmt"),
    [
        ("full", "max", "default.jpg", (W, H), "JPEG"),
        ("full", "384,", "default.jpg", (384, 256), "JPEG"),
        ("full", ",128", "color.png", (192, 128), "PNG"),
        ("square", "200,200", "default.jpg", (200, 200), "JPEG"),
        ("512,512,512,512", "256,", "default.jpg", (256, 256), "JPEG"),
        ("0,0,1024,512", "!256,256", "gray.jpg", (256, 128), "JPEG"),
        ("pct:0,0,50,50", "pct:10", "default.png", (154, 102), "PNG"),
    ],
)
def test_image_requests(slide, cast, client_for, region, size, qf, expected_size, fmt):
    response = client_for(cast.path1).get(image_url(slide, region, size, "0", qf))
    assert response.status_code == 200, response.content
    image = Image.open(io.BytesIO(response.content))
    assert image.size == expected_size and image.format == fmt
    assert response["Content-Type"] == ("image/png" if fmt == "PNG" else "image/jpeg")
    assert "level1.json" in response["Link"] and response["ETag"]


def test_iiif_tiles_as_openseadragon_asks_for_them(slide, cast, client_for):
    client = client_for(cast.path1)
    # Scale factor 4, tile (1, 0): region 2048,0,2048,2048 -> 256 px wide (edge tile cropped to 1024 wide).
    response = client.get(image_url(slide, "2048,0,2048,2048", "256,"))
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (256, 512)
    again = client.get(image_url(slide, "2048,0,2048,2048", "256,"), HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304


@pytest.mark.parametrize(
    ("parts", "status"),
    [
        (("0,0,0,0", "max", "0", "default.jpg"), 400),
        (("nonsense", "max", "0", "default.jpg"), 400),
        (("99999,0,10,10", "max", "0", "default.jpg"), 400),
        (("full", "5000,", "0", "default.jpg"), 400),
        (("0,0,100,100", "200,", "0", "default.jpg"), 400),
        (("full", "max", "abc", "default.jpg"), 400),
        (("full", "max", "0", "default.bmp"), 400),
        (("full", "max", "0", "defaultjpg"), 400),
        (("full", "max", "90", "default.jpg"), 501),
        (("full", "max", "!0", "default.jpg"), 501),
        (("full", "max", "0", "bitonal.jpg"), 501),
        (("full", "max", "0", "default.webp"), 501),
    ],
)
def test_bad_parameters(slide, cast, client_for, parts, status):
    response = client_for(cast.path1).get(image_url(slide, *parts))
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/plain") and len(response.content) > 10


def test_iiif_is_closed_to_others(slide, cast, client_for):
    for user in (cast.outsider, cast.evaluator, cast.path2, None):
        client = client_for(user)
        assert client.get(reverse("slide_iiif_info", args=[slide.pk])).status_code == 404
        assert client.get(image_url(slide)).status_code == 404
        assert client.get(reverse("slide_iiif_base", args=[slide.pk])).status_code == 404


# --- CORS (level 1 requires it on info.json and images) ------------------------------------------------
MIRADOR = "https://mirador.example.org"


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        (None, [], "http://app"),  # not cross-origin: the app's own origin
        ("http://app", [], "http://app"),
        (MIRADOR, [], None),  # not configured: no header, the browser keeps the response from the page
        (MIRADOR, [MIRADOR], MIRADOR),
        ("https://evil.example", [MIRADOR], None),
        ("https://evil.example", ["*"], "*"),
    ],
)
def test_cors_headers(origin, allowed, expected):
    headers = iiif.cors_headers(origin, "http://app", allowed)
    assert headers.get("Access-Control-Allow-Origin") == expected
    assert headers["Vary"] == "Origin"
    # Credentials (the session cookie every IIIF URL needs) only for a named origin, never with *.
    assert ("Access-Control-Allow-Credentials" in headers) == (expected not in (None, "*") and origin is not None)


def test_iiif_responses_carry_the_configured_cors_header(slide, cast, client_for, settings):
    client = client_for(cast.path1)
    info_url = reverse("slide_iiif_info", args=[slide.pk])
    tile_url = image_url(slide, "0,0,512,512", "256,")
    error_url = image_url(slide, "full", "max", "90", "default.jpg")

    settings.IIIF_CORS_ORIGINS = []  # the default: the app's own origin only
    for url in (info_url, tile_url):
        own = client.get(url)
        assert own.status_code == 200 and own["Access-Control-Allow-Origin"] == "http://testserver"
        foreign = client.get(url, HTTP_ORIGIN=MIRADOR)
        assert foreign.status_code == 200 and "Access-Control-Allow-Origin" not in foreign
        assert "Origin" in foreign["Vary"]

    settings.IIIF_CORS_ORIGINS = [MIRADOR]
    for url, status in ((info_url, 200), (tile_url, 200), (error_url, 501)):
        response = client.get(url, HTTP_ORIGIN=MIRADOR)
        assert response.status_code == status
        assert response["Access-Control-Allow-Origin"] == MIRADOR
        assert response["Access-Control-Allow-Credentials"] == "true"
        assert "Access-Control-Allow-Origin" not in client.get(url, HTTP_ORIGIN="https://other.example")
    # The 303 from the base URI too (a client follows it from the foreign page).
    base = client.get(reverse("slide_iiif_base", args=[slide.pk]), HTTP_ORIGIN=MIRADOR)
    assert base.status_code == 303 and base["Access-Control-Allow-Origin"] == MIRADOR

    settings.IIIF_CORS_ORIGINS = ["*"]
    response = client.get(info_url, HTTP_ORIGIN="https://any.example")
    assert response["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in response
    # A user who may not see the slide gets a 404 and no CORS header: nothing for a foreign page to read.
    denied = client_for(cast.outsider).get(info_url, HTTP_ORIGIN=MIRADOR)
    assert denied.status_code == 404 and "Access-Control-Allow-Origin" not in denied


@pytest.mark.parametrize(("value", "expected"), [
    ("", []), (f"{MIRADOR}, http://localhost:8080", [MIRADOR, "http://localhost:8080"]), ("*", ["*"]),
    ("mirador.example.org", None), (f"{MIRADOR}/iiif", None),
])
def test_the_cors_setting_is_checked(monkeypatch, value, expected):
    from pathlib import Path

    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("PATHALIGN_IIIF_CORS_ORIGINS", value)
    settings_file = str(Path(__file__).resolve().parent.parent / "webapp" / "settings.py")
    if expected is None:
        with pytest.raises(ImproperlyConfigured, match="PATHALIGN_IIIF_CORS_ORIGINS"):
            runpy.run_path(settings_file, run_name="settings_probe")
    else:
        assert runpy.run_path(settings_file, run_name="settings_probe")["IIIF_CORS_ORIGINS"] == expected
