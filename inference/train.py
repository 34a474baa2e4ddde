"""Training: stage 1 (Q-Former, PathAlign-R or -G) and stage 2 (soft-prompt bridge to a local causal LM).

Trains on cached patch features (one file per slide, written by ``inference.features.extract_corpus_features``)
paired with report texts from a corpus manifest. Slides have different patch counts: batches are padded and
carry a patch mask. The held-out split is the manifest's ``split`` (train / val / test); records without one
are assigned deterministically from the seed.

    python -m inference.train --corpus DIR --features DIR --out var/models/mine --variant G
    python -m inference.train --corpus DIR --features DIR --stage 2 --bundle var/models/mine --lm-dir LM_DIR
    torchrun --nproc-per-node 8 -m inference.train --corpus DIR --features DIR --out var/models/mine

Stage 1 reads its batches through a `torch.utils.data.DataLoader` (``inference.data``): ``--num-workers``
processes stream the per-slide feature files from disk (the CLI keeps no features in memory), the texts
are tokenised once when the dataset is made, and batches are pinned on CUDA. Under ``torchrun`` it is
data-parallel (DDP, ``inference.distributed``): ``--batch-size`` is the *global* batch, split over the
ranks, and the ITC negatives and ITM hard negatives are drawn from all ranks' embeddings, so N processes
compute the update one process would compute on the same global batch. Rank 0 writes checkpoints and the
bundle. Progress bars (tqdm), a checkpoint after every epoch (``--resume`` continues from it, RNG state
included), seeds, and bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from inference.data import (
    ClassTexts,
    GlobalBatchSampler,
    Stage1Collator,
    Stage1Dataset,
    feature_statistics,
    make_loader,
    mix_seed,
)
from inference.distributed import DistContext
from inference.qformer import QFormer, default_text_model_dir

# ----------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Example:
    """One bag and its text: a slide, or a case part (all its slides' patches as one bag, paired with the
    part's report, as PathAlign pairs part-level text with its slides). ``features`` [N, D] float32 in
    memory, or None with ``path`` (or a part's ``paths``) set: feature files read when needed
    (``load_features()``; what the training loader's workers do)."""

    features: torch.Tensor | None  # [N, D] float32 (None: streamed from `path` / `paths`)
    text: str  # the training text (diagnostic part of the report)
    record: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # the feature file (streamed examples)
    n_patches: int | None = None
    feature_dim: int | None = None
    paths: tuple[str, ...] = ()  # a part: every slide's feature file, read and concatenated in slide order
    slide_patches: tuple[int, ...] = ()  # a part: each slide's patch count

    def __post_init__(self) -> None:
        if self.features is None and self.path is None and not self.paths:
            raise ValueError("an Example needs features or the path of a feature file")
        if self.features is not None:
            self.n_patches = int(self.features.shape[0])
            self.feature_dim = int(self.features.shape[1]) if self.features.dim() > 1 else 0

    @property
    def split(self) -> str:
        return self.record.get("split", "train")

    @property
    def dim(self) -> int:
        if self.feature_dim is None:
            self.feature_dim = int(self.load_features().shape[1])
        return self.feature_dim

    def load_features(self) -> torch.Tensor:
        """[N, D] float32: the tensor in memory, or read from the feature file."""
        if self.features is not None:
            return self.features
        if self.paths:
            return torch.cat([load_features_file(p) for p in self.paths])
        return load_features_file(self.path)


SECTION = re.compile(r"^\s*([A-Za-z][A-Za-z ]{1,40}):\s*(.*)$", re.S)


def diagnostic_text(report: str) -> str:
    """The parts of a report that the slide can support: the diagnosis and microscopic sections.

    Clinical history, gross description and comments (immunostains, consults) are not visible in an H&E
    slide, so training a model to write them teaches it to invent them. Paragraphs are split on blank
    lines; a paragraph's title is the text before its first colon. Reports with no recognised section are
    used whole. Bullets and line breaks are flattened to one line.
    """
    kept = []
    for para in re.split(r"\n\s*\n", report.strip()):
        m = SECTION.match(para)
        if m and re.search(r"diagnos|microscop", m.group(1), re.I):
            kept.append(m.group(2))
    text = "\n".join(kept) if kept else report
    text = re.sub(r"(^|\n)\s*[-*•]\s+", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def assign_split(key: str, seed: int, val: float = 0.15, test: float = 0.15) -> str:
    """Deterministic split for records that do not carry one."""
    h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test else "val" if h < test + val else "train"


def load_features_file(path: str | os.PathLike) -> torch.Tensor:
    """[N, D] float32 from a cached feature file (.safetensors / .pt / .npy / .npz)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))["features"].float()
    if path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return (obj["features"] if isinstance(obj, dict) else obj).float()
    if path.suffix in (".npy", ".npz"):
        obj = np.load(path)
        return torch.from_numpy(np.asarray(obj["features"] if path.suffix == ".npz" else obj)).float()
    raise ValueError(f"unknown feature file type: {path}")


def load_examples(
    corpus: str | os.PathLike,
    features_dir: str | os.PathLike,
    seed: int = 0,
    text_fn: Any = diagnostic_text,
    stream: bool = False,
    parts: bool = False,
    header: bool = True,
    own_text: bool = False,
) -> tuple[list[Example], dict[str, Any]]:
    """Pair every manifest record with its cached features (``extract_corpus_features`` output).

    Returns (examples, encoder spec). Records without features (or with none of tissue) are skipped.
    ``stream``: the examples hold the feature files' paths, not their tensors (patch counts and widths come
    from the index and the files' headers); the training loader reads them.
    ``parts``: one example per case part (records sharing a ``part_id``): its slides' patches as one bag and
    the part's report, labelled with the part's diagnosis, malignancy and grade (a slide of a part can be
    normal while its report names the carcinoma on another slide: as a slide-level pair that is a wrong
    label). Needs ``stream``.
    ``header=False``: the text leaves out what no slide shows (corpus-v2 records: the part header with its
    site and side, and which slides carry the finding; `templates_v2.report_body`).
    ``own_text`` (slide bags): a slide that does not carry its part's diagnosis (a benign slide of a carcinoma
    part) is paired with the report of a training part whose diagnosis is that slide's own
    (`with_own_slide_texts`), not with its part's report, which names a finding the slide does not show.
    """
    from inference.features import load_feature_index

    if parts and not stream:
        raise ValueError("part bags are streamed from their slides' feature files (stream=True)")
    features_dir = Path(features_dir)
    root = features_dir.parent if features_dir.is_file() else features_dir
    rows = {row["slide"]: row for row in load_feature_index(root)}
    encoder = json.loads((root / "encoder.json").read_text()) if (root / "encoder.json").is_file() else {}
    examples = []
    by_part: dict[str, list[tuple[dict[str, Any], str, int, int | None]]] = {}
    for rec in _manifest(corpus):
        row = rows.get(rec.get("slide"))
        if row is None:
            continue
        path = row["features_path"]
        rec = dict(rec)
        rec.setdefault("split", assign_split(str(rec["slide"]), seed))
        text = text_fn(report_text(rec, header))
        if stream:
            n, dim = _feature_shape(path)
            if n == 0:
                continue
            if parts:
                by_part.setdefault(str(rec.get("part_id", rec["slide"])), []).append((rec, path, n, dim))
                continue
            examples.append(Example(None, text, rec, path=path, n_patches=n, feature_dim=dim))
            continue
        feats = load_features_file(path)
        if len(feats) == 0:  # no tissue patch: nothing to learn from or evaluate on
            continue
        examples.append(Example(feats, text, rec))
    for members in by_part.values():
        members.sort(key=lambda m: m[0].get("slide_index", 0))
        record = part_record([m[0] for m in members])
        first = members[0][0]
        examples.append(Example(None, text_fn(report_text(first, header)), record,
                                n_patches=sum(m[2] for m in members), feature_dim=members[0][3],
                                paths=tuple(m[1] for m in members), slide_patches=tuple(m[2] for m in members)))
    if own_text and not parts:
        examples = with_own_slide_texts(examples, text_fn, header)
    if not examples:
        raise ValueError(f"no manifest record of {corpus} has features in {features_dir}")
    spec = dict(encoder.get("spec", {}))
    if encoder.get("tiling"):  # how the features were tiled travels into the bundle (save_bundle)
        spec["tiling"] = encoder["tiling"]
    return examples, spec


def with_own_slide_texts(examples: list[Example], text_fn: Any, header: bool) -> list[Example]:
    """Slide bags whose text is true of the slide: a slide whose own diagnosis differs from its part's gets
    the report of a train/val part of the same organ diagnosed with the slide's own diagnosis (chosen by a
    stable hash of the slide); where no such part exists the slide is left out. Records keep the slide's
    own labels (grade none) and name the report's part (``text_from``)."""
    donors: dict[str, list[dict[str, Any]]] = {}
    for e in examples:
        rec = e.record
        if rec.get("split") in ("train", "val") and rec.get("part_diagnosis") == rec.get("diagnosis"):
            donors.setdefault(str(rec["diagnosis"]), []).append(rec)
    for pool in donors.values():
        pool.sort(key=lambda r: str(r.get("part_id")))
    out = []
    for e in examples:
        rec = e.record
        if "part_diagnosis" not in rec or rec["part_diagnosis"] == rec.get("diagnosis"):
            out.append(e)
            continue
        pool = donors.get(str(rec.get("diagnosis")), [])
        if not pool:
            continue
        h = int(hashlib.sha256(str(rec["slide"]).encode()).hexdigest()[:8], 16)
        donor = pool[h % len(pool)]
        text = text_fn(report_text(donor, header))
        out.append(Example(e.features, text, {**rec, "grade": None, "text_from": donor.get("part_id")},
                           path=e.path, n_patches=e.n_patches, feature_dim=e.feature_dim))
    return out


def report_text(record: dict[str, Any], header: bool = False) -> str:
    """A record's report; without ``header``, without what no slide shows (corpus v2:
    `templates_v2.report_body`; other corpora's reports as they are)."""
    if not header and record.get("template") and record.get("part") and record.get("site") and record.get("organ"):
        from inference.synthetic.templates_v2 import report_body

        return report_body(record["report"], record)
    return record["report"]


def part_record(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One record for a part's bag: the first slide's, with the part's labels (diagnosis, malignancy and grade
    are the part's worst finding: what its report states) and the list of its slides."""
    first = dict(records[0])
    diagnosis = first.get("part_diagnosis", first.get("diagnosis"))
    grade = next((r.get("grade") for r in records if r.get("grade") and r.get("diagnosis") == diagnosis), None)
    first.update(diagnosis=diagnosis, malignant=first.get("part_malignant", first.get("malignant")), grade=grade,
                 slides=[r["slide"] for r in records], slide_diagnoses=[r.get("diagnosis") for r in records],
                 n_slides_in_part=len(records))
    labels = dict(first.get("labels") or {})
    if labels:
        labels.update(diagnosis=diagnosis, grade=grade)
        first["labels"] = labels
    return first


def _feature_shape(path: str) -> tuple[int, int | None]:
    """(patches, width) of a feature file without reading its tensor (safetensors header), else by loading."""
    if str(path).endswith(".safetensors"):
        from inference.features import read_meta

        try:
            meta = read_meta(path)
            return meta.n_patches, meta.dim
        except ValueError:
            pass
    x = load_features_file(path)
    return int(x.shape[0]), int(x.shape[1]) if x.dim() > 1 else None


def _manifest(corpus: str | os.PathLike) -> list[dict[str, Any]]:
    from inference.synthetic.corpus import load_manifest

    return load_manifest(corpus)


FIRST_SENTENCE = re.compile(r"^.*?(?:\w{2,}|\))[.;](?=\s|$)", re.S)  # "B. Colon, biopsy: Tubular adenoma." (not "B.")


def first_sentence(text: str) -> str:
    """The diagnosis line of a diagnostic text: up to the first full stop after a word of 2+ characters."""
    m = FIRST_SENTENCE.match(text)
    return m.group(0).strip() if m else text


def contrastive_texts(
    examples: Sequence[Example], view_prob: float, generator: torch.Generator | None = None
) -> list[str]:
    """The texts ITC and ITM see: each example's whole text, or with probability ``view_prob`` its first
    sentence (the diagnosis line). A short view teaches the text side that a one-line statement of the
    diagnosis describes the same slide as the full report, which is what zero-shot prompts and free-text
    searches are; ITG always reads the whole text."""
    if view_prob <= 0:
        return [e.text for e in examples]
    draws = torch.rand(len(examples), generator=generator).tolist()
    return [first_sentence(e.text) if d < view_prob else e.text for e, d in zip(examples, draws, strict=True)]


def group_ids(examples: Sequence[Example], group_by: str, texts: Sequence[str] | None = None) -> torch.Tensor:
    """Ids that mark interchangeable texts in a batch: identical texts, or a shared label (e.g. diagnosis)."""
    if group_by == "text":
        keys = [t.lower() for t in (texts if texts is not None else [e.text for e in examples])]
    else:
        keys = [
            str(e.record.get(group_by, e.record.get("labels", {}).get(group_by, e.text))) for e in examples
        ]
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(k, len(index)) for k in keys])


def collate(
    examples: Sequence[Example],
    tokenizer: Any,
    max_text_len: int,
    max_patches: int | None = None,
    generator: torch.Generator | None = None,
    texts: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad features to the longest slide (mask marks real patches); subsample to max_patches if asked.

    ``texts``: what ITC/ITM read when it differs from the examples' own texts (``contrastive_texts``); the
    examples' texts then go to ITG as ``itg_input_ids`` / ``itg_attention_mask``.
    """
    feats = []
    for e in examples:
        x = e.features
        if max_patches and x.shape[0] > max_patches:  # random subset: augmentation + bounded cost
            x = x[torch.randperm(x.shape[0], generator=generator)[:max_patches]]
        feats.append(x)
    n = max(x.shape[0] for x in feats)
    patches = torch.zeros(len(feats), n, feats[0].shape[1])
    mask = torch.zeros(len(feats), n, dtype=torch.bool)
    for i, x in enumerate(feats):
        patches[i, : x.shape[0]], mask[i, : x.shape[0]] = x, True
    full = [e.text for e in examples]
    texts = list(texts) if texts is not None else full

    def tokens(batch: list[str]) -> Any:
        return tokenizer(batch, padding=True, truncation=True, max_length=max_text_len, return_tensors="pt")

    enc = tokens(texts)
    out = {
        "patches": patches,
        "patch_mask": mask,
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
    }
    if texts != full:
        dec = tokens(full)
        out["itg_input_ids"], out["itg_attention_mask"] = dec["input_ids"], dec["attention_mask"]
    return out


# ----------------------------------------------------------------------------------------------------------
# Stage 1


@dataclass
class TrainConfig:
    variant: str = "G"  # R: ITC only; G: ITC + ITM + ITG
    num_hidden_layers: int = 6  # text layers taken from the start of the BERT directory
    num_query_tokens: int = 32
    cross_attention_freq: int = 2
    embed_dim: int = 256
    max_text_len: int = 128
    text_dir: str | None = None  # BERT-family directory (default: bundled all-MiniLM-L6-v2)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-4  # pretrained text layers
    new_lr: float = 5e-4  # fresh parts: queries, cross-attention, projections, heads
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    max_patches: int | None = 256  # per slide per step during training (all patches at inference)
    group_by: str = "text"  # which examples count as positives for each other: "text" or a label name
    dropout: float = 0.1
    # Frozen word embeddings (also the tied LM decoder): a third less work per ITG step, and the bundle can
    # store the table by reference to the text model instead of copying it.
    freeze_word_embeddings: bool = False
    # "corpus": the decoder's softmax covers the word pieces of the training reports only (a shortlist; a few %
    # of the vocabulary for a report corpus; projecting onto the full table is a large share of a CPU step);
    # "full": all of it.
    output_vocab: str = "corpus"
    # Probability that ITC/ITM read only a report's first sentence (its diagnosis line) instead of the whole
    # diagnostic text, per example and step (contrastive_texts). 0 = the whole text always, as in BLIP-2.
    text_view_prob: float = 0.0
    # Reading a whole slide (QFormerConfig v2): a gated-attention patch scorer whose log-attention biases
    # every cross-attention (0 = none: the v1 model), cross-attention only over its top-k patches (0 = all),
    # and the weight of the scorer's own ITC term on its attention-pooled bag embedding.
    scorer_hidden: int = 0
    scorer_top_k: int = 0
    scorer_prior: float = 1.0  # initial strength of the scores' bias on the cross-attention (learned)
    bag_loss_weight: float = 1.0  # used only with a scorer
    # With a scorer and max_patches: each slide's step subset takes this share from the top of the model's own
    # patch attention (scored over the whole bag, no gradient) and the rest at random, so a small lesion stays
    # reachable in a subset once the scorer has found it. 0: uniform random subsets.
    attention_sampling: float = 0.5
    # The label term (QFormerConfig.label_loss_weight): each bag against one diagnosis line of every class
    # ("diagnosis" or "diagnosis+grade"); 0 = off (text losses only, as BLIP-2).
    label_loss_weight: float = 0.0
    label_by: str = "diagnosis+grade"
    # Part bags: each step reads each of a part's slides with this probability, and always one that carries the
    # part's diagnosis (data.part_slide_subset); 1 = the whole part every time.
    part_slide_keep: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    threads: int | None = None  # torch CPU threads
    num_workers: int = 2  # DataLoader worker processes reading feature files (0: in the training process)
    pin_memory: bool = True  # pinned host batches on CUDA (copied with non_blocking=True)


FRESH = ("query_tokens", "vision_norm", "cross_attn", "vision_proj", "text_proj", "itm_head", "temp", "scorer")


def loss_keys(model: QFormer) -> list[str]:
    """The losses a training step reports: total, ITC, the variant's ITM / ITG, and the scorer's bag ITC."""
    keys = ["loss", "itc", *(k for k in ("itm", "itg") if k in model.config.losses)]
    keys += ["bag"] if model.scorer is not None and model.config.bag_loss_weight > 0 else []
    return keys + ["label"] if model.config.label_loss_weight > 0 else keys


def resolve_device(device: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, feature_dim: int) -> tuple[QFormer, Any]:
    from inference.qformer import QFormerConfig

    losses = QFormerConfig.variant(cfg.variant).losses
    return QFormer.from_text_model(
        cfg.text_dir,
        num_hidden_layers=cfg.num_hidden_layers,
        vision_width=feature_dim,
        num_query_tokens=cfg.num_query_tokens,
        cross_attention_freq=cfg.cross_attention_freq,
        embed_dim=cfg.embed_dim,
        max_text_len=cfg.max_text_len,
        losses=losses,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        scorer_hidden=cfg.scorer_hidden,
        scorer_top_k=cfg.scorer_top_k,
        scorer_prior=cfg.scorer_prior,
        bag_loss_weight=cfg.bag_loss_weight if cfg.scorer_hidden else 0.0,
        label_loss_weight=cfg.label_loss_weight,
    )


def _optimizer(model: QFormer, cfg: TrainConfig) -> torch.optim.Optimizer:
    fresh, pretrained, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or name == "query_tokens":
            no_decay.append((name, p))
        elif any(k in name for k in FRESH):
            fresh.append(p)
        else:
            pretrained.append(p)
    groups = [
        {"params": pretrained, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": fresh, "lr": cfg.new_lr, "weight_decay": cfg.weight_decay},
        {
            "params": [p for n, p in no_decay if not any(k in n for k in FRESH)],
            "lr": cfg.lr,
            "weight_decay": 0.0,
        },
        {
            "params": [p for n, p in no_decay if any(k in n for k in FRESH)],
            "lr": cfg.new_lr,
            "weight_decay": 0.0,
        },
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98))


def _set_lr(opt: torch.optim.Optimizer, step: int, total: int, warmup: int) -> None:
    """Linear warm-up then cosine decay to 10%."""
    if step < warmup:
        scale = (step + 1) / warmup
    else:
        scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * scale


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validation_loss(
    model: QFormer,
    examples: Sequence[Example],
    tokenizer: Any,
    cfg: TrainConfig,
    device: torch.device,
    ctx: DistContext | None = None,
    class_texts: ClassTexts | None = None,
) -> dict[str, float]:
    """Mean losses over the validation examples (fixed order, all patches, no dropout; the label term
    against the first line of each class).

    Distributed: the batches are shared out over the ranks and the sums added up (every rank gets the
    figures)."""
    if not examples:
        return {}
    ctx = ctx or DistContext(device=device)
    model.eval()
    torch.manual_seed(cfg.seed)  # ITM negatives are sampled: fix them for comparable figures
    dataset = Stage1Dataset(examples, tokenizer, cfg.max_text_len, group_by=cfg.group_by, seed=cfg.seed,
                            labels=class_texts.labels(examples) if class_texts else None)
    classes = _to_device(class_texts.batch(None), device) if class_texts else {}
    batches = [list(range(i, min(i + cfg.batch_size, len(examples)))) for i in range(0, len(examples), cfg.batch_size)]
    batches = [b for b in batches if len(b) >= 2][ctx.rank:: ctx.world_size]
    keys = loss_keys(model)
    totals = torch.zeros(len(keys) + 1, dtype=torch.float64)
    if batches:
        loader = make_loader(dataset, batches, Stage1Collator(tokenizer.pad_token_id or 0), 0, device, cfg.pin_memory)
        for batch in loader:
            batch = _to_device(batch, device) | classes
            with _autocast(device, cfg.amp):
                out = model(**batch)
            totals += torch.tensor([float(out[k]) for k in keys] + [1.0], dtype=torch.float64)
    totals = ctx.all_reduce_sum(totals).cpu()
    model.train()
    n = max(float(totals[-1]), 1.0)
    return {k: float(v) / n for k, v in zip(keys, totals[:-1], strict=True)} if totals[-1] else {}


def train_stage1(
    examples: Sequence[Example],
    cfg: TrainConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    ctx: DistContext | None = None,
) -> tuple[QFormer, Any, dict[str, Any]]:
    """Train the Q-Former on the 'train' examples; keep the weights with the best validation loss.

    ``stop_after``: end this run after that many epochs in total (the schedule still spans cfg.epochs), so
    a long training can be done in several sittings with ``resume``.

    ``ctx`` (``inference.distributed.init_distributed()``): data-parallel training, one process per device;
    every rank passes the same examples and config and gets the same model back; only rank 0 writes the
    checkpoint. ``cfg.batch_size`` is the global batch.

    Returns (model in eval mode, tokenizer, history: per-epoch train/val losses and a data summary).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    ctx = ctx or DistContext(device=resolve_device(cfg.device))
    device = ctx.device
    train = [e for e in examples if e.split == "train"]
    val = [e for e in examples if e.split == "val"]
    if len(train) < 2:
        raise ValueError("need at least two training examples")
    model, tokenizer = build_model(cfg, train[0].dim)
    if cfg.freeze_word_embeddings:
        model.word_embeddings.weight.requires_grad_(False)
    if cfg.output_vocab == "corpus" and "itg" in model.config.losses:
        model.set_output_vocab(corpus_vocabulary([e.text for e in train], tokenizer, cfg.max_text_len))
    elif cfg.output_vocab not in ("corpus", "full"):
        raise ValueError(f"output_vocab must be 'corpus' or 'full', not {cfg.output_vocab!r}")
    shift, scale = feature_statistics(train, ctx)
    model.feature_shift.copy_(shift)
    model.feature_scale.copy_(scale.clamp_min(1e-6))
    model.to(device).train()
    opt = _optimizer(model, cfg)
    sampler = GlobalBatchSampler(len(train), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    steps_per_epoch = len(sampler)
    total = math.ceil(len(train) / cfg.batch_size) * cfg.epochs
    history: dict[str, Any] = {"epochs": [], "config": asdict(cfg)}
    start_epoch, step, best = 0, 0, (math.inf, None)
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if resume and ckpt and ckpt.exists():
        state = torch.load(
            ckpt, map_location="cpu", weights_only=False
        )  # our own file: optimizer + RNG state
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        best = (state["best_loss"], state["best_model"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
    net: Any = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.variant != "G",  # R trains no ITM / ITG head
        )
    gather = ctx.gather()
    by_attention = bool(cfg.max_patches and model.scorer is not None and cfg.attention_sampling > 0)
    class_texts = (ClassTexts(train, cfg.label_by, tokenizer, cfg.max_text_len, cfg.seed, tokenizer.pad_token_id or 0)
                   if cfg.label_loss_weight > 0 else None)
    if class_texts is not None:
        history["classes"] = class_texts.classes
    dataset = Stage1Dataset(train, tokenizer, cfg.max_text_len, None if by_attention else cfg.max_patches,
                            cfg.text_view_prob, cfg.group_by, cfg.seed,
                            labels=class_texts.labels(train) if class_texts else None,
                            part_slide_keep=cfg.part_slide_keep)
    loader = make_loader(dataset, sampler, Stage1Collator(tokenizer.pad_token_id or 0), cfg.num_workers, device,
                         cfg.pin_memory)
    keys = loss_keys(model)
    for epoch in range(start_epoch, min(cfg.epochs, stop_after or cfg.epochs)):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        sums = torch.zeros(len(keys), device=device)
        bar = tqdm(
            loader,
            total=steps_per_epoch,
            desc=f"stage 1 epoch {epoch + 1}/{cfg.epochs}",
            disable=not (progress and ctx.is_main),
            leave=False,
        )
        for i, batch in enumerate(bar):
            batch = _to_device(batch, device)
            if by_attention:  # whole bags were read: keep the top of the attention plus a random rest
                batch = attention_subset(model, batch, int(cfg.max_patches), cfg.attention_sampling,
                                         torch.Generator(device=device).manual_seed(mix_seed(cfg.seed, step, 1)))
            if class_texts is not None:
                batch |= _to_device(class_texts.batch(step), device)
            _set_lr(opt, step, total, cfg.warmup_steps)
            # ITM's hard negatives: the same draws on every rank (and in one process) for this step.
            negatives = torch.Generator(device=device).manual_seed(mix_seed(cfg.seed, step))
            with _autocast(device, cfg.amp):
                out = net(**batch, gather=gather, generator=negatives)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            sums += torch.stack([out[k].detach().float() for k in keys])
            if ctx.is_main and progress and (i % 10 == 0 or i + 1 == steps_per_epoch):
                bar.set_postfix({k: f"{float(v) / (i + 1):.3f}" for k, v in zip(keys, sums, strict=True)})
        # Each rank's losses are its share of the global loss times the world size: the mean is the global loss.
        sums = ctx.all_reduce_sum(sums) / ctx.world_size
        record = {
            "epoch": epoch + 1,
            "train": {k: float(v) / max(steps_per_epoch, 1) for k, v in zip(keys, sums, strict=True)},
            "val": validation_loss(model, val, tokenizer, cfg, device, ctx, class_texts),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        history["epochs"].append(record)
        if progress and ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}: train {_fmt(record['train'])} | val {_fmt(record['val'])}")
        score = record["val"].get("loss", record["train"].get("loss", math.inf))
        if score <= best[0]:
            best = (score, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        if ckpt and ctx.is_main:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "history": history,
                    "best_loss": best[0],
                    "best_model": best[1],
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "numpy": np.random.get_state(),
                        "python": random.getstate(),
                    },
                },
                tmp,
            )
            tmp.replace(ckpt)
        ctx.barrier()  # nobody reads a half-written checkpoint on resume
    if best[1] is not None:
        model.load_state_dict(best[1])
    history["best_val_loss"] = best[0]
    history["data"] = data_summary(examples)
    return model.eval(), tokenizer, history


@torch.no_grad()
def attention_subset(model: QFormer, batch: dict[str, torch.Tensor], k: int, share: float,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """At most ``k`` patches per slide: the ``round(share * k)`` best by the model's patch scorer (over every
    patch of the bag) and the rest drawn uniformly from the others. Returns the batch with ``patches`` /
    ``patch_mask`` cut to [B, k] (padding where a slide has fewer patches)."""
    patches, mask = batch["patches"], batch["patch_mask"].bool()
    if patches.shape[1] <= k:
        return batch
    log_a = model.patch_log_attention(patches, mask).float()  # the scorer has no dropout: train mode is fine
    n_top = max(0, min(k, round(share * k)))
    top = log_a.masked_fill(~mask, float("-inf")).topk(n_top, dim=1).indices  # [B, n_top]
    noise = torch.rand(mask.shape, generator=generator, device=mask.device).masked_fill(~mask, -1.0)
    noise.scatter_(1, top, -2.0)  # already taken
    rest = noise.topk(k - n_top, dim=1).indices  # [B, k - n_top]
    index = torch.cat([top, rest], 1)
    keep = torch.cat([mask.gather(1, top), noise.gather(1, rest) >= 0], 1)
    out = dict(batch)
    out["patches"] = patches.gather(1, index[..., None].expand(-1, -1, patches.shape[-1]))
    out["patch_mask"] = keep
    return out


def corpus_vocabulary(texts: Sequence[str], tokenizer: Any, max_text_len: int) -> list[int]:
    """The token ids the decoder is trained to produce on these texts (special tokens other than [SEP] out)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_text_len)["input_ids"]
    special = set(tokenizer.all_special_ids) - {tokenizer.sep_token_id}
    return sorted({i for row in ids for i in row} - special)


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in d.items()) or "-"


def data_summary(examples: Sequence[Example]) -> dict[str, Any]:
    """What the bundle was trained on (recorded in bundle.json)."""
    splits: dict[str, int] = {}
    diagnoses: dict[str, int] = {}
    for e in examples:  # counted by slide (a part's bag counts each of its slides, by the slide's own diagnosis)
        slide_dx = e.record.get("slide_diagnoses") or [e.record.get("diagnosis")]
        splits[e.split] = splits.get(e.split, 0) + len(slide_dx)
        for dx in slide_dx:
            if e.split == "train" and dx:
                diagnoses[dx] = diagnoses.get(dx, 0) + 1
    # per slide (a part's bag counts each of its slides): what the app compares a new slide with
    patches = [int(n) for e in examples for n in (e.slide_patches or (e.n_patches or 0,))]
    bags = [int(e.n_patches or 0) for e in examples]
    return {
        "slides": len(patches),
        "bags": len(examples),
        "bag": "part" if any(e.paths for e in examples) else "slide",
        "splits": splits,
        "train_diagnoses": diagnoses,
        "patches_per_slide": {"min": min(patches), "mean": float(np.mean(patches)), "max": max(patches)},
        "patches_per_bag": {"min": min(bags), "mean": float(np.mean(bags)), "max": max(bags)},
        "feature_dim": int(examples[0].dim),
    }


# ----------------------------------------------------------------------------------------------------------
# Stage 2


@dataclass
class BridgeTrainConfig:
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    lora: dict[str, Any] | None = None
    instruction: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True


def train_stage2(
    model: QFormer,
    examples: Sequence[Example],
    lm_dir: str | os.PathLike,
    cfg: BridgeTrainConfig,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train the soft-prompt projection (and optional LoRA) with the Q-Former frozen."""
    from inference.bridge import SoftPromptBridge

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = model.to(device).eval()
    kwargs = {"instruction": cfg.instruction} if cfg.instruction is not None else {}
    bridge = SoftPromptBridge.from_lm_dir(
        lm_dir, model.config.hidden_size, lora=cfg.lora, device=str(device), **kwargs
    )
    train = [e for e in examples if e.split == "train"]
    with torch.no_grad():  # the Q-Former is frozen: its query outputs are computed once
        queries = [model.encode_patches(e.load_features()[None].to(device))[0][0].cpu() for e in train]
    opt = torch.optim.AdamW(bridge.trainable_parameters(), lr=cfg.lr)
    history: dict[str, Any] = {"epochs": [], "config": asdict(cfg), "lm_dir": str(lm_dir)}
    shuffle = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=shuffle).tolist()
        total, n = 0.0, 0
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"stage 2 epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
        )
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            q = torch.stack([queries[i] for i in idx]).to(device)
            with _autocast(device, cfg.amp):
                loss = bridge(q, [train[i].text for i in idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
            bar.set_postfix(loss=f"{total / n:.3f}")
        history["epochs"].append({"epoch": epoch + 1, "train_loss": total / max(n, 1)})
    return bridge, history


# ----------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description="Train PathAlign (stage 1: Q-Former; stage 2: LM bridge).")
    ap.add_argument("--corpus", required=True, help="corpus directory or manifest.jsonl")
    ap.add_argument("--features", required=True, help="cached patch features (extract_corpus_features)")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1)
    ap.add_argument("--out", help="stage 1: bundle directory to write")
    ap.add_argument("--bundle", help="stage 2: the stage-1 bundle to extend with a bridge")
    ap.add_argument("--lm-dir", help="stage 2: local causal LM directory")
    ap.add_argument("--lora", action="store_true", help="stage 2: also train LoRA adapters")
    ap.add_argument("--name", default="pathalign")
    ap.add_argument("--version", default="0.1.0")
    ap.add_argument("--checkpoint-dir", help="default: <out>/checkpoints")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    defaults = TrainConfig()
    for f in TrainConfig.__dataclass_fields__.values():
        value = getattr(defaults, f.name)
        kind = {bool: _bool, int: int, float: float}.get(type(value), str)
        if f.name in ("max_patches", "threads"):  # None by default, ints when given
            kind = int
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=value)
    ap.add_argument("--in-memory", action="store_true", help="stage 1: load every feature file up front "
                    "(default: the DataLoader's workers stream them from disk)")
    ap.add_argument("--parts", action="store_true", help="stage 1: one bag per case part (its slides' patches) "
                    "with the part's report and labels (load_examples)")
    ap.add_argument("--no-header", action="store_true", help="train on the reports without the part header and "
                    "which slides carry the finding (corpus v2; templates_v2.report_body)")
    args = ap.parse_args(argv)
    cfg = TrainConfig(**{f: getattr(args, f) for f in TrainConfig.__dataclass_fields__})
    from inference.distributed import init_distributed, launched_by_torchrun, shutdown

    if launched_by_torchrun() and args.stage != 1:
        ap.error("stage 2 runs in one process (its LM bridge is small); start it without torchrun")
    ctx = init_distributed(cfg.device)  # a one-process context unless started by torchrun
    examples, encoder_spec = load_examples(args.corpus, args.features, seed=cfg.seed,
                                           stream=args.stage == 1 and not args.in_memory,
                                           parts=args.parts and args.stage == 1, header=not args.no_header)
    if args.stage == 1:
        if not args.out:
            ap.error("--out is required for stage 1")
        from inference.bundle import save_bundle

        if ctx.enabled and ctx.is_main:
            print(f"data-parallel: {ctx.world_size} processes ({ctx.backend}), global batch {cfg.batch_size}")
        try:
            model, tokenizer, history = train_stage1(
                examples,
                cfg,
                args.checkpoint_dir or Path(args.out) / "checkpoints",
                resume=args.resume,
                progress=not args.no_progress,
                ctx=ctx,
            )
        finally:
            shutdown(ctx)
        if not ctx.is_main:
            return 0
        save_bundle(
            args.out,
            model.cpu(),
            tokenizer,
            encoder_spec,
            name=args.name,
            version=args.version,
            training={
                **history["data"],
                "best_val_loss": history["best_val_loss"],
                "config": history["config"],
                "epochs": history["epochs"],
            },
            reference_text_dir=(cfg.text_dir or default_text_model_dir())
            if cfg.freeze_word_embeddings
            else None,
        )
        print(f"wrote bundle {args.out}")
        return 0
    if not (args.bundle and args.lm_dir):
        ap.error("--bundle and --lm-dir are required for stage 2")
    from inference.bundle import BRIDGE_DIR, CONFIG_FILE, load_bundle

    bundle = load_bundle(args.bundle)
    bcfg = BridgeTrainConfig(
        seed=cfg.seed, device=cfg.device, amp=cfg.amp, lora={"r": 8, "lora_alpha": 16} if args.lora else None
    )
    bridge, history = train_stage2(bundle.model, examples, args.lm_dir, bcfg, progress=not args.no_progress)
    bridge.save(Path(args.bundle) / BRIDGE_DIR)
    config = json.loads((Path(args.bundle) / CONFIG_FILE).read_text())
    config["has_bridge"] = True
    config.setdefault("training", {})["stage2"] = history
    (Path(args.bundle) / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    print(f"added a stage-2 bridge to {args.bundle}")
    return 0


def _bool(s: str) -> bool:
    return s.lower() in ("1", "true", "yes", "on")


if __name__ == "__main__":
    raise SystemExit(main())
