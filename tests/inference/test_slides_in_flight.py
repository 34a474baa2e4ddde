"""Several slides in flight: `iter_slide_features` gives, slide by slide, what `extract_slide_features` gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.encoders import build_encoder
from inference.features import extract_slide_features, iter_slide_features
from inference.synthetic.wsi import write_pyramidal_tiff

TINY_ENCODER = {"kind": "random", "seed": 0, "dim": 24, "input_size": 32}  # as in conftest.py


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from inference.synthetic.corpus import generate_corpus, load_manifest

    records = load_manifest(generate_corpus(tmp_path_factory.mktemp("corpus"), n_cases=3, seed=5, size=1536,
                                            workers=1))
    blank = write_pyramidal_tiff(tmp_path_factory.mktemp("blank") / "blank.svs",
                                 np.full((512, 512, 3), 255, np.uint8), mpp=1.0)
    # An empty slide in the middle: the pipeline goes on past a slide without patches.
    return [records[0]["slide_path"], records[1]["slide_path"], str(blank), records[2]["slide_path"]]


@pytest.mark.parametrize("readers,in_flight,batch", [("threads", 2, 5), ("threads", 3, 64), ("processes", 2, 7)])
def test_pipeline_matches_one_slide_at_a_time(slides, readers, in_flight, batch):
    encoder = build_encoder(TINY_ENCODER)
    torch.set_num_threads(1)
    one = [extract_slide_features(p, encoder, max_patches=9, batch_size=batch, workers=2) for p in slides]
    calls = []
    many = list(iter_slide_features(slides, encoder, max_patches=9, batch_size=batch, workers=2, readers=readers,
                                    in_flight=in_flight, chunk=3, progress=lambda d, t: calls.append((d, t))))
    assert calls == [(i + 1, len(slides)) for i in range(len(slides))]
    assert [len(s) for s in many] == [len(s) for s in one] and len(many[2]) == 0
    for a, b in zip(many, one, strict=True):
        assert np.array_equal(a.coords, b.coords) and a.slide_mpp == b.slide_mpp
        torch.testing.assert_close(a.features, b.features, rtol=1e-5, atol=1e-5)
        assert a.read_seconds >= 0 and a.encode_seconds >= 0 and a.wall_seconds > 0


def test_a_slide_that_cannot_be_read_raises_in_its_place(slides, tmp_path):
    bad = tmp_path / "not-a-slide.svs"
    bad.write_bytes(b"nope")
    encoder = build_encoder(TINY_ENCODER)
    it = iter_slide_features([slides[0], str(bad)], encoder, max_patches=4, workers=1)
    assert len(next(it)) > 0
    with pytest.raises(ValueError):
        next(it)
