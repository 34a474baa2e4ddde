"""Deep Zoom tiles, slide metadata, associated images, overlays and the viewer pages: access and caching."""
from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import tifffile
from django.urls import reverse
from PIL import Image

from webapp.audit.models import AuditEvent
from webapp.slides import overlays, tile_access, tiles
from webapp.slides.ingest import ingest_slide


# --- fixtures ---------------------------------------------------------------------------------------
def add_slide(case, path: Path, stain: str = "H&E", block: str = "1"):
    return ingest_slide(path, part=case.parts.first(), original_filename="Patient Doe scan.svs", stain=stain,
                        block_label=block, move=False)


@pytest.fixture
def viewer_case(cast, case_factory, good_slide):
    """A case assigned to pathologist one, with an H&E and an IHC slide."""
    case = case_factory(assigned_to=cast.path1)
    case.he = add_slide(case, good_slide)
    case.ihc = add_slide(case, good_slide, stain="Ki-67", block="2")
    return case


@pytest.fixture
def fake_overlay():
    def provider(slide):
        if slide.stain != "H&E":
            return None
        coords = [[x, y] for y in range(0, 2048, 256) for x in range(0, 3072, 256)]
        return {"patch_size": 256, "coords": coords, "values": [i / len(coords) for i in range(len(coords))],
                "label": "Fake attention"}

    overlays.register_overlay("fake-attention", provider)
    yield provider
    overlays.unregister_overlay("fake-attention")


def dzi_url(slide) -> str:
    return reverse("slide_dzi", args=[slide.pk])


def tile_url(slide, level: int, col: int, row: int, fmt: str = "jpeg") -> str:
    return reverse("slide_dzi_tile", args=[slide.pk, level, col, row, fmt])


def top_level(slide) -> int:
    return tiles.slides.get(str(slide.pk), slide.path).dz.level_count - 1


