"""The high-level PathAlign API the web app (and notebooks) use.

    model = PathAlign.load("var/models/demo")
    features = model.extract("slide.svs")                # SlideFeatures: features [N, D], coords [N, 2], ...
    emb = model.embed(features)                          # SlideEmbedding
    emb.slide      np.ndarray [256]     L2-normalised: mean of the normalised query embeddings, renormalised
    emb.queries    np.ndarray [32, 256] L2-normalised query embeddings (for query-max similarity)
    emb.attention  np.ndarray [N]       per-patch attention (bundle.json's heatmap_attention: the cross-
                                        attention averaged over heads, queries and layers, or a v2 model's
                                        patch scorer); sums to 1; aligned with features.coords for heatmaps
    model.embed_text(["invasive carcinoma"])             # np.ndarray [n, 256], L2-normalised (projected
                                                         # mean of the token states)
    model.similarity(emb, text_embs)                     # query-max cosine, np.ndarray [n]
    model.itm_scores(features, texts)                    # P(match) per text, np.ndarray [n]
    model.classify(emb, {"adenoma": [...prompts], ...})  # {label: probability}
    model.generate(features, GenerationConfig(num_beams=3))  # report draft (Q-Former decoder; backend
                                                         # "llm": the stage-2 bridge); or num_beams=3 alone
    model.draft_part([features_1, features_2], config)   # Draft(text, per_slide_attention, embedding) of a
                                                         # case part: all its slides' patches read together
    retrieve(query, candidates, k, rerank=...)           # ITC top-k, optionally re-ranked by ITM

"Features" below is `inference.features.Features`: SlideFeatures (or anything with a ``.features`` tensor),
or a [N, D] tensor / array. Generation options are one `GenerationConfig` (inference.generation).

Why the slide vector is the mean of the normalised query embeddings: pgvector stores one 256-d vector per
slide for approximate nearest-neighbour search. The mean of unit query vectors, renormalised, is the
direction that maximises the *average* query cosine with a text; it ranks like query-max for texts the
queries agree on, and exact query-max re-scoring over the stored 32 query vectors is done afterwards.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inference.bridge import SoftPromptBridge
from inference.bundle import BRIDGE_DIR, Bundle, bundle_tiling, check_feature_width, features_key, load_bundle
from inference.draft import Draft, split_attention
from inference.encoders import PatchEncoder, build_encoder
from inference.features import Features, SlideFeatures, extract_slide_features, features_tensor
from inference.generation import GenerationConfig, resolve, torch_generator
from inference.progress import Progress

__all__ = [
    "Draft",
    "Features",
    "GenerationConfig",
    "PathAlign",
    "SlideEmbedding",
    "features_tensor",
    "pad_features",
    "query_max",
    "retrieve",
    "tidy_text",
]


@dataclass
class SlideEmbedding:
    slide: np.ndarray  # [E] float32, L2-normalised
    queries: np.ndarray  # [Q, E] float32, each row L2-normalised
    attention: np.ndarray  # [N] float32, sums to 1 over the slide's patches

    def to_dict(self) -> dict[str, list]:
        return {
            "slide": self.slide.tolist(),
            "queries": self.queries.tolist(),
            "attention": self.attention.tolist(),
        }


def pad_features(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [N_i, D] -> padded [B, max N, D] and bool mask [B, max N] (True = real patch)."""
    n = max(max(t.shape[0] for t in items), 1)
    out = torch.zeros(len(items), n, items[0].shape[1])
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    for i, t in enumerate(items):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def tidy_text(text: str) -> str:
    """Undo WordPiece spacing and restore sentence capitals (the MiniLM tokenizer is uncased)."""
    text = re.sub(r"\s+([.,;:!?)%])", r"\1", text)
    text = re.sub(r"([(])\s+", r"\1", text)
    text = re.sub(r"\s*-\s*", "-", text)
    text = re.sub(r"\s*/\s*", "/", text)
    text = re.sub(r"(\d)\. (\d)", r"\1.\2", text)  # "0. 9 mm" -> "0.9 mm" (WordPiece splits decimals)
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text.strip())


