"""The high-level API the web app uses: shapes, normalisation, attention, classification, retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.bundle import save_bundle
from inference.pathalign import PathAlign, SlideEmbedding, query_max, retrieve
from inference.qformer import QFormer

WIDTH = 24


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    qformer, tok = QFormer.from_text_model(num_hidden_layers=2, vision_width=WIDTH)
    path = save_bundle(
        tmp_path_factory.mktemp("b") / "bundle",
        qformer,
        tok,
        {"name": "enc", "dim": WIDTH},
        name="demo",
        version="0.1",
    )
    return PathAlign.load(path)


def test_spec(model):
    assert model.spec["name"] == "demo" and model.spec["version"] == "0.1"
    assert model.spec["encoder"]["dim"] == WIDTH
    assert model.spec["dims"] == {"feature": WIDTH, "embed": 256, "queries": 32, "hidden": 384}


def test_embed_shapes_and_norms(model):
    emb = model.embed(np.random.default_rng(0).normal(size=(11, WIDTH)).astype(np.float32))
    assert emb.slide.shape == (256,) and emb.queries.shape == (32, 256) and emb.attention.shape == (11,)
    assert emb.slide.dtype == np.float32
    assert np.linalg.norm(emb.slide) == pytest.approx(1, abs=1e-5)
    assert np.allclose(np.linalg.norm(emb.queries, axis=1), 1, atol=1e-5)
    assert emb.attention.sum() == pytest.approx(1, abs=1e-5) and (emb.attention >= 0).all()
    mean = emb.queries.mean(0)
    assert np.allclose(emb.slide, mean / np.linalg.norm(mean), atol=1e-5)


def test_batched_embedding_equals_one_by_one(model):
    rng = np.random.default_rng(1)
    slides = [torch.tensor(rng.normal(size=(n, WIDTH)), dtype=torch.float32) for n in (3, 17, 9)]
    batched = model.embed_many(slides)
    for x, b in zip(slides, batched, strict=True):
        one = model.embed(x)
        assert np.allclose(one.slide, b.slide, atol=1e-5) and np.allclose(
            one.attention, b.attention, atol=1e-6
        )


def test_accepts_objects_with_a_features_attribute(model):
    class Feats:
        features = torch.randn(4, WIDTH)

    assert model.embed(Feats()).attention.shape == (4,)
    with pytest.raises(ValueError, match="768-d"):
        model.embed(torch.randn(4, 768))


def test_text_similarity_and_itm(model):
    texts = ["tubular adenoma", "invasive carcinoma", "benign"]
    t = model.embed_text(texts)
    assert t.shape == (3, 256) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    feats = torch.randn(6, WIDTH)
    emb = model.embed(feats)
    sims = model.similarity(emb, t)
    assert np.allclose(sims, (emb.queries @ t.T).max(0), atol=1e-6)
    assert np.allclose(model.similarity(emb.queries, t), sims)
    itm = model.itm_scores(feats, texts)
    assert itm.shape == (3,) and ((itm >= 0) & (itm <= 1)).all()


def test_classify_is_a_distribution_over_labels(model):
    probs = model.classify(
        torch.randn(5, WIDTH),
        {"adenoma": ["tubular adenoma", "an adenoma"], "carcinoma": ["invasive carcinoma"], "normal": []},
    )
    assert list(probs) == ["adenoma", "carcinoma", "normal"]
    assert sum(probs.values()) == pytest.approx(1, abs=1e-6)


def test_classify_max_pooling_scores_each_label_by_its_best_prompt(model):
    torch.manual_seed(1)
    x = torch.randn(6, WIDTH)
    prompts = {"malignant": ["invasive carcinoma", "adenocarcinoma of the colon", "squamous cell carcinoma"],
               "benign": ["benign tissue", "normal colonic mucosa"]}
    emb = model.embed(x)
    best = np.array([model.similarity(emb, model.embed_text(p)).max() for p in prompts.values()])
    want = np.exp((best - best.max()) / float(model.model.temp.detach()))
    want /= want.sum()
    got = model.classify(x, prompts, pooling="max")
    assert list(got) == ["malignant", "benign"] and np.allclose(list(got.values()), want, atol=1e-5)
    assert model.classify(emb, prompts, pooling="max") == pytest.approx(got)  # an embedding or features
    assert model.classify(x, prompts) != pytest.approx(got)  # the mean ensemble is another reading
    with pytest.raises(ValueError, match="pooling"):
        model.classify(x, prompts, pooling="median")


def test_generate_returns_text(model):
    text = model.generate(torch.randn(5, WIDTH), num_beams=2, max_new_tokens=5)
    assert isinstance(text, str) and text
    sampled = model.generate(torch.randn(5, WIDTH), do_sample=True, top_p=0.9, max_new_tokens=5, seed=1)
    assert isinstance(sampled, str)
    with pytest.raises(ValueError, match="no stage-2 bridge"):
        model.generate(torch.randn(5, WIDTH), backend="llm")


def test_candidates_keep_the_draft_the_models_alignment_ranks_first(model):
    from inference.generation import GenerationConfig, torch_generator
    from inference.pathalign import tidy_text

    torch.manual_seed(0)
    x = torch.randn(7, WIDTH)
    cfg = GenerationConfig(num_beams=2, max_new_tokens=6, candidates=4, seed=3)
    chosen = model.generate(x, cfg)
    assert model.generate(x, cfg) == chosen  # seeded: one config, one text
    # the same candidates by hand: the decoder's own draft, then 3 samples from one generator seeded 3
    own = model.generate(x, cfg.with_(candidates=1))
    sample = cfg.with_(do_sample=True, top_p=0.9, candidates=1)
    gen = torch_generator(sample)
    texts = [own]
    for _ in range(3):
        ids = model.model.generate(x[None], None, sample, generator=gen)[0]
        texts.append(tidy_text(model.tokenizer.decode(ids, skip_special_tokens=True)))
    scores = model.similarity(model.embed(x), model.embed_text(texts))
    assert chosen == texts[int(np.argmax(scores))]
    assert model.generate(x, cfg.with_(candidates=1)) == own  # 1: the decoder's draft as it is
    with pytest.raises(ValueError, match="candidates"):
        GenerationConfig(candidates=0)


def test_tidy_text_restores_decimals_and_capitals():
    from inference.pathalign import tidy_text

    got = tidy_text("focal, 3 focuses, up to 0. 9 mm ; margins negative , closest 1. 25 mm. the lesion ( g2 )")
    assert got == "Focal, 3 focuses, up to 0.9 mm; margins negative, closest 1.25 mm. The lesion (g2)"


def test_query_max_and_retrieve_by_hand():
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    queries = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert np.allclose(query_max(queries, texts), [1.0, 1.0, 0.8])
    # A text vs slide vectors: plain cosine.
    assert [i for i, _ in retrieve(np.array([1.0, 0.0]), texts, k=2)] == [0, 2]
    # A text vs [M, Q, E] slide queries: query-max.
    slides = np.stack([queries, np.array([[0.6, 0.8], [0.6, 0.8]]), np.array([[-1.0, 0.0], [0.0, -1.0]])])
    assert [i for i, _ in retrieve(np.array([0.0, 1.0]), slides, k=3)] == [0, 1, 2]
    # Re-ranking reorders the ITC top candidates by the re-ranker's scores.
    ranked = retrieve(np.array([1.0, 0.0]), texts, k=2, rerank=lambda idx: np.array([0.1 * i for i in idx]))
    assert [i for i, _ in ranked] == [2, 1]
    assert ranked[0][1] == pytest.approx(0.2)


def test_slide_embedding_serialises(model):
    emb = model.embed(torch.randn(2, WIDTH))
    assert isinstance(emb, SlideEmbedding) and len(emb.to_dict()["queries"]) == 32


def test_extract_then_embed_a_real_slide(tmp_path):
    """With the data side: a synthetic slide -> tissue patches -> built-in encoder -> Q-Former."""
    from inference.encoders import build_encoder
    from inference.synthetic.corpus import plan_cases, render_case
    from inference.synthetic.wsi import write_pyramidal_tiff

    encoder = build_encoder({"kind": "builtin"})
    torch.manual_seed(0)
    qformer, tok = QFormer.from_text_model(num_hidden_layers=1, vision_width=encoder.dim, num_query_tokens=4)
    model = PathAlign.load(save_bundle(tmp_path / "b", qformer, tok, encoder.spec))
    assert model.encoder.dim == encoder.dim and model.encoder.spec == encoder.spec | {"tiling": model.tiling}
    rgb = render_case(plan_cases(1, seed=0)[0], size=(672, 672), mpp=1.0)
    slide = write_pyramidal_tiff(tmp_path / "s.svs", rgb, mpp=1.0, min_level_size=4096)
    seen = []
    features = model.extract(slide, progress=lambda done, total: seen.append((done, total)))
    assert (
        features.features.shape[1] == encoder.dim and len(features.coords) == features.features.shape[0] > 0
    )
    emb = model.embed(features)
    assert emb.attention.shape == (features.features.shape[0],)
    assert emb.attention.sum() == pytest.approx(1, abs=1e-5)


def test_text_embedding_ignores_padding(model):
    alone = model.embed_text(["adenoma"])[0]
    padded = model.embed_text(["adenoma", "invasive ductal carcinoma of the breast with necrosis"])[0]
    assert np.allclose(alone, padded, atol=1e-5)
