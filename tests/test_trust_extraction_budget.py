"""Feature extraction reads within the same pixel budget as every other read of a slide (issue 16): the
tissue mask never decodes a whole unbounded level and a patch never decodes more than the budget.

Finding: `inference.slides.tissue_mask` called `get_thumbnail`, which decodes a whole level; a single-level
16k x 16k file (under 2 MB on disk) would be 268 Mpixel in the analysis worker at once.
"""
from __future__ import annotations

import openslide
import pytest

from inference import slides
from tests.test_trust_pixel_budget import write_bomb
from webapp.slides import pixel_budget


def test_the_library_and_the_web_app_share_one_budget():
    assert slides.MAX_DECODE_PIXELS == pixel_budget.READ_PIXELS


def test_the_tissue_mask_of_a_bomb_is_refused_before_decoding(tmp_path):
    path = write_bomb(tmp_path / "bomb-16k.tif", 16384)
    with openslide.OpenSlide(str(path)) as slide, pytest.raises(slides.OverPixelBudget, match="268 Mpixel"):
        slides.tissue_mask(slide, mpp=0.5)


def test_a_patch_larger_than_the_budget_is_refused(tmp_path):
    # One level of 4096 x 4096 at 0.25 um/px: patches of 224 px at 5 um/px are 4480 px squares at level 0.
    path = write_bomb(tmp_path / "single-level-4k.tif", 4096)
    with openslide.OpenSlide(str(path)) as slide:
        assert slides.patch_grid(slide, 224, 1.0, mpp=0.25).read_size == 896  # within the budget
        with pytest.raises(slides.OverPixelBudget, match="each patch would decode 4480 x 4480"):
            slides.patch_grid(slide, 224, 5.0, mpp=0.25)
