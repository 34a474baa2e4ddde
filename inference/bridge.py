"""Stage 2: the Q-Former's query outputs as a soft prompt for any local causal language model.

A linear projection maps the Q query outputs [B, Q, H] into the LM's embedding space [B, Q, H_lm]; the LM
reads  [BOS] [soft prompt] [instruction] [report] [EOS]  and learns to write the report. Only the projection
is trained (optionally LoRA adapters on the LM through ``peft``); the LM weights stay frozen. The LM is any
``AutoModelForCausalLM`` directory on local disk (GPT-2, Llama, Gemma, and image-text models such as
MedGemma 1.5 4B-it, which load as ``Gemma3ForConditionalGeneration``). Drafting passes the prompt as
``inputs_embeds`` where the model's ``generate`` accepts that, and otherwise swaps the embeddings in through
a hook on the input embedding layer (see ``_generate_through_embedding_hook``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from inference.generation import GenerationConfig, resolve, seeded

if TYPE_CHECKING:  # transformers loads only with an LM (load_causal_lm)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_INSTRUCTION = "Write the pathology report for this slide:"


def ensure_transformers_importable() -> None:
    """Hide a torchvision build that cannot load, so that transformers' model classes still import.

    PyPI's Linux torchvision wheel is a CUDA build; next to a CPU-only torch its C extension fails to load
    and every ``from transformers import SomeModel`` then fails. transformers (and timm) treat a missing
    torchvision as optional, so marking it absent is safe: image processors fall back to their PIL backend.
    A working torchvision is left alone.
    """
    if sys.modules.get("torchvision", False):  # already imported and working
        return
    try:  # preferred: make torchvision importable (defines the missing op schemas; see inference.encoders)
        from inference.encoders import ensure_torchvision_importable

        if ensure_torchvision_importable():
            return
    except ImportError:
        pass
    if "torchvision" in sys.modules:  # already marked absent
        return
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means "unusable"
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment] - makes find_spec() report it absent
        try:
            from transformers.utils import import_utils

            for fn in ("is_torchvision_available", "is_torchvision_v2_available"):
                cached = getattr(import_utils, fn, None)
                if hasattr(cached, "cache_clear"):
                    cached.cache_clear()
        except Exception:  # noqa: BLE001, S110 - transformers absent or changed: nothing cached to clear
            pass
        warnings.warn(
            f"torchvision is installed but cannot load ({exc}); continuing without it",
            RuntimeWarning,
            stacklevel=2,
        )


@dataclass
class BridgeConfig:
    lm_dir: str  # local directory of the causal LM (recorded; may be overridden at load time)
    qformer_hidden: int  # H of the Q-Former
    lm_hidden: int = 0  # filled from the LM's input embeddings
    instruction: str = DEFAULT_INSTRUCTION
    max_report_tokens: int = 192
    lora: dict[str, Any] | None = None  # e.g. {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    extra: dict[str, Any] = field(default_factory=dict)


def load_causal_lm(
    lm_dir: str | os.PathLike, dtype: torch.dtype | None = None, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a local directory only; the model is frozen and in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_transformers_importable()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(lm_dir), local_files_only=True)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    lm = AutoModelForCausalLM.from_pretrained(str(lm_dir), local_files_only=True, **kwargs).to(device)
    lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


def hf_generate_options(config: GenerationConfig) -> dict[str, Any]:
    """The transformers ``generate`` keywords for a GenerationConfig (sampling knobs only when sampling)."""
    options: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        num_beams=config.num_beams,
        do_sample=config.do_sample,
        repetition_penalty=config.repetition_penalty,
    )
    if config.num_beams > 1:
        options["length_penalty"] = config.length_penalty
    if config.do_sample:
        # top_k=0 is "no top-k filter" here as in the Q-Former decoder (None would mean the LM's default).
        options.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    return options


class SoftPromptBridge(nn.Module):
    def __init__(self, config: BridgeConfig, lm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        config.lm_hidden = lm.get_input_embeddings().weight.shape[1]
        self.proj = nn.Linear(config.qformer_hidden, config.lm_hidden)  # [B, Q, H] -> [B, Q, H_lm]
        if config.lora:
            from peft import LoraConfig, get_peft_model

            lora = {
                "r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.05,
                "target_modules": "all-linear",
            } | config.lora
            lm = get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", **lora))
        self.lm = lm
        self._embeds_generate: bool | None = None  # does lm.generate take inputs_embeds? (found on first use)

    @classmethod
    def from_lm_dir(
        cls,
        lm_dir: str | os.PathLike,
        qformer_hidden: int,
        lora: dict | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> SoftPromptBridge:
        lm, tokenizer = load_causal_lm(lm_dir, dtype=dtype, device=device)
        config = BridgeConfig(lm_dir=str(lm_dir), qformer_hidden=qformer_hidden, lora=lora, **kwargs)
        return cls(config, lm, tokenizer).to(device)

    # ---- inputs

    def _embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def prefix(self, query_out: torch.Tensor, instruction: str | None = None) -> tuple[torch.Tensor, int]:
        """[BOS] [soft prompt] [instruction] embeddings [B, P, H_lm] (same for every row, so no padding)."""
        b, device = query_out.shape[0], query_out.device
        soft = self.proj(query_out.to(self.proj.weight.dtype))  # [B, Q, H_lm]
        parts = []
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            parts.append(self._embed_tokens(torch.full((b, 1), bos, device=device)))
        parts.append(soft.to(self._embed_tokens(torch.zeros(1, 1, dtype=torch.long, device=device)).dtype))
        text = instruction if instruction is not None else self.config.instruction
        if text:
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
            parts.append(self._embed_tokens(ids.expand(b, -1)))
        embeds = torch.cat(parts, dim=1)
        return embeds, embeds.shape[1]

    # ---- training

    def forward(
        self, query_out: torch.Tensor, reports: list[str], instruction: str | None = None
    ) -> torch.Tensor:
        """Next-token loss on the report tokens only (the prefix is not predicted)."""
        device = query_out.device
        prefix, p = self.prefix(query_out, instruction)
        eos = self.tokenizer.eos_token or ""
        # Right padding: each report follows the prefix directly; the padding is masked and unlabelled.
        enc = self.tokenizer(
            [r + eos for r in reports],
            add_special_tokens=False,
            padding="longest",
            truncation=True,
            max_length=self.config.max_report_tokens,
            return_tensors="pt",
            padding_side="right",
        ).to(device)
        embeds = torch.cat([prefix, self._embed_tokens(enc.input_ids)], dim=1)  # [B, P + T, H_lm]
        mask = torch.cat(
            [torch.ones(prefix.shape[:2], dtype=enc.attention_mask.dtype, device=device), enc.attention_mask],
            dim=1,
        )
        labels = torch.cat(
            [
                torch.full(prefix.shape[:2], -100, device=device),
                enc.input_ids.masked_fill(enc.attention_mask == 0, -100),
            ],
            dim=1,
        )
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    # ---- generation

    @torch.no_grad()
    def generate(
        self,
        query_out: torch.Tensor,  # [B, Q, H] Q-Former query outputs
        config: GenerationConfig | None = None,
        instruction: str | None = None,
        **overrides: Any,
    ) -> list[str]:
        """One text per row of ``query_out``. ``config.backend`` is not read here (this is the "llm" one)."""
        cfg = resolve(config, overrides)
        prefix, _ = self.prefix(query_out, instruction)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        options = dict(attention_mask=mask, pad_token_id=self.tokenizer.pad_token_id,
                       eos_token_id=self.tokenizer.eos_token_id, **hf_generate_options(cfg))
        with seeded(cfg, prefix.device):
            if self._embeds_generate is not False:
                try:
                    # Decoder-only models (GPT-2, Llama, Gemma 3 text...) take the prompt as embeddings and
                    # return the new tokens alone.
                    out = self.lm.generate(inputs_embeds=prefix, **options)
                    self._embeds_generate = True
                    return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
                except ValueError as exc:
                    if "inputs_embeds" not in str(exc):
                        raise
                    self._embeds_generate = False  # e.g. Gemma3ForConditionalGeneration (MedGemma)
            out = self._generate_through_embedding_hook(prefix, options)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _generate_through_embedding_hook(self, prefix: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """For models whose `generate` takes token ids only (Gemma3ForConditionalGeneration): generate from
        placeholder ids [B, P] while a forward hook on the input embedding layer swaps the prompt's
        embeddings in on the prefill step (the one call that embeds all P positions; beams repeat rows).
        Every decoding strategy of `generate` then works unchanged. Returns the new tokens [B, T]."""
        b, p = prefix.shape[:2]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((b, p), pad, dtype=torch.long, device=prefix.device)
        state = {"swapped": False}

        def swap(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if state["swapped"] or output.ndim != 3 or output.shape[1] != p:
                return output
            state["swapped"] = True
            return prefix.to(output.dtype).repeat_interleave(output.shape[0] // b, dim=0)

        # The placeholder ids are padding: without an explicit mask generate would mask the whole prompt.
        options = {**options, "attention_mask": torch.ones_like(ids)}
        handle = self.lm.get_input_embeddings().register_forward_hook(swap)
        try:
            out = self.lm.generate(input_ids=ids, **options)
        finally:
            handle.remove()
        if not state["swapped"]:
            raise RuntimeError("the LM never embedded the prompt; cannot draft with this model class")
        return out[:, p:]

    # ---- files: only the trained parts are saved; the LM stays where it is

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"proj.{k}": v.detach().cpu() for k, v in self.proj.state_dict().items()}
        if self.config.lora:
            from peft import get_peft_model_state_dict

            state |= {f"lora.{k}": v.detach().cpu() for k, v in get_peft_model_state_dict(self.lm).items()}
        return state

    def save(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.trainable_state_dict().items()},
            str(directory / "bridge.safetensors"),
        )
        (directory / "bridge.json").write_text(json.dumps(asdict(self.config), indent=2))
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        lm_dir: str | os.PathLike | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> SoftPromptBridge:
        """Rebuild from ``bridge.json`` + ``bridge.safetensors``; ``lm_dir`` overrides the recorded LM path."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config = BridgeConfig(**json.loads((directory / "bridge.json").read_text()))
        if lm_dir is not None:
            config.lm_dir = str(lm_dir)
        lm, tokenizer = load_causal_lm(config.lm_dir, dtype=dtype, device=device)
        expected = config.lm_hidden
        bridge = cls(config, lm, tokenizer)
        if expected and expected != config.lm_hidden:
            raise ValueError(
                f"bridge was trained for a {expected}-d LM but {config.lm_dir} is {config.lm_hidden}-d"
            )
        state = load_file(str(directory / "bridge.safetensors"))
        bridge.proj.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("proj.")})
        lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
        if lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(bridge.lm, lora)
        return bridge.to(device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