class PathAlign:
    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", lm_dir: str | None = None,
                 compile_encoder: bool = False) -> None:
        self.bundle = bundle
        self.compile_encoder = compile_encoder
        self.model = bundle.model.to(device).eval()
        self.tokenizer = bundle.tokenizer
        self.device = torch.device(device)
        self._encoder: PatchEncoder | None = None
        self._bridge: SoftPromptBridge | None = None
        self._lm_dir = lm_dir

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike, device: str = "cpu", lm_dir: str | None = None,
             compile_encoder: bool = False) -> PathAlign:
        """Load a bundle from a local directory. ``lm_dir`` points a stage-2 bridge at its local LM;
        ``compile_encoder`` compiles the patch encoder with torch.compile on first use."""
        return cls(load_bundle(bundle_dir, device=device), device=device, lm_dir=lm_dir,
                   compile_encoder=compile_encoder)

    # ---- description

    @property
    def spec(self) -> dict[str, Any]:
        c = self.bundle.config
        return {
            "name": c["name"],
            "version": c["version"],
            "variant": c.get("variant"),
            "created": c.get("created"),
            "encoder": c["encoder"],
            "tiling": self.tiling,
            "dims": c["dims"],
            "path": str(self.bundle.path),
        }

    @property
    def attention_from(self) -> str:
        """Which attention ``SlideEmbedding.attention`` (the heatmaps) holds: bundle.json's
        ``heatmap_attention``, "cross" (the default: cross-attention averaged) or "scorer" (the patch
        scorer's gated attention, v2 models). The demo-v2 build picks the one that localises the validation
        lesions better (`evaluate.choose_heatmap_attention`); bundles without lesion masks keep "cross"."""
        choice = str(self.bundle.config.get("heatmap_attention", "cross"))
        return choice if choice == "cross" or self.model.scorer is not None else "cross"

    @property
    def eval_figures(self) -> dict[str, Any]:
        return self.bundle.eval

    # ---- features (delegated to the data side)

    @property
    def tiling(self) -> dict[str, Any]:
        """How this bundle's slides are tiled: {"mpp", "patch_size", "overlap", "min_tissue"} (bundle.json)."""
        return bundle_tiling(self.bundle.config)

    def features_key(self, max_patches: int | None = None) -> str:
        """Identity of the features this bundle reads (encoder, SHA-256 of its weights, tiling, cap)."""
        return features_key(self.bundle.config, max_patches)

    @property
    def encoder(self) -> PatchEncoder:
        """The patch encoder named by the bundle's encoder spec (built once, on first use)."""
        if self._encoder is None:
            self._encoder = build_encoder(self.bundle.config["encoder"], device=str(self.device),
                                          compile=self.compile_encoder)
        return self._encoder

    def extract(self, slide_path: str | os.PathLike, progress: Progress | None = None, mpp: float | None = None,
                max_patches: int | None = None, batch_size: int | None = None, workers: int = 4,
                readers: str = "threads") -> SlideFeatures:
        """Tissue mask -> patch grid at the bundle's tiling -> patch features for one slide
        (``inference.features``). ``mpp`` overrides the file's microns per pixel; ``max_patches`` caps the
        grid (even spatial sampling); ``progress(done, total)`` counts encoded patches."""
        t = self.tiling
        return extract_slide_features(slide_path, self.encoder, patch_size=t["patch_size"], target_mpp=t["mpp"],
                                      max_patches=max_patches, batch_size=batch_size, workers=workers,
                                      min_tissue=t["min_tissue"], overlap=t["overlap"], mpp=mpp,
                                      progress=progress, readers=readers)

    # ---- embeddings

    def _check(self, x: torch.Tensor) -> None:
        check_feature_width(self.bundle.config, x.shape[-1])

    @torch.no_grad()
    def embed_many(self, items: Sequence[Features], batch_size: int = 16) -> list[SlideEmbedding]:
        """Embed several slides (padded in batches; padding never changes an embedding)."""
        out: list[SlideEmbedding] = []
        for start in range(0, len(items), batch_size):
            xs = [features_tensor(f) for f in items[start : start + batch_size]]
            for x in xs:
                self._check(x)
            patches, mask = pad_features(xs)
            query_out, attention = self.model.encode_patches(
                patches.to(self.device), mask.to(self.device), with_attention=True,
                attention_from=self.attention_from,
            )
            q = self.model.query_embeddings(query_out).float().cpu()  # [B, Q, E]
            slide = F.normalize(q.mean(1), dim=-1)  # [B, E]
            for i, x in enumerate(xs):
                out.append(
                    SlideEmbedding(
                        slide=slide[i].numpy().astype(np.float32),
                        queries=q[i].numpy().astype(np.float32),
                        attention=attention[i, : x.shape[0]].float().cpu().numpy().astype(np.float32),
                    )
                )
        return out

    def embed(self, features: Features) -> SlideEmbedding:
        return self.embed_many([features])[0]

    @torch.no_grad()
    def embed_text(self, texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[n, E] L2-normalised text embeddings (projected [CLS])."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = self._tokenize(texts[start : start + batch_size])
            out = self.model.encode_text(enc["input_ids"], enc["attention_mask"])
            chunks.append(self.model.text_embeddings(out, enc["attention_mask"]).float().cpu())
        if not chunks:
            return np.zeros((0, self.model.config.embed_dim), dtype=np.float32)
        return torch.cat(chunks).numpy().astype(np.float32)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.model.config.max_text_len,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _queries(self, item: SlideEmbedding | Features) -> np.ndarray:
        return item.queries if isinstance(item, SlideEmbedding) else self.embed(item).queries

    def similarity(self, slide: SlideEmbedding | np.ndarray | Features, text_embs: np.ndarray) -> np.ndarray:
        """Query-max cosine between a slide and each text embedding [n, E] -> [n].

        ``slide`` may be a SlideEmbedding, its [Q, E] query matrix, a single [E] vector, or features.
        """
        if isinstance(slide, np.ndarray) and slide.ndim in (1, 2) and slide.shape[-1] == text_embs.shape[-1]:
            queries = slide.reshape(-1, slide.shape[-1])
        else:
            queries = self._queries(slide)
        return query_max(queries, np.atleast_2d(text_embs))

    @torch.no_grad()
    def itm_scores(self, features: Features, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text describes the slide (ITM head), [n]. Used to re-rank retrieval."""
        x = features_tensor(features)
        self._check(x)
        enc = self._tokenize(list(texts))
        n = enc["input_ids"].shape[0]
        patches = x[None].to(self.device).expand(n, -1, -1)
        logits = self.model.itm_logits(patches, None, enc["input_ids"], enc["attention_mask"])
        return logits.float().softmax(-1)[:, 1].cpu().numpy()

    def label_embeddings(self, label_prompts: dict[str, list[str]]) -> tuple[list[str], np.ndarray]:
        """Prompt ensembles: the renormalised mean of each label's prompt embeddings -> [L, E]."""
        labels = list(label_prompts)
        embs = []
        for label in labels:
            e = self.embed_text(label_prompts[label] or [label]).mean(0)
            embs.append(e / max(np.linalg.norm(e), 1e-12))
        return labels, np.stack(embs).astype(np.float32)

    def classify(
        self, features_or_embedding: SlideEmbedding | Features, label_prompts: dict[str, list[str]],
        pooling: str = "mean",
    ) -> dict[str, float]:
        """Zero-shot classification: softmax over labels of query-max similarity / learned temperature.

        ``pooling`` "mean": a label is its prompts' renormalised mean embedding (a CLIP-style ensemble of
        paraphrases); "max": a label scores as its best-matching prompt (a label that is a union of
        different things, e.g. "Likely malignant" = every malignant diagnosis, whose mean matches none of
        them: on benchmark v2's test and validation slides the v2 demo model's triage AUC was 0.66 with
        the mean and 1.00 with the max)."""
        if pooling == "max":
            labels = list(label_prompts)
            embedding = features_or_embedding if isinstance(features_or_embedding, SlideEmbedding) \
                else self.embed(features_or_embedding)
            sims = [float(self.similarity(embedding, self.embed_text(label_prompts[label] or [label])).max())
                    for label in labels]
            scores = np.asarray(sims) / float(self.model.temp.detach())
        elif pooling == "mean":
            labels, embs = self.label_embeddings(label_prompts)
            scores = self.similarity(features_or_embedding, embs) / float(self.model.temp.detach())
        else:
            raise ValueError(f"pooling must be 'mean' or 'max', not {pooling!r}")
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        return {label: float(p) for label, p in zip(labels, probs, strict=True)}

    # ---- generation

    def generate(self, features: Features, config: GenerationConfig | None = None, **overrides: Any) -> str:
        """A report draft for one slide: ``config.backend`` "qformer" (ITG decoder), "llm" (stage-2 bridge)
        or "none" (""). ``overrides`` (e.g. ``num_beams=2``) change a copy of ``config`` (default: the
        library's ``GenerationConfig()``)."""
        return self.generate_many([features], resolve(config, overrides))[0]

    @torch.no_grad()
    def generate_many(
        self, items: Sequence[Features], config: GenerationConfig | None = None,
        embeddings: Sequence[SlideEmbedding] | None = None, **overrides: Any
    ) -> list[str]:
        """One draft per slide, as `generate`; a seed drives one random stream over all the slides.
        ``embeddings``: the items' embeddings when the caller has them (ranking candidates needs them)."""
        cfg = resolve(config, overrides)
        xs = [features_tensor(f) for f in items]
        for x in xs:
            self._check(x)
        if cfg.backend == "none":
            return ["" for _ in xs]
        if cfg.backend == "llm":
            patches, mask = pad_features(xs)
            query_out, _ = self.model.encode_patches(patches.to(self.device), mask.to(self.device))
            return self.bridge.generate(query_out, cfg)
        if "itg" not in self.model.config.losses:
            raise ValueError("this bundle is a retrieval model (PathAlign-R): it was not trained to generate")
        generator = torch_generator(cfg, self.device)
        texts = []
        for i, x in enumerate(xs):
            ids = self.model.generate(x[None].to(self.device), None, cfg, generator=generator)[0]
            text = tidy_text(self.tokenizer.decode(ids, skip_special_tokens=True))
            if cfg.candidates > 1:
                text = self._best_of_candidates(x, text, cfg, embeddings[i] if embeddings else self.embed(x))
            texts.append(text)
        return texts

    def _best_of_candidates(self, x: torch.Tensor, first: str, cfg: GenerationConfig,
                            embedding: SlideEmbedding) -> str:
        """``first`` (the decoder's own draft) and ``cfg.candidates - 1`` sampled drafts of the same slide;
        returns the one whose text embedding the slide's queries match best (query-max ITC similarity; ties
        keep the earlier). Deterministic: the samples' generator is seeded from ``cfg.seed`` (or 0)."""
        sample = cfg.with_(do_sample=True, top_p=min(cfg.top_p, 0.9), candidates=1, seed=cfg.seed or 0)
        generator = torch_generator(sample, self.device)
        texts = [first]
        for _ in range(cfg.candidates - 1):
            ids = self.model.generate(x[None].to(self.device), None, sample, generator=generator)[0]
            texts.append(tidy_text(self.tokenizer.decode(ids, skip_special_tokens=True)))
        scores = self.similarity(embedding, self.embed_text(texts))
        return texts[int(np.argmax(scores))]

    def draft_part(self, feature_sets: Sequence[SlideFeatures], config: GenerationConfig) -> Draft:
        """The draft of a case part from all its slides' patches, read together as one bag.

        features = cat(feature_sets' features) [N_1 + ... + N_s, D] -> `embed` (one SlideEmbedding for the
        part) and `generate(features, config)`; the part's attention is cut back into one array per slide,
        aligned with ``feature_sets[i].coords``. ``config.backend == "none"`` gives the text "".
        """
        if not feature_sets:
            raise ValueError("a part needs at least one slide's features; got none")
        xs = [features_tensor(fs) for fs in feature_sets]
        for i, (fs, x) in enumerate(zip(feature_sets, xs, strict=True)):
            if len(np.asarray(fs.coords)) != x.shape[0]:
                raise ValueError(f"feature set {i}: {x.shape[0]} patches but {len(fs.coords)} coords")
            self._check(x)
        sizes = [int(x.shape[0]) for x in xs]
        if sum(sizes) == 0:
            raise ValueError(f"the part's {len(xs)} slide(s) have no tissue patches: nothing to draft from")
        features = torch.cat(xs)  # [N, D], a part = all its slides' patches
        embedding = self.embed(features)
        text = self.generate_many([features], config, embeddings=[embedding])[0]  # the part is embedded once
        return Draft(
            text=text, per_slide_attention=split_attention(embedding.attention, sizes), embedding=embedding
        )

    @property
    def bridge(self) -> SoftPromptBridge:
        """The stage-2 bridge to a local causal LM (bundle's ``bridge/``), loaded on first use."""
        if self._bridge is None:
            if not (self.bundle.path / BRIDGE_DIR).is_dir():
                raise ValueError("this bundle has no stage-2 bridge; generate with backend='qformer'")
            self._bridge = SoftPromptBridge.load(
                self.bundle.path / BRIDGE_DIR, lm_dir=self._lm_dir, device=str(self.device)
            )
        return self._bridge

    # ---- retrieval

    def retrieve(
        self,
        query_emb: np.ndarray,
        candidate_embs: np.ndarray,
        k: int = 10,
        rerank: Callable[[list[int]], np.ndarray] | None = None,
        rerank_top: int | None = None,
    ) -> list[tuple[int, float]]:
        return retrieve(query_emb, candidate_embs, k, rerank, rerank_top)

    def text_reranker(self, features: Features, texts: Sequence[str]) -> Callable[[list[int]], np.ndarray]:
        """For slide -> text retrieval: ITM scores of the chosen candidate texts against this slide."""
        return lambda idx: self.itm_scores(features, [texts[i] for i in idx])

    def slide_reranker(self, text: str, features: Sequence[Features]) -> Callable[[list[int]], np.ndarray]:
        """For text -> slide retrieval: ITM scores of this text against the chosen candidate slides."""
        return lambda idx: np.array([self.itm_scores(features[i], [text])[0] for i in idx])


def query_max(queries: np.ndarray, text_embs: np.ndarray) -> np.ndarray:
    """[Q, E] x [n, E] -> [n]: best query cosine for each text."""
    return (np.atleast_2d(text_embs) @ np.atleast_2d(queries).T).max(axis=1)


def retrieve(
    query_emb: np.ndarray,
    candidate_embs: np.ndarray,
    k: int = 10,
    rerank: Callable[[list[int]], np.ndarray] | None = None,
    rerank_top: int | None = None,
) -> list[tuple[int, float]]:
    """Top-k candidates by ITC similarity, then (optionally) re-ranked by ITM.

    ``query_emb``: [E] (text or slide vector) or [Q, E] (slide queries).
    ``candidate_embs``: [M, E] (texts or slide vectors) or [M, Q, E] (slide queries).
    Similarity is query-max whenever one side has queries, plain cosine otherwise.
    ``rerank(indices) -> scores`` re-orders the ITC top ``rerank_top`` (default 4k) by its scores.
    Returns [(candidate index, score)], best first; the score is the ITM score when re-ranked.
    """
    q = np.asarray(query_emb, dtype=np.float32)
    c = np.asarray(candidate_embs, dtype=np.float32)
    if c.ndim == 3:  # [M, Q, E] slides vs a text [E]
        scores = np.einsum("mqe,e->mq", c, q.reshape(-1)).max(axis=1)
    elif q.ndim == 2:  # slide queries [Q, E] vs texts [M, E]
        scores = query_max(q, c)
    else:
        scores = c @ q
    order = np.argsort(-scores, kind="stable")
    if rerank is None:
        return [(int(i), float(scores[i])) for i in order[:k]]
    top = [int(i) for i in order[: max(k, rerank_top or 4 * k)]]
    itm = np.asarray(rerank(top), dtype=np.float32)
    reordered = sorted(zip(top, itm, strict=True), key=lambda p: -p[1])
    return [(i, float(s)) for i, s in reordered[:k]]
