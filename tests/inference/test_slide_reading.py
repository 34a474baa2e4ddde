"""A Q-Former that reads the slide: on bags of 200 patch features with 1-5 % planted lesion patches, a short
CPU training makes its patch attention rank the lesion patches highest and separates lesion bags from normal
ones far better than a mean-pool logistic regression; the gated-attention patch scorer (QFormerConfig v2)
keeps padding and batching invariances, its top-k selection reads only the best-scored patches, and a v1
configuration is the v1 model (no new weights: old bundles load as they were)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference import metrics
from inference.mil import FeatureBag, MeanPoolLogReg
from inference.qformer import QFormer, QFormerConfig
from inference.train import Example, TrainConfig, train_stage1

DIM = 16
MALIGNANT = "invasive carcinoma, a small focus in benign tissue."
BENIGN = "benign tissue, no tumour seen."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bags(seed: int, n_bags: int, n: int = 200, lesion: tuple[int, ...] = (2, 4, 6, 10)):
    """Bags on a mixed benign background (three tissue types in bag-specific proportions, a slide-wide offset)
    with, in every second bag, 1-5 % lesion patches (a shift in four features). Returns [(x, flags, label)]."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 2.5, (3, DIM)).astype(np.float32)
    centres[:, 12:] /= 2.5
    out = []
    for i in range(n_bags):
        positive = i % 2
        kinds = rng.choice(3, size=n, p=rng.dirichlet([1.0, 1.0, 1.0]))
        x = centres[kinds] + rng.normal(0, 1.0, (n, DIM)) + rng.normal(0, 0.4, DIM)
        flags = np.zeros(n, bool)
        if positive:
            idx = rng.choice(n, int(rng.choice(lesion)), replace=False)
            x[idx, 12:] += 6.0
            flags[idx] = True
        out.append((x.astype(np.float32), flags, positive))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """PathAlign-R with the patch scorer, one text layer, trained on 40 full bags for 15 short epochs, saved
    as a bundle and loaded through the API the app uses."""
    from inference.bundle import save_bundle
    from inference.pathalign import PathAlign

    torch.set_num_threads(1)
    train = _bags(0, 40)
    examples = [Example(torch.from_numpy(x), MALIGNANT if y else BENIGN,
                        {"split": "train", "diagnosis": "carcinoma" if y else "benign"}) for x, _, y in train]
    cfg = TrainConfig(variant="R", num_hidden_layers=1, num_query_tokens=4, cross_attention_freq=1, epochs=15,
                      batch_size=8, lr=1e-4, new_lr=3e-3, warmup_steps=2, max_text_len=16, max_patches=None,
                      dropout=0.0, threads=1, num_workers=0, group_by="diagnosis", freeze_word_embeddings=True,
                      scorer_hidden=32)
    model, tok, history = train_stage1(examples, cfg, None, progress=False)
    path = save_bundle(tmp_path_factory.mktemp("slide-reader") / "bundle", model, tok,
                       {"kind": "random", "seed": 0, "dim": DIM, "input_size": 32})
    return PathAlign.load(path), train, history


def test_attention_ranks_the_lesion_patches_highest_and_beats_mean_pooling(trained):
    model, train, history = trained
    assert "bag" in history["epochs"][0]["train"]  # the scorer's own ITC term was trained
    test = _bags(1, 40)
    labels, texts = model.label_embeddings({"carcinoma": [MALIGNANT], "benign": [BENIGN]})
    assert labels == ["carcinoma", "benign"]
    scores, attention, flags = [], [], []
    for x, f, _ in test:
        emb = model.embed(x)
        sim = model.similarity(emb, texts)
        scores.append(float(sim[0] - sim[1]))
        attention.append(emb.attention)
        flags.append(f.astype(float))
        assert emb.attention.shape == (len(x),) and emb.attention.sum() == pytest.approx(1.0, abs=1e-4)
    y = [label for _, _, label in test]
    auc = metrics.roc_auc(scores, y)
    loc = metrics.localisation_auc(attention, flags)
    # Precision at k = the lesion size: how much of the top of the attention is lesion.
    precision = [np.isin(np.argsort(-a)[: int(f.sum())], np.nonzero(f)[0]).mean()
                 for a, f in zip(attention, flags, strict=True) if f.any()]
    mean_pool = MeanPoolLogReg().fit([FeatureBag(None, lab, lab, array=x) for x, _, lab in train])
    auc_mp = metrics.roc_auc(mean_pool.predict([FeatureBag(None, lab, lab, array=x) for x, _, lab in test], 2)[0], y)
    assert loc["n_slides"] == 20 and loc["mean_auc"] > 0.95, loc
    assert np.mean(precision) > 0.7, precision
    assert auc > 0.95, auc
    assert auc_mp <= 0.75 and auc > auc_mp + 0.2, (auc, auc_mp)  # measured: 0.983 against 0.680


