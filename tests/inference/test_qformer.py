"""The Q-Former: MiniLM initialisation, padding invariance, patch attention, cached decoding."""

from __future__ import annotations

import pytest
import torch

from inference.bridge import ensure_transformers_importable
from inference.qformer import QFormer, QFormerConfig, default_text_model_dir, read_state_dict

WIDTH = 48


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    model, tok = QFormer.from_text_model(num_hidden_layers=2, vision_width=WIDTH, num_query_tokens=8)
    return model.eval(), tok


def test_text_layers_match_bert_from_the_same_directory(model_and_tokenizer):
    """Our text stream reproduces transformers' BertModel on the first layers of MiniLM."""
    ensure_transformers_importable()
    from transformers import BertConfig, BertModel

    model, tok = model_and_tokenizer
    directory = default_text_model_dir()
    config = BertConfig.from_pretrained(str(directory), num_hidden_layers=2, local_files_only=True)
    bert = BertModel(config, add_pooling_layer=False).eval()
    bert.load_state_dict(read_state_dict(directory), strict=False)
    enc = tok(
        ["invasive ductal carcinoma", "benign colonic mucosa with no dysplasia"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        ours = model.encode_text(enc.input_ids, enc.attention_mask)
        theirs = bert(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
    real = enc.attention_mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-4)


def test_query_ffn_starts_as_a_copy_and_cross_attention_every_second_layer(model_and_tokenizer):
    model, _ = model_and_tokenizer
    layer = model.layers[0]
    assert torch.equal(layer.ffn.up.weight, layer.ffn_query.up.weight)
    assert [layer.cross_attn is not None for layer in model.layers] == [True, False]
    assert model.lm_head.decoder.weight is model.word_embeddings.weight  # tied
    assert model.config.vocab_size == model.word_embeddings.num_embeddings == 30523  # MiniLM + [DEC]


def test_padding_patches_changes_nothing(model_and_tokenizer):
    model, _ = model_and_tokenizer
    torch.manual_seed(1)
    patches = torch.randn(1, 20, WIDTH)
    padded = torch.cat([patches, 100 * torch.randn(1, 13, WIDTH)], dim=1)  # garbage in the padding
    mask = torch.zeros(1, 33, dtype=torch.bool)
    mask[:, :20] = True
    with torch.no_grad():
        a, att_a = model.encode_patches(patches, None, with_attention=True)
        b, att_b = model.encode_patches(padded, mask, with_attention=True)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(att_a, att_b[:, :20], atol=1e-6)
    assert torch.all(att_b[:, 20:] == 0)
    assert torch.allclose(att_b.sum(-1), torch.ones(1))


def test_batch_of_different_lengths_equals_one_by_one(model_and_tokenizer):
    model, _ = model_and_tokenizer
    torch.manual_seed(2)
    x1, x2 = torch.randn(1, 7, WIDTH), torch.randn(1, 15, WIDTH)
    batch = torch.zeros(2, 15, WIDTH)
    batch[0, :7], batch[1] = x1[0], x2[0]
    mask = torch.zeros(2, 15, dtype=torch.bool)
    mask[0, :7], mask[1] = True, True
    with torch.no_grad():
        both, _ = model.encode_patches(batch, mask)
        one, _ = model.encode_patches(x1)
        two, _ = model.encode_patches(x2)
    assert torch.allclose(both[0], one[0], atol=1e-5) and torch.allclose(both[1], two[0], atol=1e-5)


def test_wrong_feature_width_is_refused(model_and_tokenizer):
    model, _ = model_and_tokenizer
    with pytest.raises(ValueError, match=f"{WIDTH + 1}-d.*{WIDTH}-d"):
        model.encode_patches(torch.randn(1, 4, WIDTH + 1))


def test_cached_greedy_decoding_matches_full_forward(model_and_tokenizer):
    model, _ = model_and_tokenizer
    torch.manual_seed(3)
    patches = torch.randn(1, 12, WIDTH)
    with torch.no_grad():
        tokens = model.generate(patches, num_beams=1, max_new_tokens=6, min_new_tokens=6)[0]
        dec = torch.tensor([[model.config.dec_token_id] + tokens])
        joint = model.encode_joint(patches, None, dec, torch.ones_like(dec), "unilm")
        logits = model.lm_head(joint[:, model.config.num_query_tokens :])[0]
    for special in (
        model.config.dec_token_id,
        model.config.pad_token_id,
        model.config.cls_token_id,
        model.config.sep_token_id,
    ):
        logits[:, special] = float("-inf")
    assert logits[:-1].argmax(-1).tolist() == tokens


def test_beam_and_sampling_options_return_token_lists(model_and_tokenizer):
    model, _ = model_and_tokenizer
    patches = torch.randn(2, 9, WIDTH)
    beams = model.generate(patches, num_beams=3, max_new_tokens=5, repetition_penalty=1.3)
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(
        patches, do_sample=True, temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=5, generator=g
    )
    assert len(beams) == len(sampled) == 2
    assert all(0 < len(s) <= 5 for s in beams + sampled)


def test_variants():
    assert QFormerConfig.variant("R").losses == ("itc",)
    assert QFormerConfig.variant("G").losses == ("itc", "itm", "itg")
    assert QFormerConfig().embed_dim == 256 and QFormerConfig().num_query_tokens == 32
    with pytest.raises(ValueError):
        QFormerConfig(losses=("itc", "mlm"))


def test_output_shortlist_restricts_decoding_and_matches_full_softmax_on_its_tokens():
    torch.manual_seed(1)
    model, tok = QFormer.from_text_model(num_hidden_layers=2, vision_width=WIDTH, num_query_tokens=8)
    model.eval()
    allowed = tok("tubular adenoma with low grade dysplasia")["input_ids"][1:-1]
    patches = torch.randn(1, 10, WIDTH)
    hidden = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        full = model.lm_head(hidden)
        model.set_output_vocab(allowed)
        short = model.lm_head.shortlist_logits(hidden)
        scattered = model.lm_head(hidden)
        tokens = model.generate(patches, num_beams=1, max_new_tokens=8)[0]
        beams = model.generate(patches, num_beams=3, max_new_tokens=8)[0]
    ids = sorted(set(allowed) | {model.config.sep_token_id})
    assert model.config.output_vocab == ids
    assert torch.allclose(short, full[:, ids], atol=1e-5)  # same logits (up to GEMM rounding), fewer
    assert torch.isinf(scattered).sum(-1).tolist() == [model.config.vocab_size - len(ids)] * 3
    assert tokens and set(tokens + beams) <= set(ids)
    # Targets map to shortlist positions; a token outside it is ignored (-100) by the loss.
    outside = tok.convert_tokens_to_ids("carcinoma")
    assert model.lm_head.targets(torch.tensor([ids[2], outside])).tolist() == [2, -100]
    dec = tok(["tubular adenoma"], return_tensors="pt")
    loss = model.itg_loss(patches, None, dec["input_ids"], dec["attention_mask"])
    assert torch.isfinite(loss)
    model.set_output_vocab(None)
    assert model.config.output_vocab is None and model.lm_head(hidden).isfinite().all()
