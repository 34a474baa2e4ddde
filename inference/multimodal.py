"""Zero-shot drafts from a multimodal LM (MedGemma / Gemma 3 image-text-to-text), fed a few patches.

A whole slide does not fit in a vision-language model's context, so the Q-Former chooses what to show:
the patches with the most cross-attention, spread out over the slide (a patch too close to one already
chosen is skipped). Those patches are read from the slide at full resolution and sent with a prompt
through ``AutoProcessor`` + ``AutoModelForImageTextToText`` loaded from a local directory only.

    reporter = MultimodalReporter.from_pretrained("/models/medgemma-4b-it")
    text, chosen = reporter.describe_slide(slide_path, features, embedding.attention, GenerationConfig(),
                                           k=4, context={"organ": "Colon", "clinical_history": "..."})
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from inference.bridge import hf_generate_options
from inference.features import SlideFeatures
from inference.generation import GenerationConfig, resolve, seeded

if TYPE_CHECKING:  # transformers loads only with a model (from_pretrained)
    from transformers import PreTrainedModel, ProcessorMixin

DEFAULT_PROMPT = (
    "You are an expert pathologist. The images are {n} representative regions of one H&E-stained "
    "whole-slide image{organ}. Describe the relevant histologic findings and state the most likely "
    "diagnosis as a short surgical pathology report."
)


def select_patches(
    attention: np.ndarray, coords: np.ndarray, k: int = 4, min_distance: float | None = None
) -> list[int]:
    """Indices of up to k patches: highest attention first, skipping any within ``min_distance`` of a pick.

    ``attention`` [N], ``coords`` [N, 2] (level-0 pixels). Default spacing: twice the median distance
    between a patch and its nearest neighbour, i.e. picks are never adjacent patches. If spacing leaves
    fewer than k, the rest are filled by attention alone.
    """
    attention = np.asarray(attention, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64).reshape(len(attention), 2)
    order = np.argsort(-attention, kind="stable")
    if min_distance is None:
        min_distance = 2.0 * _median_spacing(coords)
    chosen: list[int] = []
    for i in order:
        if len(chosen) == k:
            break
        if all(np.hypot(*(coords[i] - coords[j])) >= min_distance for j in chosen):
            chosen.append(int(i))
    for i in order:  # too few far-apart patches: fill up by attention
        if len(chosen) == k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def _median_spacing(coords: np.ndarray) -> float:
    if len(coords) < 2:
        return 0.0
    sample = coords[:: max(1, len(coords) // 512)]  # bounded cost on very large slides
    d = np.hypot(*(sample[:, None, :] - coords[None, :, :]).transpose(2, 0, 1))
    d[d == 0] = np.inf
    return float(np.median(d.min(axis=1)))


def read_patch_images(
    slide_path: str | os.PathLike,
    coords: np.ndarray,
    patch_size_level0: int,
    indices: Sequence[int],
    out_size: int | None = 448,
) -> list[Image.Image]:
    """PIL RGB images of the chosen patches, read at level 0 (``coords`` are level-0 top-left corners)."""
    import openslide

    images = []
    with openslide.OpenSlide(str(slide_path)) as slide:
        for i in indices:
            x, y = (int(v) for v in np.asarray(coords)[i])
            img = slide.read_region((x, y), 0, (int(patch_size_level0), int(patch_size_level0))).convert(
                "RGB"
            )
            if out_size and img.size != (out_size, out_size):
                img = img.resize((out_size, out_size), Image.Resampling.BILINEAR)
            images.append(img)
    return images


def build_messages(num_images: int, prompt: str | None = None, context: dict[str, str] | None = None) -> list:
    """Chat messages: the images first, then the instruction (with organ and clinical history if known)."""
    context = context or {}
    organ = f" ({context['organ']})" if context.get("organ") else ""
    text = (prompt or DEFAULT_PROMPT).format(n=num_images, organ=organ)
    if context.get("clinical_history"):
        text += f"\nClinical history: {context['clinical_history']}"
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def render_prompt(processor: Any, messages: list, image_token: str | None = None) -> str:
    """The processor's chat template if it has one; otherwise Gemma's turn format written out."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = image_token or getattr(processor, "boi_token", None) or "<start_of_image>"
    parts = []
    for m in messages:
        role = "model" if m["role"] == "assistant" else m["role"]
        body = "".join(image_token if c["type"] == "image" else c["text"] for c in m["content"])
        parts.append(f"<start_of_turn>{role}\n{body}<end_of_turn>\n")
    return "".join(parts) + "<start_of_turn>model\n"


class MultimodalReporter:
    def __init__(
        self, model: PreTrainedModel, processor: ProcessorMixin, device: str | torch.device = "cpu"
    ) -> None:
        self.model, self.processor, self.device = model, processor, torch.device(device)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> MultimodalReporter:
        """Load a local Gemma 3 / MedGemma directory (never downloads)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from inference.bridge import ensure_transformers_importable

        ensure_transformers_importable()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"{model_dir} is not a local model directory")
        processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), local_files_only=True, **kwargs)
        return cls(model.to(device).eval(), processor, device)

    @torch.no_grad()
    def describe(
        self,
        images: Sequence[Image.Image],
        config: GenerationConfig | None = None,
        prompt: str | None = None,
        context: dict[str, str] | None = None,
        **overrides: Any,
    ) -> str:
        """Generate text for the given patch images (PIL) and prompt. ``config.backend`` is not read here."""
        cfg = resolve(config, overrides)
        messages = build_messages(len(images), prompt, context)
        text = render_prompt(self.processor, messages)
        inputs = self.processor(text=[text], images=[list(images)], return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with seeded(cfg, self.device):
            out = self.model.generate(**inputs, **hf_generate_options(cfg))
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0].strip()

    def describe_slide(
        self,
        slide_path: str | os.PathLike,
        features: SlideFeatures,
        attention: np.ndarray,
        config: GenerationConfig | None = None,
        k: int = 4,
        prompt: str | None = None,
        context: dict[str, str] | None = None,
        patch_px: int = 448,
        **overrides: Any,
    ) -> tuple[str, list[int]]:
        """Pick k patches by Q-Former attention, read them from the slide, and describe them.

        ``features``: the slide's SlideFeatures (``coords`` [N, 2] level-0, ``patch_size_level0``);
        ``attention`` [N] aligned with its coords: ``PathAlign.embed(features).attention``, or the slide's
        share of a part's attention, ``Draft.per_slide_attention[i]`` (only the order matters).
        Returns (text, indices of the patches shown).
        """
        cfg = resolve(config, overrides)
        coords = np.asarray(features.coords)
        chosen = select_patches(attention, coords, k=k)
        images = read_patch_images(
            slide_path, coords, int(features.patch_size_level0), chosen, out_size=patch_px
        )
        return self.describe(images, cfg, prompt=prompt, context=context), chosen