def test_a_part_draft_puts_its_attention_on_the_slide_with_the_focus(trained):
    from inference.features import SlideFeatures
    from inference.generation import GenerationConfig

    model, _, _ = trained
    (normal, _, _), (lesion, flags, _) = _bags(7, 2, lesion=(6,))

    def sf(x: np.ndarray) -> SlideFeatures:
        return SlideFeatures(torch.from_numpy(x), np.zeros((len(x), 2), np.int64), 448, 224, 1.0, 0.5, (100, 100))

    draft = model.draft_part([sf(normal), sf(lesion)], GenerationConfig(backend="none"))
    a_normal, a_lesion = draft.per_slide_attention
    assert a_lesion.sum() > 2 * a_normal.sum()
    assert a_lesion[flags].mean() > 5 * a_lesion[~flags].mean()


@pytest.fixture(scope="module")
def scorer_model():
    torch.manual_seed(0)
    model, _ = QFormer.from_text_model(num_hidden_layers=2, vision_width=DIM, num_query_tokens=4,
                                       cross_attention_freq=1, scorer_hidden=16, scorer_prior=1.0)
    return model.eval()


def test_scorer_keeps_padding_and_batching_invariance(scorer_model):
    torch.manual_seed(1)
    x1, x2 = torch.randn(1, 9, DIM), torch.randn(1, 20, DIM)
    batch = torch.cat([torch.cat([x1, 50 * torch.randn(1, 11, DIM)], 1), x2])  # garbage in the padding
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, :9], mask[1] = True, True
    with torch.no_grad():
        both, att = scorer_model.encode_patches(batch, mask, with_attention=True)
        one, att1 = scorer_model.encode_patches(x1, None, with_attention=True)
        two, _ = scorer_model.encode_patches(x2, None, with_attention=True)
    assert torch.allclose(both[0], one[0], atol=1e-5) and torch.allclose(both[1], two[0], atol=1e-5)
    assert torch.allclose(att[0, :9], att1[0], atol=1e-6) and torch.all(att[0, 9:] == 0)
    assert torch.allclose(att.sum(-1), torch.ones(2), atol=1e-5)


