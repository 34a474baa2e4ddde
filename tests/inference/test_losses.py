"""The BLIP-2 stage-1 losses and masks, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from inference.qformer import (
    QFormer,
    build_attention_mask,
    itc_loss,
    query_max_similarity,
    same_group,
    sample_hard_negatives,
)

WIDTH = 16


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    model, tok = QFormer.from_text_model(num_hidden_layers=2, vision_width=WIDTH, num_query_tokens=4)
    return model.eval(), tok


def test_itg_mask_exactly():
    # 2 queries, 3 text tokens of which the last is padding.
    mask = build_attention_mask(2, torch.tensor([[1, 1, 0]]), "unilm")[0].int()
    expected = torch.tensor(
        [
            # q0 q1 t0 t1 t2
            [1, 1, 0, 0, 0],  # q0: queries only
            [1, 1, 0, 0, 0],  # q1
            [1, 1, 1, 0, 0],  # t0: all queries + itself
            [1, 1, 1, 1, 0],  # t1: all queries + t0, t1
            [1, 1, 1, 1, 0],  # t2 (padding row, its output is never used): never sees padding
        ]
    )
    assert torch.equal(mask, expected)


def test_itm_mask_is_bidirectional_without_padding():
    mask = build_attention_mask(2, torch.tensor([[1, 1, 0]]), "bidirectional")[0].int()
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 1, 0]] * 5))


def test_query_max_similarity():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one slide, two queries
    t = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])  # two texts
    assert torch.allclose(query_max_similarity(q, t), torch.tensor([[0.8, 0.0]]))


def test_itc_by_hand():
    sim = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    pos = torch.eye(2, dtype=torch.bool)
    # i2t rows: -log softmax at the diagonal; t2i: same on the transpose.
    i2t = (-(2 - math.log(math.exp(2) + 1)) - (3 - math.log(math.exp(1) + math.exp(3)))) / 2
    t2i = (-(2 - math.log(math.exp(2) + math.exp(1))) - (3 - math.log(1 + math.exp(3)))) / 2
    assert itc_loss(sim, pos).item() == pytest.approx((i2t + t2i) / 2, rel=1e-5)
    # Label smoothing 0.1 over 2 columns: target 0.95 / 0.05.
    ls = itc_loss(sim, pos, label_smoothing=0.1).item()
    lsm = torch.log_softmax(sim, 1)
    lsm_t = torch.log_softmax(sim.t(), 1)
    tgt = torch.tensor([[0.95, 0.05], [0.05, 0.95]])
    expected = (-(tgt * lsm).sum(1).mean() - (tgt * lsm_t).sum(1).mean()) / 2
    assert ls == pytest.approx(expected.item(), rel=1e-5)


def test_itc_duplicates_share_the_target():
    # Texts 0 and 1 are the same report: a slide that prefers either is not penalised for the choice.
    pos = same_group(torch.tensor([7, 7, 3]), 3)
    assert pos.int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    a = itc_loss(torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]), pos)
    b = itc_loss(torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), pos)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_hard_negatives_never_the_positive_and_follow_similarity():
    g = torch.Generator().manual_seed(0)
    sim = torch.tensor([[9.0, 8.0, 0.0, -5.0], [0.0, 9.0, 1.0, 1.0], [3.0, 3.0, 9.0, 3.0], [1, 2, 3, 9.0]])
    pos = torch.eye(4, dtype=torch.bool)
    picks = torch.stack([sample_hard_negatives(sim, pos, g) for _ in range(400)])  # [400, 4]
    assert not (picks == torch.arange(4)).any()
    assert (picks[:, 0] == 1).float().mean() > 0.9  # the most similar negative is the usual pick


def test_hard_negatives_skip_same_group_and_all_duplicate_batches():
    g = torch.Generator().manual_seed(0)
    groups = torch.tensor([0, 0, 1, 1])
    pos = same_group(groups, 4)
    sim = torch.randn(4, 4) * 10
    for _ in range(200):
        picks = sample_hard_negatives(sim, pos, g)
        assert (groups[picks] != groups).all()
    everyone_same = same_group(torch.tensor([5, 5, 5]), 3)
    assert sample_hard_negatives(torch.randn(3, 3), everyone_same, g).tolist() == [-1, -1, -1]


def test_hard_negatives_survive_extreme_similarities():
    sim = torch.tensor([[1e4, -1e4, -1e4], [-1e4, 1e4, -1e4], [-1e4, -1e4, 1e4]])
    picks = sample_hard_negatives(sim, torch.eye(3, dtype=torch.bool))
    assert (picks >= 0).all() and (picks != torch.arange(3)).all()


def _batch(tok, texts, n=6):
    enc = tok(texts, padding=True, return_tensors="pt")
    patches = torch.randn(len(texts), n, WIDTH)
    mask = torch.ones(len(texts), n, dtype=torch.bool)
    mask[0, n // 2 :] = False
    return patches, mask, enc.input_ids, enc.attention_mask


def test_all_three_losses_and_their_shapes(model_and_tokenizer):
    model, tok = model_and_tokenizer
    torch.manual_seed(1)
    texts = ["adenoma", "carcinoma of the colon", "adenoma", "benign"]
    out = model(*_batch(tok, texts), group_ids=torch.tensor([0, 1, 0, 2]))
    assert set(out) == {"loss", "itc", "itm", "itg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in ("itc", "itm", "itg")), rel=1e-5)


def test_itm_with_every_text_identical_uses_positives_only(model_and_tokenizer):
    model, tok = model_and_tokenizer
    patches, mask, ids, att = _batch(tok, ["adenoma"] * 3)
    sim = torch.randn(3, 3)
    loss = model.itm_loss(patches, mask, ids, att, sim, same_group(torch.tensor([1, 1, 1]), 3))
    logits = model.itm_logits(patches, mask, ids, att)
    assert loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.ones(3).long()).item(), rel=1e-5
    )


def test_itg_text_is_causal_and_queries_do_not_see_text(model_and_tokenizer):
    model, tok = model_and_tokenizer
    torch.manual_seed(2)
    patches = torch.randn(1, 5, WIDTH)
    ids = tok(["tubular adenoma with low grade dysplasia"], return_tensors="pt").input_ids
    other = ids.clone()
    other[0, 4] = tok.convert_tokens_to_ids("carcinoma")  # change token 4
    ones = torch.ones_like(ids)
    with torch.no_grad():
        a = model.encode_joint(patches, None, model.decoder_inputs(ids), ones, "unilm")
        b = model.encode_joint(patches, None, model.decoder_inputs(other), ones, "unilm")
        queries_alone, _ = model.encode_patches(patches)
    q = model.config.num_query_tokens
    assert torch.allclose(a[:, : q + 4], b[:, : q + 4], atol=1e-5)  # queries and text tokens 0..3 unchanged
    assert not torch.allclose(a[:, q + 4], b[:, q + 4])
    assert torch.allclose(a[:, :q], queries_alone, atol=1e-5)


def test_itg_ignores_padding(model_and_tokenizer):
    model, tok = model_and_tokenizer
    torch.manual_seed(3)
    patches = torch.randn(1, 5, WIDTH)
    enc = tok(["benign colonic mucosa"], return_tensors="pt")
    pad = torch.zeros(1, 4, dtype=torch.long)
    ids = torch.cat([enc.input_ids, pad + 2003], 1)  # junk ids in the padded positions
    att = torch.cat([enc.attention_mask, pad], 1)
    with torch.no_grad():
        short = model.itg_loss(patches, None, enc.input_ids, enc.attention_mask)
        long = model.itg_loss(patches, None, ids, att)
    assert short.item() == pytest.approx(long.item(), rel=1e-5)


def test_retrieval_variant_trains_itc_only(model_and_tokenizer):
    _, tok = model_and_tokenizer
    torch.manual_seed(0)
    r, _ = QFormer.from_text_model(
        num_hidden_layers=1, vision_width=WIDTH, num_query_tokens=4, losses=("itc",), tokenizer=tok
    )
    out = r(*_batch(tok, ["a", "b"]))
    assert set(out) == {"loss", "itc"}
