"""A short CPU training run on class-structured random features: the losses go down; resume is exact."""

from __future__ import annotations

import torch

from inference.train import (
    Example,
    TrainConfig,
    collate,
    contrastive_texts,
    diagnostic_text,
    first_sentence,
    group_ids,
    train_stage1,
)

WIDTH = 16
TEXTS = [
    "tubular adenoma with low grade dysplasia",
    "invasive adenocarcinoma of the colon",
    "benign colonic mucosa",
    "chronic active gastritis",
]


def make_examples(n_per_class=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(len(TEXTS), WIDTH, generator=g) * 2
    out = []
    for c, text in enumerate(TEXTS):
        for i in range(n_per_class):
            n = int(torch.randint(5, 12, (1,), generator=g))
            feats = prototypes[c] + 0.5 * torch.randn(n, WIDTH, generator=g)
            split = "val" if i == 0 else "train"
            out.append(Example(feats, text, {"split": split, "diagnosis": f"d{c}"}))
    return out


def tiny_config(**kw):
    base = dict(
        variant="G",
        num_hidden_layers=1,
        num_query_tokens=4,
        epochs=4,
        batch_size=8,
        lr=1e-4,
        new_lr=2e-3,
        warmup_steps=2,
        max_text_len=16,
        max_patches=8,
        dropout=0.0,
        threads=2,
    )
    return TrainConfig(**(base | kw))


def test_losses_go_down_and_best_weights_are_kept(tmp_path):
    model, tok, history = train_stage1(make_examples(), tiny_config(), tmp_path / "ckpt", progress=False)
    first, last = history["epochs"][0]["train"], history["epochs"][-1]["train"]
    for k in ("itc", "itm", "itg", "loss"):
        assert last[k] < first[k], (k, first[k], last[k])
    assert history["best_val_loss"] == min(e["val"]["loss"] for e in history["epochs"])
    assert history["data"]["splits"] == {"train": 16, "val": 4}
    assert (tmp_path / "ckpt" / "last.pt").exists() and not model.training


def test_resume_continues_exactly(tmp_path):
    cfg = tiny_config(variant="R", epochs=2)
    full, _, h_full = train_stage1(make_examples(), cfg, tmp_path / "a", progress=False)
    train_stage1(make_examples(), cfg, tmp_path / "b", progress=False, stop_after=1)  # "interrupted"
    resumed, _, h_res = train_stage1(make_examples(), cfg, tmp_path / "b", resume=True, progress=False)
    assert [e["train"]["loss"] for e in h_res["epochs"]] == [e["train"]["loss"] for e in h_full["epochs"]]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b), k


def test_collate_pads_and_masks():
    from inference.qformer import default_text_model_dir, load_tokenizer

    tok = load_tokenizer(default_text_model_dir())
    ex = [Example(torch.ones(3, WIDTH), "a"), Example(torch.ones(20, WIDTH), "b c d")]
    batch = collate(ex, tok, max_text_len=8, max_patches=10)
    assert batch["patches"].shape == (2, 10, WIDTH)
    assert batch["patch_mask"].sum(1).tolist() == [3, 10]
    assert batch["patches"][0, 3:].abs().sum() == 0
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].sum(1).tolist() == [3, 5]


def test_contrastive_views_are_the_diagnosis_line_and_itg_keeps_the_whole_text():
    from inference.qformer import default_text_model_dir, load_tokenizer

    assert first_sentence("B. COLON, CECUM, BIOPSY: Tubular adenoma. Sections show crowded glands.") == (
        "B. COLON, CECUM, BIOPSY: Tubular adenoma."
    )
    assert first_sentence("A. Breast: Invasive ductal carcinoma, grade 3 (score 9). Mitoses: brisk.") == (
        "A. Breast: Invasive ductal carcinoma, grade 3 (score 9)."
    )
    assert first_sentence("no full stop at all") == "no full stop at all"
    ex = [Example(torch.ones(2, WIDTH), f"A. Colon: adenoma number {i}. More words here.") for i in range(40)]
    texts = contrastive_texts(ex, 0.5, torch.Generator().manual_seed(0))
    short = [t for t in texts if "More" not in t]
    assert 8 < len(short) < 32  # about half are the first sentence
    assert contrastive_texts(ex, 0.0) == [e.text for e in ex]
    tok = load_tokenizer(default_text_model_dir())
    batch = collate(ex[:4], tok, 32, texts=["A. Colon: adenoma number 0."] + [e.text for e in ex[1:4]])
    # ITC/ITM read the view; ITG reads the whole first text.
    assert batch["attention_mask"][0].sum() < batch["itg_attention_mask"][0].sum()
    assert torch.equal(batch["input_ids"][1:], batch["itg_input_ids"][1:])
    assert "itg_input_ids" not in collate(ex[:4], tok, 32)
    # Identical short views count as positives of each other.
    views = ["A. Colon: adenoma.", "A. Colon: adenoma.", "other"]
    assert group_ids(ex[:3], "text", views).tolist() == [0, 0, 1]


def test_group_ids_mark_duplicates():
    ex = [Example(torch.zeros(1, 1), t, {"diagnosis": d}) for t, d in [("A", "x"), ("b", "x"), ("a", "y")]]
    assert group_ids(ex, "text").tolist() == [0, 1, 0]
    assert group_ids(ex, "diagnosis").tolist() == [0, 0, 1]


def test_diagnostic_text_keeps_what_the_slide_shows():
    report = (
        "CLINICAL HISTORY:\n29M, screening\n\nFINAL DIAGNOSIS:\nA. Colon, sigmoid, biopsy:\n  - Tubular "
        "adenoma.\n  - Negative for malignancy.\n\nCOMMENT:\nKi-67 stain reviewed.\n\nMicroscopic: Crowded "
        "glands.\n\nGROSS:\nOne fragment."
    )
    assert diagnostic_text(report) == (
        "A. Colon, sigmoid, biopsy: Tubular adenoma. Negative for malignancy. Crowded glands."
    )
    assert diagnostic_text("no sections here") == "no sections here"


def test_evaluate_end_to_end_on_a_tiny_bundle(tmp_path):
    from inference.bundle import save_bundle
    from inference.evaluate import evaluate, format_table
    from inference.pathalign import PathAlign

    examples = make_examples(n_per_class=5)
    for i, e in enumerate(examples):  # a test split too
        if e.split == "train" and i % 5 == 1:
            e.record["split"] = "test"
    model, tok, _ = train_stage1(examples, tiny_config(epochs=1), progress=False)
    path = save_bundle(tmp_path / "b", model, tok, {"kind": "test"})
    result = evaluate(PathAlign.load(path), examples, max_new_tokens=4, log=lambda m: None)
    assert result["n_slides"] == 4
    for key in (
        "i2t_R@1",
        "t2i_MVAcc@5",
        "zero_shot_accuracy",
        "linear_probe_accuracy",
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "diagnosis_stated_rate",
    ):
        assert 0 <= result["pathalign"][key] <= 1 and 0 <= result["baseline"][key] <= 1, key
    assert "zero_shot_accuracy" in format_table(result, {"zero_shot_accuracy": 0.85})
