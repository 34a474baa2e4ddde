"""Stage 2 on a tiny GPT-2 built from a config, with a BPE tokenizer trained here: nothing downloaded."""

from __future__ import annotations

import pytest
import torch

from inference.bridge import SoftPromptBridge, ensure_transformers_importable

REPORTS = [
    "Colon, biopsy: tubular adenoma with low-grade dysplasia.",
    "Breast, core biopsy: invasive ductal carcinoma, grade 2.",
    "Prostate, needle biopsy: benign prostatic tissue.",
    "Lung, wedge resection: adenocarcinoma, acinar pattern.",
]


def make_tiny_lm(directory, arch: str = "gpt2"):
    """Write a tiny causal LM + tokenizer to `directory`, as a real local model directory would look."""
    ensure_transformers_importable()
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(REPORTS * 5 + ["Write the pathology report for this slide:"], trainer)
    from tokenizers import decoders

    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tok),
            n_positions=256,
            n_embd=32,
            n_layer=2,
            n_head=2,
            initializer_range=0.3,  # large init: a random LM that reacts to its prompt
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-gpt2"))


def test_only_the_projection_trains_and_the_loss_goes_down(lm_dir):
    torch.manual_seed(0)
    bridge = SoftPromptBridge.from_lm_dir(lm_dir, qformer_hidden=24)
    trainable = {n for n, p in bridge.named_parameters() if p.requires_grad}
    assert trainable == {"proj.weight", "proj.bias"}
    lm_before = {k: v.clone() for k, v in bridge.lm.state_dict().items()}
    queries = torch.randn(4, 8, 24)
    opt = torch.optim.AdamW(bridge.trainable_parameters(), lr=3e-2)
    losses = []
    for _ in range(25):
        loss = bridge(queries, REPORTS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert all(torch.equal(v, bridge.lm.state_dict()[k]) for k, v in lm_before.items())


def test_generation_options_and_round_trip(lm_dir, tmp_path):
    torch.manual_seed(0)
    bridge = SoftPromptBridge.from_lm_dir(lm_dir, qformer_hidden=24, max_report_tokens=64)
    queries = torch.randn(2, 8, 24)
    greedy = bridge.generate(queries, num_beams=1, max_new_tokens=8)
    beams = bridge.generate(queries, num_beams=3, max_new_tokens=8, repetition_penalty=1.2)
    sampled = bridge.generate(
        queries, do_sample=True, num_beams=1, temperature=0.8, top_p=0.9, max_new_tokens=8
    )
    assert len(greedy) == len(beams) == len(sampled) == 2 and all(isinstance(t, str) for t in greedy)
    bridge.save(tmp_path / "bridge")
    again = SoftPromptBridge.load(tmp_path / "bridge", lm_dir=lm_dir)
    assert torch.equal(again.proj.weight, bridge.proj.weight)
    assert again.generate(queries, num_beams=1, max_new_tokens=8) == greedy


def test_lora_on_a_llama_style_model(tmp_path):
    lm_dir = make_tiny_lm(tmp_path / "tiny-llama", arch="llama")
    bridge = SoftPromptBridge.from_lm_dir(lm_dir, qformer_hidden=24, lora={"r": 2, "lora_alpha": 4})
    names = [n for n, p in bridge.named_parameters() if p.requires_grad]
    assert "proj.weight" in names and any("lora_" in n for n in names)
    loss = bridge(torch.randn(2, 8, 24), REPORTS[:2])
    loss.backward()
    bridge.save(tmp_path / "b")
    again = SoftPromptBridge.load(tmp_path / "b", lm_dir=lm_dir)
    q = torch.randn(1, 8, 24)
    assert again.generate(q, num_beams=1, max_new_tokens=5) == bridge.generate(
        q, num_beams=1, max_new_tokens=5
    )


def test_stage2_training_and_llm_drafts_through_the_api(lm_dir, tmp_path):
    from inference.bundle import BRIDGE_DIR, save_bundle
    from inference.pathalign import PathAlign
    from inference.qformer import QFormer
    from inference.train import BridgeTrainConfig, Example, train_stage2

    torch.manual_seed(0)
    qformer, tok = QFormer.from_text_model(num_hidden_layers=1, vision_width=12, num_query_tokens=4)
    examples = [Example(torch.randn(5, 12), REPORTS[i % 4], {"split": "train"}) for i in range(8)]
    bridge, history = train_stage2(
        qformer, examples, lm_dir, BridgeTrainConfig(epochs=3, batch_size=4, lr=3e-2), progress=False
    )
    losses = [e["train_loss"] for e in history["epochs"]]
    assert losses[-1] < losses[0]
    path = save_bundle(tmp_path / "b", qformer, tok, {"kind": "test"}, bridge=bridge)
    assert (path / BRIDGE_DIR / "bridge.safetensors").exists()
    model = PathAlign.load(path, lm_dir=str(lm_dir))
    draft = model.generate(torch.randn(5, 12), backend="llm", num_beams=2, max_new_tokens=6)
    assert isinstance(draft, str)
