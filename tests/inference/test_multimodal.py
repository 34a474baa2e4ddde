"""Zero-shot multimodal drafts: patch choice, prompts, and a tiny Gemma 3 built offline end to end."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inference.bridge import ensure_transformers_importable
from inference.multimodal import (
    MultimodalReporter,
    build_messages,
    read_patch_images,
    render_prompt,
    select_patches,
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def make_tiny_gemma3(directory):
    """A Gemma 3 image-text-to-text model (tiny text + SigLIP configs) and processor, written like a real one."""
    ensure_transformers_importable()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = [
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(
        ["You are an expert pathologist. Describe the histologic findings and diagnosis."] * 3, trainer
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=4,
    )
    text = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.image_token_id,
    )
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_select_patches_by_attention_and_spread():
    coords = np.array([[0, 0], [224, 0], [448, 0], [2240, 0], [2464, 0]])
    attention = np.array([0.30, 0.29, 0.05, 0.20, 0.16])
    # 0 is best; 1 is adjacent to 0 (spacing 224 < 448) so skipped; then 3; 4 adjacent to 3; then 2? 448 from 0: ok
    assert select_patches(attention, coords, k=3) == [0, 3, 2]
    assert select_patches(attention, coords, k=5) == [0, 3, 2, 1, 4]  # fill-up by attention
    assert select_patches(attention, coords, k=2, min_distance=0) == [0, 1]


def test_messages_and_prompt_without_a_template():
    msgs = build_messages(2, context={"organ": "Colon", "clinical_history": "62F, polyp"})
    assert [c["type"] for c in msgs[0]["content"]] == ["image", "image", "text"]
    assert (
        "2 representative regions" in msgs[0]["content"][-1]["text"]
        and "(Colon)" in msgs[0]["content"][-1]["text"]
    )
    assert "62F, polyp" in msgs[0]["content"][-1]["text"]
    prompt = render_prompt(SimpleNamespace(chat_template=None), build_messages(1, prompt="Say {n}{organ}."))
    assert prompt == "<start_of_turn>user\n<start_of_image>Say 1.<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return make_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


def test_tiny_gemma3_describes_patches(gemma_dir):
    from PIL import Image

    reporter = MultimodalReporter.from_pretrained(gemma_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    text = reporter.describe(images, max_new_tokens=4)
    assert isinstance(text, str)
    assert reporter.describe(images, max_new_tokens=4) == text  # greedy is deterministic
    sampled = reporter.describe(images, max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9)
    assert isinstance(sampled, str)


def test_describe_slide_reads_the_chosen_patches(gemma_dir, tmp_path):
    from inference.synthetic.wsi import write_pyramidal_tiff

    rgb = np.zeros((512, 512, 3), dtype=np.uint8)
    rgb[:, 256:] = 200  # right half bright
    path = write_pyramidal_tiff(tmp_path / "s.svs", rgb, min_level_size=4096)
    coords = np.array([[0, 0], [256, 0], [0, 256], [256, 256]])
    features = SimpleNamespace(coords=coords, patch_size_level0=256, features=torch.zeros(4, 8))
    images = read_patch_images(path, coords, 256, [1, 0], out_size=64)
    assert images[0].size == (64, 64) and np.asarray(images[0]).mean() > 150 > np.asarray(images[1]).mean()
    reporter = MultimodalReporter.from_pretrained(gemma_dir)
    text, chosen = reporter.describe_slide(
        path, features, np.array([0.1, 0.6, 0.1, 0.2]), k=2, patch_px=32, max_new_tokens=3
    )
    assert chosen == [1, 3] and isinstance(text, str)  # all neighbours are too close: filled by attention


def test_refuses_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        MultimodalReporter.from_pretrained(tmp_path / "nope")