# --- Deep Zoom --------------------------------------------------------------------------------------
def test_dzi_descriptor_and_tiles(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    response = client.get(dzi_url(viewer_case.he))
    assert response.status_code == 200 and response["Content-Type"] == "application/xml"
    xml = response.content.decode()
    # A JPEG-tiled slide gets the tile-aligned grid (its 256 px tiles, no overlap: tests/test_tiles_passthrough.py)
    assert 'TileSize="256"' in xml and 'Overlap="0"' in xml and 'Format="jpeg"' in xml
    assert 'Width="3072"' in xml and 'Height="2048"' in xml
    level = top_level(viewer_case.he)
    response = client.get(tile_url(viewer_case.he, level, 1, 1))
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (256, 256)
    assert response["ETag"].startswith('"') and "max-age" in response["Cache-Control"]
    assert "private" in response["Cache-Control"]
    # The whole slide fits in the one tile of a low level.
    small = client.get(tile_url(viewer_case.he, 0, 0, 0))
    assert small.status_code == 200 and Image.open(io.BytesIO(small.content)).size == (1, 1)
    png = client.get(tile_url(viewer_case.he, level, 0, 0, "png"))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_tile_urls_carry_only_uuids(viewer_case):
    url = tile_url(viewer_case.he, 5, 1, 2)
    assert viewer_case.accession_number not in url and "Patient" not in url
    assert url == f"/slides/{viewer_case.he.pk}/dzi/slide_files/5/1_2.jpeg"


def test_out_of_range_tiles_are_404_and_bad_format_400(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    level = top_level(viewer_case.he)
    assert client.get(tile_url(viewer_case.he, level, 99, 0)).status_code == 404
    assert client.get(tile_url(viewer_case.he, level, 0, 99)).status_code == 404
    assert client.get(tile_url(viewer_case.he, level + 1, 0, 0)).status_code == 404
    assert client.get(tile_url(viewer_case.he, 10**12, 0, 0)).status_code == 404
    bad = client.get(tile_url(viewer_case.he, level, 0, 0, "gif"))
    assert bad.status_code == 400 and b"jpeg or png" in bad.content
    # A negative address does not even match the URL pattern.
    assert client.get(f"/slides/{viewer_case.he.pk}/dzi/slide_files/{level}/-1_0.jpeg").status_code == 404


def test_etag_gives_304(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    url = tile_url(viewer_case.he, top_level(viewer_case.he), 0, 0)
    first = client.get(url)
    again = client.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == first["ETag"]
    assert client.get(url, HTTP_IF_NONE_MATCH='"something-else"').status_code == 200
    # Different tiles, different tags.
    other = client.get(tile_url(viewer_case.he, top_level(viewer_case.he), 1, 0))
    assert other["ETag"] != first["ETag"]


def test_encoded_tiles_are_cached(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    url = tile_url(viewer_case.he, top_level(viewer_case.he), 2, 1)
    hits = tiles.encoded.hits
    first = client.get(url).content
    assert tiles.encoded.hits == hits
    assert client.get(url).content == first
    assert tiles.encoded.hits == hits + 1


def test_warm_tile_request_runs_no_query(viewer_case, cast, client_for, django_assert_max_num_queries,
                                         django_assert_num_queries):
    client = client_for(cast.path1)
    level = top_level(viewer_case.he)
    assert client.get(tile_url(viewer_case.he, level, 0, 0)).status_code == 200  # checks and caches the grant
    with django_assert_max_num_queries(1):
        assert client.get(tile_url(viewer_case.he, level, 1, 0)).status_code == 200  # a new tile: rendered
    # One query per warm request: the cached grant's stamp against the database (user, case, session), so a
    # reassignment, a deactivation or a logout stops tiles at once in every process (tile_access.py).
    with django_assert_num_queries(3):
        assert client.get(tile_url(viewer_case.he, level, 1, 0)).status_code == 200  # cached bytes
        assert client.get(tile_url(viewer_case.he, level, 2, 0)).status_code == 200
        assert client.get(dzi_url(viewer_case.he)).status_code == 200


def test_grant_is_per_session_and_expires(viewer_case, cast, client_for, monkeypatch):
    client = client_for(cast.path1)
    url = tile_url(viewer_case.he, top_level(viewer_case.he), 0, 0)
    assert client.get(url).status_code == 200
    # Take the case away: the cached grant stops at once (its stamp no longer matches the case).
    viewer_case.assigned_to = cast.path2
    viewer_case.save()
    assert client.get(url).status_code == 404
    # Another session of another user never shares the grant.
    assert client_for(cast.path2).get(url).status_code == 200


def test_logout_revokes_the_grant_at_once(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    url = tile_url(viewer_case.he, top_level(viewer_case.he), 0, 0)
    assert client.get(url).status_code == 200
    stolen = client.cookies["sessionid"].value
    client.post(reverse("logout"))
    from django.test import Client

    replay = Client()
    replay.cookies["sessionid"] = stolen
    assert replay.get(url).status_code == 404


@pytest.mark.parametrize("who", ["outsider", "evaluator", "path2", None])
def test_others_get_404_everywhere(viewer_case, cast, client_for, who, fake_overlay):
    client = client_for(getattr(cast, who) if who else None)
    slide = viewer_case.he
    for url in [
        dzi_url(slide),
        tile_url(slide, 5, 0, 0),
        reverse("slide_viewer_meta", args=[slide.pk]),
        reverse("slide_associated", args=[slide.pk, "label"]),
        reverse("slide_overlays", args=[slide.pk]),
        reverse("slide_overlay", args=[slide.pk, "fake-attention"]),
        reverse("slide_iiif_info", args=[slide.pk]),
        reverse("slide_iiif_image", args=[slide.pk, "full", "max", "0", "default.jpg"]),
    ]:
        response = client.get(url)
        assert response.status_code == 404, (who, url, response.status_code)
    for page in (reverse("case_viewer", args=[viewer_case.pk]), reverse("slide_deidentified_viewer", args=[slide.pk])):
        assert client.get(page).status_code == (302 if who is None else 404)  # pages send anonymous users to log in


def test_view_slide_is_audited_once_per_session(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    level = top_level(viewer_case.he)
    client.get(reverse("slide_viewer_meta", args=[viewer_case.he.pk]))
    for col in range(3):
        client.get(tile_url(viewer_case.he, level, col, 0))
    client.get(dzi_url(viewer_case.he))
    events = AuditEvent.objects.filter(action="view_slide", object_id=str(viewer_case.he.pk))
    assert events.count() == 1
    assert events.get().case_id == viewer_case.pk and events.get().username == "dr_one"
    client_for(cast.admin).get(dzi_url(viewer_case.he))  # another session: another event
    assert events.count() == 2


def test_corrupt_tile_data_gives_a_clean_404(cast, case_factory, good_slide, client_for):
    case = case_factory(assigned_to=cast.path1)
    slide = add_slide(case, good_slide)
    with tifffile.TiffFile(slide.path) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    with open(slide.path, "r+b") as handle:
        for offset, count in spans:
            handle.seek(offset)
            handle.write(b"\x00garbage" * (count // 8))
    client = client_for(cast.path1)
    level = top_level(slide)
    started = time.monotonic()
    response = client.get(tile_url(slide, level, 0, 0))
    assert response.status_code == 404 and b"could not be decoded" in response.content
    # The broken handle was dropped: the next request reopens and fails just as cleanly, quickly.
    assert client.get(tile_url(slide, level, 1, 0)).status_code == 404
    iiif_response = client.get(reverse("slide_iiif_image", args=[slide.pk, "0,0,256,256", "max", "0", "default.jpg"]))
    assert iiif_response.status_code == 404
    assert time.monotonic() - started < 10


def test_missing_file_gives_a_clean_404(cast, case_factory, good_slide, client_for):
    case = case_factory(assigned_to=cast.path1)
    slide = add_slide(case, good_slide)
    slide.path.unlink()
    response = client_for(cast.path1).get(dzi_url(slide))
    assert response.status_code == 404 and b"could not be opened" in response.content


# --- metadata, label and macro ------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["admin", "path1"])
def test_metadata_and_associated_images_for_allowed_roles(viewer_case, cast, client_for, who):
    client = client_for(getattr(cast, who))
    meta = client.get(reverse("slide_viewer_meta", args=[viewer_case.he.pk])).json()
    assert meta["mpp_x"] == pytest.approx(0.5) and meta["objective_power"] == 20
    assert meta["width"] == 3072 and meta["height"] == 2048 and len(meta["levels"]) == 2
    assert meta["scanner"] == "SYNTH-1" and meta["vendor"] == "aperio"
    assert meta["bounds"] == {"x": 0, "y": 0, "width": 3072, "height": 2048}
    assert meta["dzi"] == f"{dzi_url(viewer_case.he)}?grid={tiles.GRID_VERSION}" and meta["deidentified"] is False
    assert meta["title"].startswith(viewer_case.accession_number)
    names = {item["name"]: item["url"] for item in meta["associated"]}
    assert set(names) == {"label", "macro"}
    label = client.get(names["label"])
    assert label.status_code == 200 and Image.open(io.BytesIO(label.content)).size == (120, 120)
    assert "no-store" in label["Cache-Control"]
    assert AuditEvent.objects.filter(action="view_slide_associated_image").exists()


def test_deidentified_view_never_shows_label_or_identifiers(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    meta = client.get(reverse("slide_viewer_meta", args=[viewer_case.he.pk]) + "?deidentified=1").json()
    assert meta["deidentified"] is True and meta["associated"] == []
    assert "title" not in meta and "original_filename" not in meta
    text = str(meta)
    assert viewer_case.accession_number not in text and "Patient" not in text
    page = client.get(reverse("slide_deidentified_viewer", args=[viewer_case.he.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-deidentified="1"' in html and viewer_case.accession_number not in html
    assert "thumbnail" not in html


def test_evaluator_with_a_deidentified_grant(viewer_case, cast, client_for):
    client = client_for(cast.evaluator)
    url = tile_url(viewer_case.he, top_level(viewer_case.he), 0, 0)
    assert client.get(url).status_code == 404
    tile_access.register_grant_source("test-open", lambda source_id, user_id: True)
    session = client.session
    session[tile_access.SESSION_GRANTS] = {str(viewer_case.he.pk): [time.time() + 600, "test-open", 1]}
    session.save()
    assert client.get(url).status_code == 200
    meta = client.get(reverse("slide_viewer_meta", args=[viewer_case.he.pk])).json()
    assert meta["deidentified"] is True and meta["associated"] == [] and "title" not in meta
    for name in ("label", "macro"):
        assert client.get(reverse("slide_associated", args=[viewer_case.he.pk, name])).status_code == 404
    assert client.get(reverse("slide_deidentified_viewer", args=[viewer_case.he.pk])).status_code == 200
    # The grant is for that slide only, and the case page stays closed.
    assert client.get(tile_url(viewer_case.ihc, top_level(viewer_case.ihc), 0, 0)).status_code == 404
    assert client.get(reverse("case_viewer", args=[viewer_case.pk])).status_code == 404
    event = AuditEvent.objects.get(action="view_slide", username="eva")
    assert event.details["deidentified"] is True


def test_expired_deidentified_grant_is_refused(viewer_case, cast, client_for):
    client = client_for(cast.evaluator)
    session = client.session
    session[tile_access.SESSION_GRANTS] = {str(viewer_case.he.pk): [time.time() - 1, "study", 1]}
    session.save()
    assert client.get(dzi_url(viewer_case.he)).status_code == 404


def test_unknown_associated_image_is_404(viewer_case, cast, client_for):
    client = client_for(cast.admin)
    assert client.get(reverse("slide_associated", args=[viewer_case.he.pk, "thumbnail"])).status_code == 404
    assert client.get(reverse("slide_associated", args=[viewer_case.he.pk, "nothing"])).status_code == 404


# --- overlays -----------------------------------------------------------------------------------------
def test_overlay_registry_and_endpoints(viewer_case, cast, client_for, fake_overlay):
    client = client_for(cast.path1)
    listing = client.get(reverse("slide_overlays", args=[viewer_case.he.pk])).json()["overlays"]
    assert [item["name"] for item in listing] == ["fake-attention"]
    assert listing[0]["label"] == "Fake attention" and listing[0]["patches"] == 96
    data = client.get(listing[0]["url"]).json()
    assert data["patch_size"] == 256 and len(data["coords"]) == len(data["values"]) == 96
    assert data["min"] == 0 and data["max"] == pytest.approx(95 / 96)
    # The provider has nothing for the IHC slide: not listed, and 404.
    assert client.get(reverse("slide_overlays", args=[viewer_case.ihc.pk])).json()["overlays"] == []
    assert client.get(reverse("slide_overlay", args=[viewer_case.ihc.pk, "fake-attention"])).status_code == 404
    assert client.get(reverse("slide_overlay", args=[viewer_case.he.pk, "unknown"])).status_code == 404


def test_overlay_validation(viewer_case, cast, client_for):
    with pytest.raises(ValueError):
        overlays.register_overlay("Bad Name", lambda slide: None)
    overlays.register_overlay("broken", lambda slide: {"patch_size": 256, "coords": [[0, 0]], "values": []})
    overlays.register_overlay("crashing", lambda slide: 1 / 0)
    try:
        client = client_for(cast.path1)
        assert client.get(reverse("slide_overlays", args=[viewer_case.he.pk])).json()["overlays"] == []
        response = client.get(reverse("slide_overlay", args=[viewer_case.he.pk, "broken"]))
        assert response.status_code == 500 and "1 coords but 0 values" in response.json()["error"]
    finally:
        overlays.unregister_overlay("broken")
        overlays.unregister_overlay("crashing")


# --- pages --------------------------------------------------------------------------------------------
def test_case_viewer_page(viewer_case, cast, client_for):
    client = client_for(cast.path1)
    url = reverse("case_viewer", args=[viewer_case.pk])
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "data-pa-viewer" in html and f'data-slide="{viewer_case.he.pk}"' in html
    assert str(viewer_case.ihc.pk) in html and "vendor/openseadragon/openseadragon.min.js" in html
    assert "css/viewer.css" in html and "<script>" not in html  # CSP: no inline script
    both = client.get(url, {"slide": str(viewer_case.ihc.pk), "compare": str(viewer_case.he.pk)})
    assert f'data-compare="{viewer_case.he.pk}"' in both.content.decode()
    assert client.get(url, {"slide": "00000000-0000-0000-0000-000000000000"}).status_code == 404
    assert client.get(url, {"slide": "not-a-uuid"}).status_code == 404
    detail = client.get(reverse("case_detail", args=[viewer_case.pk])).content.decode()
    assert f"{url}?slide={viewer_case.he.pk}" in detail


# --- the caches themselves ----------------------------------------------------------------------------
def test_bytes_lru_is_bounded():
    cache = tiles.BytesLRU(100, max_item_bytes=60)
    for i in range(5):
        cache.put(("k", i), bytes(30))
    assert cache.size <= 100 and len(cache) == 3
    assert cache.get(("k", 0)) is None and cache.get(("k", 4)) == bytes(30)
    cache.put(("big",), bytes(61))
    assert cache.get(("big",)) is None


def test_slide_lru_is_bounded_and_shares_the_decoded_cache(good_slide):
    lru = tiles.SlideLRU(2, tiles.DECODED)
    first = lru.get("a", good_slide)
    assert lru.get("a", good_slide) is first
    lru.get("b", good_slide)
    lru.get("c", good_slide)
    assert len(lru) == 2 and lru.get("a", good_slide) is not first
    # An evicted handle stays usable by whoever still holds it.
    assert first.dz.get_tile(first.dz.level_count - 1, (0, 0)).size == (256, 256)  # tile-aligned grid
    with pytest.raises(tiles.SlideUnreadable):
        lru.get("missing", good_slide.with_name("missing.svs"))