def test_top_k_reads_only_the_best_scored_patches(scorer_model):
    torch.manual_seed(2)
    x = torch.randn(2, 30, DIM)
    with torch.no_grad():
        full, att_full = scorer_model.encode_patches(x, None, with_attention=True)
        log_a = scorer_model.patch_log_attention(x)
        scorer_model.config.scorer_top_k = 5
        try:
            top, att = scorer_model.encode_patches(x, None, with_attention=True)
            scorer_model.config.scorer_top_k = 30  # k = N: the same as reading every patch
            same, att_same = scorer_model.encode_patches(x, None, with_attention=True)
        finally:
            scorer_model.config.scorer_top_k = 0
    best = log_a.topk(5, dim=1).indices
    for i in range(2):
        read = set(torch.nonzero(att[i]).flatten().tolist())
        assert read <= set(best[i].tolist()) and len(read) == 5
    assert torch.allclose(att.sum(-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(top, full, atol=1e-3)
    assert torch.allclose(same, full, atol=1e-5) and torch.allclose(att_same, att_full, atol=1e-6)


def test_heatmap_attention_of_a_scorer_model_is_the_scorers_gated_attention(trained, scorer_model):
    """What the app's heatmaps show (``SlideEmbedding.attention``) for a v2 model: the scorer's softmax over
    every real patch, 0 on padding, and over every patch even when the queries read only the top k."""
    model, _, _ = trained
    assert model.attention_from == "cross"  # no choice recorded: the averaged cross-attention
    (x, flags, _), = _bags(11, 2, lesion=(6,))[1:]
    model.bundle.config["heatmap_attention"] = "scorer"
    try:
        emb = model.embed(x)
    finally:
        del model.bundle.config["heatmap_attention"]
    assert not np.allclose(emb.attention, model.embed(x).attention)
    with torch.no_grad():
        log_a = model.model.patch_log_attention(torch.from_numpy(x)[None])[0]
    assert np.allclose(emb.attention, torch.softmax(log_a, 0).numpy(), atol=1e-6)
    assert emb.attention[flags].mean() > 1.5 * emb.attention[~flags].mean()  # the six lesion patches stand out

    torch.manual_seed(3)
    batch, mask = torch.randn(2, 30, DIM), torch.ones(2, 30, dtype=torch.bool)
    mask[0, 12:] = False
    with torch.no_grad():
        scorer_model.config.scorer_top_k = 5
        try:
            _, att = scorer_model.encode_patches(batch, mask, with_attention=True, attention_from="scorer")
        finally:
            scorer_model.config.scorer_top_k = 0
    assert torch.all(att[0, 12:] == 0) and torch.all(att[0, :12] > 0) and torch.all(att[1] > 0)
    assert torch.allclose(att.sum(-1), torch.ones(2), atol=1e-5)
    v1 = QFormer(QFormerConfig(vision_width=DIM, num_hidden_layers=1, vocab_size=50, num_query_tokens=2))
    with pytest.raises(ValueError, match="patch scorer"):
        v1.encode_patches(batch, mask, with_attention=True, attention_from="scorer")


def test_v1_configuration_is_the_v1_model():
    """No scorer: no new weights (a v1 bundle's state dict loads strictly) and config version 1."""
    cfg = QFormerConfig(vision_width=DIM, num_hidden_layers=1, vocab_size=50, num_query_tokens=2)
    model = QFormer(cfg)
    assert cfg.version == 1 and model.scorer is None
    assert not any(k.startswith("scorer.") for k in model.state_dict())
    assert model.patch_log_attention(torch.randn(1, 5, DIM)) is None
    assert QFormerConfig.from_dict(cfg.to_dict()) == cfg
    v2 = QFormerConfig.from_dict(cfg.to_dict() | {"scorer_hidden": 8, "scorer_top_k": 4})
    assert v2.version == 2 and "scorer.strength" in QFormer(v2).state_dict()
    with pytest.raises(ValueError, match="patch scorer"):
        QFormerConfig(scorer_top_k=4)


def test_attention_sampling_keeps_the_top_of_the_attention_and_only_real_distinct_patches(scorer_model):
    from inference.train import attention_subset

    torch.manual_seed(3)
    patches = torch.randn(2, 40, DIM)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 12:] = False  # a slide of 12 patches padded to 40
    patches[:, :, 0] = torch.arange(40.0)  # a patch's identity, to find it after the cut
    batch = {"patches": patches, "patch_mask": mask, "input_ids": torch.zeros(2, 3, dtype=torch.long)}
    out = attention_subset(scorer_model, batch, k=16, share=0.5, generator=torch.Generator().manual_seed(0))
    assert out["patches"].shape == (2, 16, DIM) and out["input_ids"] is batch["input_ids"]
    log_a = scorer_model.patch_log_attention(patches, mask)
    ids0 = out["patches"][0, :, 0].long()
    assert set(log_a[0].topk(8).indices.tolist()) <= set(ids0.tolist()) and len(set(ids0.tolist())) == 16
    kept = out["patches"][1, out["patch_mask"][1], 0].long().tolist()
    assert sorted(kept) == list(range(12))  # fewer real patches than k: each once, padding masked
    small = {"patches": patches[:, :10], "patch_mask": mask[:, :10]}
    assert attention_subset(scorer_model, small, k=16, share=0.5) is small


def test_training_with_attention_sampling_runs_and_learns(tmp_path):
    from tests.inference.test_train import make_examples, tiny_config

    cfg = tiny_config(variant="R", scorer_hidden=8, max_patches=6, epochs=3, num_workers=0, threads=1)
    model, _, history = train_stage1(make_examples(), cfg, tmp_path, progress=False)
    first, last = history["epochs"][0]["train"], history["epochs"][-1]["train"]
    assert model.scorer is not None and last["loss"] < first["loss"] and last["bag"] < first["bag"]


def test_the_heatmap_attention_is_chosen_by_validation_localisation(trained, tmp_path):
    from safetensors.torch import save_file

    from inference.evaluate import choose_heatmap_attention

    model, _, _ = trained
    slides = []
    for i, (x, flags, _) in enumerate(_bags(21, 6)):
        path = tmp_path / f"s{i}.safetensors"
        save_file({"features": torch.from_numpy(x)}, str(path))
        slides.append({"features_path": str(path), "lesion_fraction": flags.astype(float)})
    got = choose_heatmap_attention(model, slides)
    assert got["slides"] == 3  # the lesion bags only
    auc = got["localisation_auc"]
    assert set(auc) == {"cross", "scorer"} and all(0.5 < v <= 1 for v in auc.values())
    assert got["heatmap_attention"] == max(auc, key=auc.get)
    assert choose_heatmap_attention(model, slides[::2])["heatmap_attention"] == "cross"  # no lesion: the default
