"""Pre-rendered viewer levels: the Deep Zoom levels between a /4 pyramid's, rendered once into a companion TIFF
after a slide is stored, and served from it as the very bytes the renderer makes; a missing, stale or damaged
companion only means the tiles are rendered as before. Real files: an Aperio-layout SVS (levels /1 and /4)
and a copy with a corrupt source tile."""
from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
import tifffile
from django.core.management import call_command
from django.urls import reverse
from PIL import Image

from inference.synthetic.wsi import write_pyramidal_tiff
from tests.conftest import tissue_like
from webapp.jobs import runner
from webapp.jobs.models import Job, JobState
from webapp.jobs.runner import execute
from webapp.slides import prerender, prerendered, tiles
from webapp.slides.ingest import ingest_slide


@pytest.fixture(scope="module")
def svs_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer-levels")
    plain = write_pyramidal_tiff(folder / "plain.svs", tissue_like(2048, 3072, seed=5), mpp=0.5)
    corrupt = folder / "corrupt.svs"
    shutil.copyfile(plain, corrupt)
    with tifffile.TiffFile(corrupt) as tif:  # garbage in the middle of source tile (1, 1) of level 0
        page = tif.pages[0]
        index = 1 * (-(-page.imagewidth // 256)) + 1
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(corrupt, "r+b") as handle:
        handle.seek(offset + count // 2)
        handle.write(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())
    return {"plain": plain, "corrupt": corrupt}


@pytest.fixture
def levels_dir(settings, tmp_path):
    settings.VIEWER_LEVELS_DIR = tmp_path / "viewer-levels"
    tiles.slides.clear()
    tiles.encoded.clear()
    yield settings.VIEWER_LEVELS_DIR
    tiles.slides.clear()
    tiles.encoded.clear()


@pytest.fixture
def no_broker(monkeypatch):
    sent = []
    monkeypatch.setattr(runner, "dispatch", lambda job_id, countdown=None: sent.append(job_id) or True)
    return sent


def stored_slide(case_factory, cast, path):
    case = case_factory(assigned_to=cast.path1)
    return ingest_slide(path, part=case.parts.first(), original_filename=path.name, move=False)


def reopen(slide) -> tiles.OpenedSlide:
    tiles.slides.clear()
    tiles.encoded.clear()
    return tiles.slides.get(str(slide.pk), slide.path)


def test_the_in_between_levels_are_served_from_the_companion_as_the_renderers_bytes(
        db, cast, case_factory, client_for, svs_files, levels_dir):
    slide = stored_slide(case_factory, cast, svs_files["plain"])
    opened = reopen(slide)
    top = opened.dz.level_count - 1
    assert opened.half == {top - 1: 0, top - 3: 1} and opened.prerendered.get() is None
    result = prerender.prerender_slide(slide)
    # Whole tiles only: level top-1 is 1536 x 1024 px (6 x 4 tiles of 256), top-3 384 x 256 (1 x 1).
    assert result["tiles"] == 25 and result["left_out"] == 0 and result["levels"] == 2
    companion = prerendered.companion_path(opened.prerendered.key)
    assert companion.is_file() and oct(companion.stat().st_mode & 0o777) == "0o600"

    opened = reopen(slide)
    stored = opened.prerendered.get()
    assert stored is not None and sorted(stored.levels) == [top - 3, top - 1]
    for level, (across, down) in ((top - 1, (6, 4)), (top - 3, (1, 1))):
        for row in range(down):
            for col in range(across):
                kept = stored.tile(level, col, row)
                assert kept == tiles.render_dz_tile(opened, level, col, row, "jpeg", use_prerendered=False)
    # The right-hand edge of level top-3 (partial) and the native levels are not in it.
    assert stored.tile(top - 3, 1, 0) is None and stored.tile(top, 0, 0) is None

    # Over HTTP: the same bytes, and a valid 256 px JPEG.
    response = client_for(cast.path1).get(reverse("slide_dzi_tile", args=[slide.pk, top - 1, 3, 2, "jpeg"]))
    assert response.status_code == 200 and response.content == stored.tile(top - 1, 3, 2)
    assert Image.open(io.BytesIO(response.content)).size == (256, 256)
    # Idempotent: the job done twice keeps the file.
    mtime = companion.stat().st_mtime_ns
    assert prerender.prerender_slide(slide)["message"] == "Already rendered."
    assert companion.stat().st_mtime_ns == mtime


def test_a_replaced_file_or_a_damaged_companion_is_rendered_as_before(
        db, cast, case_factory, svs_files, levels_dir, tmp_path):
    path = tmp_path / "replaced.svs"
    shutil.copyfile(svs_files["plain"], path)
    slide = stored_slide(case_factory, cast, path)
    prerender.prerender_slide(slide)
    opened = reopen(slide)
    top = opened.dz.level_count - 1
    old = opened.prerendered.get()
    assert old is not None

    # A damaged tile in the companion: rendered instead, the same bytes as without it.
    level = old.levels[top - 1]
    with open(old.path, "r+b") as handle:
        handle.seek(int(level.offsets[0]) + int(level.counts[0]) - 2)
        handle.write(b"\x00\x00")  # no end-of-image marker
    opened = reopen(slide)
    assert opened.prerendered.get().tile(top - 1, 0, 0) is None
    assert tiles.dz_tile(opened, top - 1, 0, 0, "jpeg") == tiles.render_dz_tile(
        opened, top - 1, 0, 0, "jpeg", use_prerendered=False)

    # The slide file replaced (new mtime): the old companion is another file's and is never read.
    os.utime(slide.path, ns=(1, 1))
    opened = reopen(slide)
    assert prerendered.companion_path(opened.prerendered.key) != old.path
    assert opened.prerendered.get() is None

    # A companion whose page carries another key is ignored as a whole.
    with tifffile.TiffWriter(prerendered.companion_path(opened.prerendered.key)) as writer:
        writer.write(np.zeros((1024, 1536, 3), np.uint8), tile=(256, 256), compression="jpeg", metadata=None,
                     description=json.dumps({"key": "another slide", "dz_level": top - 1}))
    assert reopen(slide).prerendered.get() is None


def test_a_corrupt_source_tile_is_left_out_and_still_refused(
        db, cast, case_factory, client_for, svs_files, levels_dir):
    slide = stored_slide(case_factory, cast, svs_files["corrupt"])
    result = prerender.prerender_slide(slide)
    assert result["left_out"] == 1 and result["tiles"] == 24 and "corrupt" in result["message"]
    opened = reopen(slide)
    top = opened.dz.level_count - 1
    assert opened.prerendered.get().tile(top - 1, 0, 0) is None
    response = client_for(cast.path1).get(reverse("slide_dzi_tile", args=[slide.pk, top - 1, 0, 0, "jpeg"]))
    assert response.status_code == 404 and b"Source tile 1,1 of level 0" in response.content


def test_a_stored_slide_queues_the_job_and_the_command_renders_older_slides(
        db, cast, case_factory, svs_files, levels_dir, django_capture_on_commit_callbacks, no_broker):
    with django_capture_on_commit_callbacks(execute=True):
        slide = stored_slide(case_factory, cast, svs_files["plain"])
    job = Job.objects.get(slide=slide, kind=prerender.PRERENDER)
    assert execute(job.pk).state == JobState.SUCCEEDED
    assert Job.objects.get(pk=job.pk).result["tiles"] == 25
    assert reopen(slide).prerendered.get() is not None

    out = io.StringIO()
    call_command("prerender_viewer_levels", str(slide.pk), stdout=out)
    assert f"slide {slide.pk}: Already rendered." in out.getvalue()
    call_command("prerender_viewer_levels", str(slide.pk), "--force", stdout=out)
    assert "25 tiles of 2 levels rendered" in out.getvalue()


def test_a_slide_without_in_between_levels_queues_nothing(
        db, cast, case_factory, levels_dir, tmp_path, settings, django_capture_on_commit_callbacks, no_broker):
    flat = tmp_path / "flat.tiff"  # one level, deflate: no passthrough, nothing to render
    tifffile.imwrite(flat, tissue_like(512, 768, seed=2), tile=(256, 256), compression="zlib",
                     photometric="rgb", metadata=None)
    with django_capture_on_commit_callbacks(execute=True):
        slide = stored_slide(case_factory, cast, flat)
    assert not Job.objects.filter(slide=slide, kind=prerender.PRERENDER).exists()
    assert "Nothing to render" in prerender.prerender_slide(slide)["message"]
    settings.VIEWER_LEVELS_PRERENDER = False
    with django_capture_on_commit_callbacks(execute=True):
        plain = stored_slide(case_factory, cast, write_pyramidal_tiff(tmp_path / "p.svs", tissue_like(
            1024, 1536, seed=4)))
    assert not Job.objects.filter(slide=plain, kind=prerender.PRERENDER).exists()
