"""A heatmap layer's JSON carries the slide's tissue mask, so the viewer colours tissue and never glass."""
from __future__ import annotations

import base64
import io

import numpy as np
import openslide
import pytest
from django.urls import reverse
from PIL import Image

from tests.test_trust_pixel_budget import write_bomb
from webapp.slides import overlays
from webapp.slides.ingest import ingest_slide


@pytest.fixture
def slide(cast, case_factory, good_slide):
    case = case_factory(assigned_to=cast.path1)
    return ingest_slide(good_slide, part=case.parts.first(), original_filename="x.svs", move=False)


@pytest.fixture
def everywhere():
    overlays.register_overlay("everywhere", lambda slide: {
        "patch_size": 256, "coords": [[x, y] for y in range(0, 2048, 256) for x in range(0, 3072, 256)],
        "values": [1.0] * 96, "label": "Everywhere"})
    yield
    overlays.unregister_overlay("everywhere")


def test_overlay_carries_the_tissue_mask(slide, cast, client_for, everywhere):
    client = client_for(cast.path1)
    response = client.get(reverse("slide_overlay", args=[slide.pk, "everywhere"]))
    assert response.status_code == 200
    tissue = response.json()["tissue"]
    assert tissue["url"].startswith("data:image/png;base64,")
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(tissue["url"].split(",", 1)[1]))).convert("L")) > 127
    assert mask.shape == (tissue["height"], tissue["width"])
    # From the slide's own 768 x 512 level (the smallest at least 768 px long): 4 level-0 px per mask pixel.
    assert (tissue["width"], tissue["height"]) == (768, 512) and tissue["downsample"] == pytest.approx(4)
    # The synthetic slide is an ellipse of tissue on glass: the centre is tissue, the corners are glass.
    assert mask[mask.shape[0] // 2, mask.shape[1] // 2] and not mask[:8, :8].any() and not mask[-8:, -8:].any()
    assert 0.3 < mask.mean() < 0.95
    # The same mask again (from the encoded cache), and none for a user who may not see the slide.
    assert client.get(reverse("slide_overlay", args=[slide.pk, "everywhere"])).json()["tissue"] == tissue
    assert client_for(cast.outsider).get(reverse("slide_overlay", args=[slide.pk, "everywhere"])).status_code == 404


def test_no_mask_beyond_the_pixel_budget(tmp_path):
    """A single-level 16k x 16k file: the mask would decode it whole, so the layer is drawn unclipped."""
    path = write_bomb(tmp_path / "bomb-16k.tif", 16384)
    with openslide.OpenSlide(str(path)) as osr:
        assert overlays.tissue_mask_json(osr, 0.5) == b""
