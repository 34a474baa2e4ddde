"""Stage 2 with a tiny Llama (AutoModelForCausalLM) and a tiny Gemma3ForConditionalGeneration (MedGemma's
class): training lowers the loss and drafting works (Gemma 3's generate takes no inputs_embeds)."""
from __future__ import annotations

import pytest
import torch

from inference.bridge import SoftPromptBridge
from inference.generation import GenerationConfig
from tests.inference.test_bridge import make_tiny_lm
from tests.inference.test_multimodal import make_tiny_gemma3

REPORTS = ["Tubular adenoma with low-grade dysplasia.", "Invasive adenocarcinoma, moderately differentiated."]


def _train_and_draft(lm_dir):
    torch.manual_seed(0)
    bridge = SoftPromptBridge.from_lm_dir(lm_dir, qformer_hidden=16, max_report_tokens=24)
    q = torch.randn(2, 4, 16)
    opt = torch.optim.AdamW(bridge.trainable_parameters(), lr=5e-2)
    losses = []
    for _ in range(12):
        loss = bridge(q, REPORTS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in bridge.lm.parameters())  # the LM stays frozen
    for cfg in (GenerationConfig(num_beams=1, max_new_tokens=6), GenerationConfig(num_beams=2, max_new_tokens=6),
                GenerationConfig(do_sample=True, seed=3, max_new_tokens=6)):
        texts = bridge.generate(q, cfg)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    a = bridge.generate(q, GenerationConfig(num_beams=1, max_new_tokens=6))
    assert a == bridge.generate(q, GenerationConfig(num_beams=1, max_new_tokens=6))  # deterministic
    return bridge


def test_llama_causal_lm_trains_and_drafts(tmp_path):
    bridge = _train_and_draft(make_tiny_lm(tmp_path / "llama", arch="llama"))
    assert bridge._embeds_generate is True


@pytest.mark.filterwarnings("ignore")
def test_gemma3_conditional_generation_trains_and_drafts(tmp_path):
    lm_dir = make_tiny_gemma3(tmp_path / "gemma3")
    bridge = _train_and_draft(lm_dir)
    assert type(bridge.lm).__name__ == "Gemma3ForConditionalGeneration"
    assert bridge._embeds_generate is False  # drafted through the embedding hook
    # The hook path gives what the model computes from the same embeddings by hand (greedy, first token).
    q = torch.randn(1, 4, 16)
    prefix, _ = bridge.prefix(q)
    with torch.no_grad():
        logits = bridge.lm(inputs_embeds=prefix).logits[:, -1]
    first = bridge._generate_through_embedding_hook(prefix, {"max_new_tokens": 1, "do_sample": False,
                                                             "pad_token_id": bridge.tokenizer.pad_token_id})
    assert int(first[0, 0]) == int(logits.argmax(-1)[0])
