"""The one progress protocol: every library function reports progress(done, total) with ints, ending at
(total, total); (0, 0) when there is nothing to do."""

from __future__ import annotations

import numpy as np
import pytest

from inference.encoders import build_encoder
from inference.features import encode_grid, extract_corpus_features, extract_slide_features
from inference.progress import Progress
from inference.slides import open_slide, patch_grid
from inference.synthetic.corpus import generate_corpus, plan_cases, render_case
from inference.synthetic.wsi import write_pyramidal_tiff


class Recorder:
    """A Progress: keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def check(self, total: int) -> None:
        assert self.calls, "progress was never reported"
        assert all(type(d) is int and type(t) is int for d, t in self.calls)  # ints, not numpy or floats
        assert {t for _, t in self.calls} == {total}
        done = [d for d, _ in self.calls]
        assert done == sorted(done) and 0 <= done[0] and done[-1] == total
        assert self.calls[-1] == (total, total)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    rgb = render_case(plan_cases(1, seed=0)[0], size=(672, 672), mpp=1.0)
    return write_pyramidal_tiff(tmp_path_factory.mktemp("slide") / "s.svs", rgb, mpp=1.0, min_level_size=4096)


@pytest.fixture(scope="module")
def encoder():
    return build_encoder({"kind": "random", "seed": 0, "dim": 8, "input_size": 32})


def test_slide_extraction_counts_encoded_patches(slide, encoder):
    recorder = Recorder()
    progress: Progress = recorder  # a Recorder is a Progress
    sf = extract_slide_features(slide, encoder, batch_size=2, workers=2, progress=progress)
    assert len(sf) > 2  # several batches, so several calls
    recorder.check(len(sf))
    assert len(recorder.calls) == -(-len(sf) // 2)  # one call per batch


def test_encode_grid_and_an_empty_grid(tmp_path, slide, encoder):
    with open_slide(slide) as handle:
        grid = patch_grid(handle, max_patches=3)
    progress = Recorder()
    features, _ = encode_grid(slide, grid, encoder, batch_size=2, workers=1, progress=progress)
    progress.check(len(grid))
    assert features.shape == (len(grid), encoder.dim)
    blank = write_pyramidal_tiff(tmp_path / "blank.svs", np.full((512, 512, 3), 255, np.uint8), mpp=1.0)
    nothing = Recorder()
    assert len(extract_slide_features(blank, encoder, progress=nothing)) == 0
    assert nothing.calls == [(0, 0)]


def test_corpus_extraction_counts_slides(tmp_path, encoder):
    manifest = generate_corpus(tmp_path / "corpus", n_cases=2, seed=1, size=768, workers=1)
    progress = Recorder()
    extract_corpus_features(
        manifest, encoder, tmp_path / "features", max_patches=2, workers=1, progress=progress
    )
    assert progress.calls == [(1, 2), (2, 2)]
    cached = Recorder()  # from the cache this time: the same reports
    extract_corpus_features(
        manifest, encoder, tmp_path / "features", max_patches=2, workers=1, progress=cached
    )
    assert cached.calls == [(1, 2), (2, 2)]


def test_pathalign_extract_passes_the_callback_through(tiny_pathalign, slide):
    progress = Recorder()
    features = tiny_pathalign.extract(slide, progress=progress)
    progress.check(len(features))
    assert features.features.shape[1] == tiny_pathalign.model.config.vision_width
