"""Stage-1 training data: a `torch.utils.data` dataset over per-slide feature files, batches, statistics.

- `Stage1Dataset(examples, tokenizer, ...)`: one item per example; features come from memory or are read
  from the example's feature file in the loader's worker processes (streamed: nothing of the corpus stays
  in the trainer's memory). Every text and its diagnosis-line view are tokenised once, when the dataset is
  made (no tokenisation in the training loop). Items are addressed by ``(epoch, index)``: the patch subset
  and the text view an item gets are drawn from a generator seeded by (seed, epoch, index), so they do
  not depend on which worker, which rank or which batch reads it (one process and eight give the same
  global batch).
- `GlobalBatchSampler`: the epoch's shuffled global batches (seeded by seed and epoch, the same on every
  rank), each split into contiguous per-rank parts; a batch that cannot give every rank an example (or
  fewer than 2 in all) is skipped.
- `Stage1Collator`: pads features (``patch_mask``) and token ids; ``group_ids`` are stable 63-bit hashes of
  the grouping key (the text, or a label), so they mean the same on every rank.
- `make_loader(...)`: the DataLoader (workers, pinned memory on CUDA, persistent workers, prefetch).
- `feature_statistics(examples, rank, world)`: per-dimension mean and std of the training features in one
  streaming pass (float64 sums; sharded over ranks and summed when distributed).
- `ClassTexts`: the label term's classes (e.g. diagnosis and grade) and, per class, the training reports'
  diagnosis lines, tokenised once; each step shows one line of every class, drawn by (seed, step).
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from inference.distributed import DistContext, rank_slice

__all__ = ["ClassTexts", "GlobalBatchSampler", "Stage1Collator", "Stage1Dataset", "feature_statistics",
           "make_loader", "mix_seed", "stable_id"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and runs, unlike hash())."""
    h = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


def stable_id(key: str) -> int:
    """A 63-bit id for a grouping key: equal keys, equal ids, in every process."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF


def _group_key(example: Any, group_by: str, text: str) -> str:
    if group_by == "text":
        return text.lower()
    rec = example.record
    return str(rec.get(group_by, rec.get("labels", {}).get(group_by, example.text)))


class Stage1Dataset(Dataset):
    """Items ``(epoch, index)`` -> dict(features [n, D], input_ids, itg_input_ids, group) (see module doc).

    ``epoch`` None (or a plain int index): evaluation items, all patches and the whole text."""

    def __init__(self, examples: Sequence[Any], tokenizer: Any, max_text_len: int, max_patches: int | None = None,
                 text_view_prob: float = 0.0, group_by: str = "text", seed: int = 0,
                 labels: Sequence[int] | None = None, part_slide_keep: float = 1.0):
        from inference.train import first_sentence

        self.part_slide_keep = float(part_slide_keep)
        self.examples = list(examples)
        self.labels = list(labels) if labels is not None else None  # class index per example (-1: none)
        self.max_patches = max_patches
        self.text_view_prob = float(text_view_prob)
        self.group_by = group_by
        self.seed = int(seed)
        texts = [e.text for e in self.examples]
        views = [first_sentence(t) for t in texts] if self.text_view_prob > 0 else texts

        def ids(batch: list[str]) -> list[list[int]]:
            return tokenizer(batch, truncation=True, max_length=max_text_len)["input_ids"] if batch else []

        self.full_ids = ids(texts)
        self.view_ids = ids(views) if self.text_view_prob > 0 else self.full_ids
        self.full_groups = [stable_id(_group_key(e, group_by, t)) for e, t in zip(self.examples, texts, strict=True)]
        self.view_groups = ([stable_id(_group_key(e, group_by, v)) for e, v in zip(self.examples, views, strict=True)]
                            if self.text_view_prob > 0 else self.full_groups)
        self.view_differs = [v != t for v, t in zip(views, texts, strict=True)]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: int | tuple[int | None, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (None, key)
        e = self.examples[i]
        use_view = False
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch if epoch is not None else -1, i))
        if epoch is not None and self.part_slide_keep < 1.0 and len(getattr(e, "paths", ())) > 1:
            x = load_part_slides(e, part_slide_subset(e, self.part_slide_keep, gen))
        else:
            x = e.load_features()
        if epoch is not None:
            if self.max_patches and x.shape[0] > self.max_patches:  # random subset: augmentation + bounded cost
                x = x[torch.randperm(x.shape[0], generator=gen)[: self.max_patches]]
            if self.text_view_prob > 0:
                use_view = bool(torch.rand(1, generator=gen).item() < self.text_view_prob) and self.view_differs[i]
        return {
            "features": x.float(),
            "input_ids": self.view_ids[i] if use_view else self.full_ids[i],
            "itg_input_ids": self.full_ids[i] if use_view else None,
            "group": self.view_groups[i] if use_view else self.full_groups[i],
            "label": self.labels[i] if self.labels is not None else None,
        }


def part_slide_subset(example: Any, keep: float, gen: torch.Generator) -> list[int]:
    """Which of a part's slides a training item reads: each with probability ``keep``, and always one (drawn)
    of the slides that carry the part's diagnosis, so the part's report stays true of the bag (every slide
    of a part without a lesion carries it). A part of n slides gives up to 2^n - 1 bags: more distinct
    training bags from a small archive, and the focus among more or fewer benign slides."""
    rec = example.record
    n = len(example.paths)
    per_slide = rec.get("slide_diagnoses") or [rec.get("diagnosis")] * n
    carriers = [j for j, dx in enumerate(per_slide) if dx == rec.get("diagnosis")] or list(range(n))
    must = carriers[int(torch.randint(len(carriers), (1,), generator=gen))]
    draws = torch.rand(n, generator=gen).tolist()
    return [j for j in range(n) if j == must or draws[j] < keep]


def load_part_slides(example: Any, slides: Sequence[int]) -> torch.Tensor:
    """[N, D] float32: the chosen slides' features of a part, in slide order."""
    from inference.train import load_features_file

    return torch.cat([load_features_file(example.paths[j]) for j in sorted(slides)])


