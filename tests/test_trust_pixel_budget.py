"""One pixel budget for every read of a slide (webapp/slides/pixel_budget.py).

Finding (issue 16): `ingest_slide` called `get_thumbnail`, which reads the lowest level whole: a 0.9 MB
single-level 16k x 16k TIFF took 2.1 GB RSS and 20 s of CPU in the web process; Deep Zoom had no read cap.
Each check runs in a child process (the web process here), whose peak RSS is measured.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parent.parent
RSS_LIMIT_MB = 512


def write_bomb(path: Path, side: int, tile: int = 512) -> Path:
    """A single-level tiled TIFF of side x side pixels that compresses to almost nothing (a flat colour),
    written tile by tile (this process never holds the image)."""
    flat = np.full((tile, tile, 3), 236, np.uint8)
    count = (-(-side // tile)) ** 2
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write((flat for _ in range(count)), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="zlib", metadata=None)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = write_bomb(tmp_path_factory.mktemp("bomb") / "bomb-16k.tif", 16384)
    assert path.stat().st_size < 2 * 1024**2  # under 2 MB on disk, 268 Mpixel declared
    return path


UPLOAD = """
import json, resource, sys

def peak_rss_mb():
    # VmHWM: this process's own peak since exec. ru_maxrss is not: Linux keeps it across execve, so it
    # would report the (large) pytest process this child was forked from.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
import django
django.setup()
from django.test import Client
from webapp.accounts.models import User
client = Client()
client.force_login(User.objects.get(username="admin"))
with open(sys.argv[1], "rb") as handle:
    response = client.post(sys.argv[2], {"file": handle, "stain": "H&E"})
print(json.dumps({"status": response.status_code, "body": response.json(),
                  "rss_mb": peak_rss_mb()}))
"""

DEEPZOOM = """
import json, resource, sys, time

def peak_rss_mb():
    # VmHWM: this process's own peak since exec. ru_maxrss is not: Linux keeps it across execve, so it
    # would report the (large) pytest process this child was forked from.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
import django
django.setup()
from webapp.slides import tiles
opened = tiles.slides.get("bomb", sys.argv[1])
outcome = {}
start = time.monotonic()
for level in (0, 5, opened.dz.level_count - 1):
    try:
        outcome[level] = len(tiles.dz_tile(opened, level, 0, 0, "jpeg"))
    except tiles.TileNotFound as exc:
        outcome[level] = str(exc)
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start,
                  "rss_mb": peak_rss_mb()}))
"""


def _child(script: str, *args: str) -> dict:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings_test", "PATHALIGN_USE_TEST_DB": "1"}
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)  # the child (the web process) must see the case
def test_a_decompression_bomb_is_refused_by_the_upload_view_in_bounded_memory(cast, case_factory, bomb):
    from django.conf import settings
    from django.urls import reverse

    from webapp.audit.models import AuditEvent
    from webapp.slides.models import Slide

    case = case_factory(assigned_to=cast.path1)
    url = reverse("slide_upload", args=[case.pk, case.parts.get().pk])
    store = Path(settings.SLIDE_STORE_DIR)
    before = {p for p in store.rglob("*") if p.is_file()}
    found = _child(UPLOAD, str(bomb), url)
    assert found["status"] == 400, found
    assert "Mpixel" in found["body"]["error"] and "bomb-16k.tif" in found["body"]["error"], found
    assert found["rss_mb"] < RSS_LIMIT_MB, found
    assert not Slide.objects.exists()
    assert {p for p in store.rglob("*") if p.is_file()} == before  # nothing left in the store
    assert AuditEvent.objects.filter(action="reject_slide", case_id=case.pk).exists()


def test_deep_zoom_reads_of_a_bomb_stay_within_the_budget(db, bomb):
    found = _child(DEEPZOOM, str(bomb))
    coarse, finest = found["outcome"]["0"], found["outcome"][str(max(map(int, found["outcome"])))]
    assert isinstance(coarse, str) and "Mpixel" in coarse, found  # would decode the whole 268 Mpixel level
    assert isinstance(finest, int) and finest > 0, found  # a full-resolution tile is one tile's read
    assert found["rss_mb"] < RSS_LIMIT_MB and found["seconds"] < 20, found


def test_the_budget_follows_the_pyramid(good_slide):
    import openslide

    from webapp.slides import pixel_budget

    slide = openslide.OpenSlide(str(good_slide))
    level = pixel_budget.thumbnail_level(slide, (512, 512))
    assert level == slide.get_best_level_for_downsample(max(d / 512 for d in slide.dimensions))
    image = pixel_budget.thumbnail(slide, (512, 512))
    assert image.mode == "RGB" and max(image.size) == 512
    assert image.size == slide.get_thumbnail((512, 512)).size
    for name in slide.associated_images:  # the fixture's label and macro declare their sizes: within budget
        pixel_budget.check_associated(slide, name)
    with pytest.raises(pixel_budget.OverBudget, match="Mpixel"):
        pixel_budget.check(pixel_budget.READ_PIXELS + 1, "A read")


def test_an_oversized_label_image_is_refused_before_it_is_decoded(tmp_path):
    """Associated images (label, macro) are decoded whole by OpenSlide: one that declares more than the
    budget (a 5,000 x 4,000 label, 20 Mpixel, a few KB on disk) is refused before decoding, with a sentence;
    the slide's normal label of the same kind serves."""
    import openslide

    from inference.synthetic.wsi import write_pyramidal_tiff
    from tests.conftest import tissue_like
    from webapp.slides import pixel_budget, tiles

    big = write_pyramidal_tiff(tmp_path / "big-label.svs", tissue_like(1024, 1024), mpp=0.5,
                               label=np.full((4000, 5000, 3), 230, np.uint8))
    slide = openslide.OpenSlide(str(big))
    assert pixel_budget.associated_size(slide, "label") == (5000, 4000)
    with pytest.raises(tiles.SlideUnreadable, match=r"label image \(5000 x 4000\).*Mpixel"):
        tiles.associated_image(slide, "label")
    small = write_pyramidal_tiff(tmp_path / "small-label.svs", tissue_like(1024, 1024), mpp=0.5,
                                 label=np.full((120, 120, 3), 230, np.uint8))
    assert tiles.associated_image(openslide.OpenSlide(str(small)), "label").size == (120, 120)
