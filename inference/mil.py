"""Slide-level baselines on frozen patch features: gated-attention MIL (Ilse et al. 2018) and mean pooling.

Both read one slide's features at a time from per-slide safetensors files (`FeatureBag`: path + patch
count; tensors are loaded when a bag is used and dropped afterwards), so nothing holds an archive's
features in memory. Feature standardisation uses statistics from one streaming pass
(`streaming_feature_stats`, exact: Chan et al.'s parallel update of mean and M2 per file).

Gated attention MIL, per bag of N patch features x [N, D]:
    h = ReLU(W1 x)                        [N, H]      instance embedding
    a = softmax_N(w^T (tanh(V h) * sigmoid(U h)))   [N]   attention (gated, Ilse et al. eq. 9)
    z = sum_n a_n h_n                     [H]         bag embedding
    heads: malignant logit (1) and diagnosis logits (C)
Training: Adam, one bag per step, a random subset of at most `max_instances` patches per bag per epoch
(augmentation and bounded cost); inference reads every patch.

`MeanPoolLogReg`: standardised mean of the patch features -> logistic regression (malignant) and a
multinomial logistic regression (diagnosis): what a patch-level summary without attention can do.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from inference.metrics import RunningMoments


@dataclass
class FeatureBag:
    """One slide: its features file (or an in-memory array) and labels."""

    path: str | None
    malignant: int
    diagnosis: int
    array: np.ndarray | None = None  # for tests and small in-memory bags

    def load(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as fh:
            return fh.get_tensor("features").float().numpy()


def streaming_feature_stats(bags: Sequence[FeatureBag]) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean [D], std [D], n patches) over every patch of `bags`, one bag in memory at a time."""
    rm = RunningMoments()
    for b in bags:
        rm.update(b.load())
    return rm.mean, rm.std, rm.n


class GatedAttentionMIL(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, attn: int = 64, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.v = nn.Linear(hidden, attn)
        self.u = nn.Linear(hidden, attn)
        self.w = nn.Linear(attn, 1)
        self.malignant = nn.Linear(hidden, 1)
        self.diagnosis = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, D] -> (malignant logit [], diagnosis logits [C], attention [N])."""
        h = self.embed(x)  # [N, H]
        s = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)  # [N]
        a = torch.softmax(s, 0)
        z = a @ h  # [H]
        return self.malignant(z).squeeze(-1), self.diagnosis(z), a


@dataclass
class MILOutput:
    malignant_prob: np.ndarray  # [n bags]
    diagnosis_prob: np.ndarray  # [n bags, C]
    attention: list[np.ndarray]  # per bag [N]


class MILBaseline:
    """Gated-attention MIL trained on bags of standardised patch features."""

    def __init__(self, n_classes: int, hidden: int = 128, attn: int = 64, epochs: int = 40, lr: float = 5e-4,
                 weight_decay: float = 1e-4, max_instances: int = 512, seed: int = 0,
                 diagnosis_weight: float = 0.5):
        self.n_classes, self.hidden, self.attn, self.epochs, self.lr = n_classes, hidden, attn, epochs, lr
        self.weight_decay, self.max_instances, self.seed = weight_decay, max_instances, seed
        self.diagnosis_weight = diagnosis_weight
        self.model: GatedAttentionMIL | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def _x(self, arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((arr - self.mean) / self.std).astype(np.float32))

    def fit(self, bags: Sequence[FeatureBag], cache: bool = True) -> MILBaseline:
        """`cache`: keep the standardised bags of this fit in memory between epochs (small corpora);
        False reads each bag from disk every epoch."""
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.mean, self.std, _ = streaming_feature_stats(bags)
        self.std = np.maximum(self.std, 1e-6)
        dim = len(self.mean)
        self.model = GatedAttentionMIL(dim, self.n_classes, self.hidden, self.attn)
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        pos = sum(b.malignant for b in bags)
        pw = torch.tensor(max(1.0, (len(bags) - pos) / max(pos, 1)))
        bce = nn.BCEWithLogitsLoss(pos_weight=pw)
        ce = nn.CrossEntropyLoss()
        store: dict[int, torch.Tensor] = {}
        self.model.train()
        for _ in range(self.epochs):
            for i in rng.permutation(len(bags)):
                b = bags[i]
                x = store.get(i)
                if x is None:
                    x = self._x(b.load())
                    if cache:
                        store[i] = x
                if len(x) > self.max_instances:
                    x = x[torch.from_numpy(rng.choice(len(x), self.max_instances, replace=False))]
                m, d, _ = self.model(x)
                loss = bce(m, torch.tensor(float(b.malignant))) + self.diagnosis_weight * ce(
                    d[None], torch.tensor([b.diagnosis]))
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.model.eval()
        return self

    @torch.no_grad()
    def predict(self, bags: Sequence[FeatureBag]) -> MILOutput:
        assert self.model is not None, "fit first"
        mal, dia, att = [], [], []
        for b in bags:
            m, d, a = self.model(self._x(b.load()))
            mal.append(float(torch.sigmoid(m)))
            dia.append(torch.softmax(d, 0).numpy())
            att.append(a.numpy())
        return MILOutput(np.asarray(mal), np.stack(dia) if dia else np.zeros((0, self.n_classes)), att)


class MeanPoolLogReg:
    """Standardised mean-pooled features -> logistic regressions (malignant; diagnosis)."""

    def __init__(self, c: float = 1.0, seed: int = 0):
        self.c, self.seed = c, seed

    @staticmethod
    def pooled(bags: Sequence[FeatureBag]) -> np.ndarray:
        return np.stack([b.load().mean(0) for b in bags])

    def fit(self, bags: Sequence[FeatureBag]) -> MeanPoolLogReg:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = self.pooled(bags)
        ym = np.asarray([b.malignant for b in bags])
        yd = np.asarray([b.diagnosis for b in bags])
        self.mal = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=3000,
                                                                      random_state=self.seed,
                                                                      class_weight="balanced"))
        self.mal_const = None
        if len(set(ym.tolist())) < 2:
            self.mal_const = float(ym[0])
        else:
            self.mal.fit(x, ym)
        self.dia_classes = np.unique(yd)
        self.dia = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=3000,
                                                                      random_state=self.seed))
        self.dia_const = None
        if len(self.dia_classes) < 2:
            self.dia_const = int(self.dia_classes[0])
        else:
            self.dia.fit(x, yd)
        return self

    def predict(self, bags: Sequence[FeatureBag], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(malignant probability [n], diagnosis probabilities [n, n_classes])."""
        if not bags:  # an empty set (e.g. a small corpus with no new-site part)
            return np.zeros(0), np.zeros((0, n_classes))
        x = self.pooled(bags)
        mal = np.full(len(x), self.mal_const) if self.mal_const is not None else self.mal.predict_proba(x)[:, 1]
        dia = np.zeros((len(x), n_classes))
        if self.dia_const is not None:
            dia[:, self.dia_const] = 1.0
        else:
            dia[:, self.dia_classes] = self.dia.predict_proba(x)
        return mal, dia