class Stage1Collator:
    """Items -> the Q-Former's batch: patches [b, n, D] + patch_mask, input_ids + attention_mask (padded),
    group_ids, and itg_input_ids / itg_attention_mask when any item shows ITC/ITM a shorter view."""

    def __init__(self, pad_token_id: int = 0):
        self.pad = int(pad_token_id)

    def _pad_ids(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.pad, dtype=torch.long)
        att = torch.zeros(len(rows), t, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            att[j, : len(r)] = 1
        return ids, att

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        feats = [it["features"] for it in items]
        n = max(x.shape[0] for x in feats)
        patches = torch.zeros(len(feats), n, feats[0].shape[1])
        mask = torch.zeros(len(feats), n, dtype=torch.bool)
        for j, x in enumerate(feats):
            patches[j, : x.shape[0]], mask[j, : x.shape[0]] = x, True
        ids, att = self._pad_ids([it["input_ids"] for it in items])
        out = {"patches": patches, "patch_mask": mask, "input_ids": ids, "attention_mask": att,
               "group_ids": torch.tensor([it["group"] for it in items], dtype=torch.long)}
        if any(it["itg_input_ids"] is not None for it in items):
            full = [it["itg_input_ids"] if it["itg_input_ids"] is not None else it["input_ids"] for it in items]
            out["itg_input_ids"], out["itg_attention_mask"] = self._pad_ids(full)
        if any(it.get("label") is not None for it in items):
            out["class_labels"] = torch.tensor([-1 if it.get("label") is None else it["label"] for it in items],
                                               dtype=torch.long)
        return out


def class_key(example: Any, label_by: str) -> str | None:
    """An example's class for the label term: ``"diagnosis"``, or ``"diagnosis+grade"`` (a graded diagnosis's
    grades are classes of their own, so the queries must tell them apart); None when it has no diagnosis."""
    rec = example.record
    dx = rec.get("diagnosis") or rec.get("labels", {}).get("diagnosis")
    if not dx:
        return None
    if label_by == "diagnosis+grade":
        grade = rec.get("grade") or rec.get("labels", {}).get("grade")
        return f"{dx}|{grade}" if grade else str(dx)
    if label_by == "diagnosis":
        return str(dx)
    raise ValueError(f"label_by must be 'diagnosis' or 'diagnosis+grade', not {label_by!r}")


class ClassTexts:
    """The label term's class texts: per class (``class_key`` over the training examples, sorted), the
    distinct diagnosis lines of its training reports (``final_diagnosis`` where the record has one, else
    the text's first sentence), tokenised once. ``batch(step)`` shows one line of every class, drawn by
    (seed, step) (the same on every rank); ``batch(None)`` the first line of each (validation)."""

    def __init__(self, train: Sequence[Any], label_by: str, tokenizer: Any, max_text_len: int, seed: int = 0,
                 pad_token_id: int = 0):
        from inference.train import first_sentence

        lines: dict[str, set[str]] = {}
        for e in train:
            key = class_key(e, label_by)
            if key is not None:
                lines.setdefault(key, set()).add(e.record.get("final_diagnosis") or first_sentence(e.text))
        self.classes = sorted(lines)
        self.label_by, self.seed = label_by, int(seed)
        self.ids = [tokenizer(sorted(lines[c]), truncation=True, max_length=max_text_len)["input_ids"]
                    for c in self.classes]
        self._pad = Stage1Collator(pad_token_id)._pad_ids
        self._index = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.classes)

    def labels(self, examples: Sequence[Any]) -> list[int]:
        """Each example's class index; -1 for a class no training example has (it adds no loss)."""
        return [self._index.get(class_key(e, self.label_by) or "", -1) for e in examples]

    def batch(self, step: int | None) -> dict[str, torch.Tensor]:
        """``class_input_ids`` / ``class_attention_mask`` [C, T]: one diagnosis line per class."""
        if step is None:
            rows = [ids[0] for ids in self.ids]
        else:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, step, 3))
            rows = [ids[int(torch.randint(len(ids), (1,), generator=gen))] for ids in self.ids]
        ids, att = self._pad(rows)
        return {"class_input_ids": ids, "class_attention_mask": att}


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's part of each of the epoch's global batches, as ``(epoch, index)`` keys."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True,
                 min_batch: int = 2):
        if batch_size < world:
            raise ValueError(f"the global batch ({batch_size}) must give each of the {world} ranks an example")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.shuffle, self.min_batch = rank, world, shuffle, min_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
            order = order.tolist()
        else:
            order = list(range(self.n))
        chunks = [order[i: i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return [c for c in chunks if len(c) >= max(self.min_batch, self.world)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for chunk in self.global_batches():
            yield [(self.epoch, i) for i in chunk[rank_slice(len(chunk), self.rank, self.world)]]

    def __len__(self) -> int:
        return len(self.global_batches())


def default_workers(requested: int | None) -> int:
    """Loader workers: as asked, but none in a daemonic process (which may not have children)."""
    if multiprocessing.current_process().daemon:
        return 0
    return max(0, int(requested if requested is not None else 2))


def make_loader(dataset: Stage1Dataset, batch_sampler: Sampler, collate: Stage1Collator, workers: int | None,
                device: torch.device, pin_memory: bool = True, prefetch_factor: int = 4) -> DataLoader:
    """The training / validation DataLoader: ``workers`` processes read feature files and collate; host
    batches are pinned on CUDA so the copy to the GPU (``non_blocking=True``) overlaps the step."""
    n = default_workers(workers)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenised before the fork; keep it quiet
    kwargs: dict[str, Any] = {}
    if n:
        kwargs = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=n,
                      pin_memory=bool(pin_memory and device.type == "cuda"), **kwargs)


@torch.no_grad()
def feature_statistics(examples: Sequence[Any], ctx: DistContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], std [D]) over every patch of the examples, one pass over their files (float64 sums).

    Distributed: each rank reads its share of the files and the sums are added up (all ranks get the same)."""
    ctx = ctx or DistContext()
    mine = examples[rank_slice(len(examples), ctx.rank, ctx.world_size)]
    dim = examples[0].dim
    sums = torch.zeros(2 * dim + 1, dtype=torch.float64)
    for e in mine:
        x = e.load_features().double()
        sums[:dim] += x.sum(0)
        sums[dim:2 * dim] += (x * x).sum(0)
        sums[-1] += x.shape[0]
    sums = ctx.all_reduce_sum(sums).cpu()
    count = sums[-1].clamp_min(1)
    mean = sums[:dim] / count
    var = (sums[dim:2 * dim] - count * mean * mean) / (count - 1).clamp_min(1)
    return mean.float(), var.clamp_min(0).sqrt().float()
