"""Training on case parts with the label term (demo v2): reports without what no slide shows, one bag per
part with the part's labels, the class texts of the label term, its loss by hand, and a short training in
which the label term makes the queries separate small-focus bags."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.data import ClassTexts, class_key
from inference.qformer import QFormer, QFormerConfig, query_max_similarity
from inference.synthetic.catalog import ORGANS
from inference.synthetic.templates_v2 import TEMPLATES, report_body, write_part_report
from inference.train import Example, TrainConfig, load_examples, train_stage1

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _part(n: int, involved: list[int]) -> dict:
    return {"organ": "lung", "part": "C", "diagnosis": "lung_adenocarcinoma", "grade_index": 1, "has_lesion": True,
            "site": "right upper lobe", "procedure": "lobectomy", "extent": "focus up to 2.1 mm",
            "margin": {"involved": False, "distance_mm": 3.2},
            "slides": [{"diagnosis": "lung_adenocarcinoma" if i in involved else "lung_normal",
                        "lesion_share": 0.02 if i in involved else 0.0} for i in range(n)]}


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize(("n", "involved"), [(1, [0]), (3, [0, 2]), (2, [1])])
def test_report_body_drops_the_header_and_slide_list_and_keeps_the_findings(template, n, involved):
    report, final = write_part_report(_part(n, involved), template, np.random.default_rng(1))
    record = {"organ": "lung", "part": "C", "site": "right upper lobe", "procedure": "lobectomy",
              "template": template, "n_slides_in_part": n}
    body = report_body(report, record)
    low = body.lower()
    assert "right" not in low and "upper lobe" not in low and "lobectomy" not in low  # site, side, procedure
    assert "c1" not in low and "c3" not in low and "present in slide" not in low and "lung," not in low
    assert ORGANS["lung"].display.lower() + "," not in low
    assert final.lower() in low  # the diagnosis with its grade
    assert "2.1 mm" in body and "3.2 mm" in body  # extent and margin stay
    assert "[]" not in body and ";;" not in body and "\n\n\n" not in body


def _write_corpus(tmp_path, parts: list[tuple[str, str, list[tuple[str, int, str | None]]]]):
    """A manifest of parts [(part_id, part diagnosis, [(slide diagnosis, patches, grade)])] and .npy features."""
    corpus, feats = tmp_path / "corpus", tmp_path / "corpus" / "features"
    feats.mkdir(parents=True)
    rows, index = [], []
    rng = np.random.default_rng(0)
    for pid, part_dx, slides in parts:
        for j, (dx, n, grade) in enumerate(slides):
            slide = f"slides/{pid}-{j}.svs"
            x = rng.normal(size=(n, 8)).astype(np.float32) + (100 * len(rows))  # tells the slides apart
            np.save(feats / f"{pid}-{j}.npy", x)
            index.append({"slide": slide, "features": f"{pid}-{j}.npy", "n_patches": n})
            rows.append({"slide": slide, "part_id": pid, "part": "A", "slide_index": j, "split": "train",
                         "diagnosis": dx, "part_diagnosis": part_dx, "malignant": dx == "lung_adenocarcinoma",
                         "part_malignant": part_dx == "lung_adenocarcinoma", "grade": grade,
                         "report": f"A. Lung, left lower lobe, biopsy: {pid} report.",
                         "final_diagnosis": f"{part_dx} line"})
    # slide order in the manifest differs from slide_index: the bag must follow slide_index
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    (feats / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    return corpus, feats


def test_part_bags_join_their_slides_in_order_with_the_parts_labels(tmp_path):
    corpus, feats = _write_corpus(tmp_path, [
        ("p1", "lung_adenocarcinoma", [("lung_normal", 5, None), ("lung_adenocarcinoma", 7, "G2"),
                                       ("lung_normal", 3, None)]),
        ("p2", "lung_normal", [("lung_normal", 4, None)]),
    ])
    slides, _ = load_examples(corpus, feats, stream=True)
    assert len(slides) == 4 and {e.record["diagnosis"] for e in slides} == {"lung_normal", "lung_adenocarcinoma"}
    examples, _ = load_examples(corpus, feats, stream=True, parts=True)
    assert len(examples) == 2
    p1 = next(e for e in examples if e.record["part_id"] == "p1")
    assert p1.record["diagnosis"] == "lung_adenocarcinoma" and p1.record["malignant"] is True
    assert p1.record["grade"] == "G2" and p1.record["slide_diagnoses"] == ["lung_normal", "lung_adenocarcinoma",
                                                                          "lung_normal"]
    assert p1.n_patches == 15 and p1.slide_patches == (5, 7, 3)
    x = p1.load_features()
    assert x.shape == (15, 8)
    singles = {e.record["slide"]: e.load_features() for e in slides}
    assert torch.equal(x, torch.cat([singles[f"slides/p1-{j}.svs"] for j in range(3)]))
    assert class_key(p1, "diagnosis+grade") == "lung_adenocarcinoma|G2"
    with pytest.raises(ValueError, match="stream"):
        load_examples(corpus, feats, parts=True)


def test_class_texts_show_one_line_of_every_class_per_step():
    from inference.qformer import default_text_model_dir, load_tokenizer

    tok = load_tokenizer(default_text_model_dir())

    def ex(dx, grade, line):
        return Example(torch.zeros(2, 4), line, {"diagnosis": dx, "grade": grade, "final_diagnosis": line})

    train = [ex("a", None, "alpha one"), ex("a", None, "alpha two"), ex("b", "G1", "beta low"),
             ex("b", "G3", "beta high"), ex("b", "G3", "beta high")]
    ct = ClassTexts(train, "diagnosis+grade", tok, 16, seed=3)
    assert ct.classes == ["a", "b|G1", "b|G3"]
    assert ct.labels(train + [ex("z", None, "zeta")]) == [0, 0, 1, 2, 2, -1]
    first = ct.batch(None)
    assert first["class_input_ids"].shape[0] == 3
    texts = [tok.decode(r[m.bool()], skip_special_tokens=True) for r, m in
             zip(first["class_input_ids"], first["class_attention_mask"], strict=True)]
    assert texts == ["alpha one", "beta low", "beta high"]
    drawn = {tok.decode(ct.batch(s)["class_input_ids"][0], skip_special_tokens=True) for s in range(20)}
    assert drawn == {"alpha one", "alpha two"}  # both lines of class "a" are shown over the steps
    assert torch.equal(ct.batch(7)["class_input_ids"], ct.batch(7)["class_input_ids"])  # by (seed, step)
    assert ClassTexts(train, "diagnosis", tok, 16).classes == ["a", "b"]


def test_label_loss_is_the_class_cross_entropy_of_queries_and_bag():
    torch.manual_seed(0)
    cfg = QFormerConfig(vision_width=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, vocab_size=50, max_position_embeddings=32, num_query_tokens=3,
                        embed_dim=16, max_text_len=16, scorer_hidden=8, label_loss_weight=1.0, dec_token_id=49,
                        losses=("itc",))
    model = QFormer(cfg).eval()
    q = F.normalize(torch.randn(4, 3, 16), dim=-1)
    bag = F.normalize(torch.randn(4, 16), dim=-1)
    ids = torch.randint(5, 40, (3, 6))
    ids[:, 0] = cfg.cls_token_id if cfg.cls_token_id < 50 else 1
    att = torch.ones_like(ids)
    labels = torch.tensor([0, 2, -1, 1])
    got = model.label_loss(q, bag, ids, att, labels)
    t = model.text_embeddings(model.encode_text(ids, att), att)
    ls = cfg.label_smoothing
    keep = labels >= 0
    want_q = F.cross_entropy(query_max_similarity(q, t)[keep] / model.temp, labels[keep], label_smoothing=ls,
                             reduction="sum")
    want_b = F.cross_entropy((bag @ t.t())[keep] / model.temp, labels[keep], label_smoothing=ls, reduction="sum")
    assert torch.allclose(got, (want_q + want_b) / 2, atol=1e-5)
    with torch.no_grad():
        assert float(model.label_loss(q, None, ids, att, labels)) == pytest.approx(float(want_q), abs=1e-5)


def _focal_bags(seed: int, n_bags: int, n: int = 300):
    """Mixed benign backgrounds; every second bag has 1 % lesion patches (3 of 300)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(0, 2.5, (3, 16)).astype(np.float32)
    out = []
    for i in range(n_bags):
        kinds = rng.choice(3, size=n, p=rng.dirichlet([1.0, 1.0, 1.0]))
        x = centres[kinds] + rng.normal(0, 1.0, (n, 16)) + rng.normal(0, 0.4, 16)
        if i % 2:
            x[rng.choice(n, 3, replace=False), 12:] += 6.0
        out.append((x.astype(np.float32), i % 2))
    return out


def test_training_with_the_label_term_separates_one_percent_focus_bags():
    from inference import metrics

    texts = {1: "invasive carcinoma, a small focus.", 0: "benign tissue, no tumour."}
    train = [Example(torch.from_numpy(x), texts[y], {"split": "train", "diagnosis": "ca" if y else "benign",
                                                     "final_diagnosis": texts[y]}) for x, y in _focal_bags(0, 32)]
    # 200 steps: on these bags the label term alone has not separated them at 100 (AUC ~0.5), and without it
    # the text losses have not at 100 either (~0.3)
    cfg = TrainConfig(variant="R", num_hidden_layers=1, num_query_tokens=4, cross_attention_freq=1, epochs=25,
                      batch_size=4, lr=1e-4, new_lr=3e-3, warmup_steps=2, max_text_len=16, max_patches=None,
                      dropout=0.0, threads=1, num_workers=0, group_by="diagnosis", freeze_word_embeddings=True,
                      scorer_hidden=32, label_loss_weight=1.0, label_by="diagnosis")
    model, tok, history = train_stage1(train, cfg, None, progress=False)
    assert history["classes"] == ["benign", "ca"]
    first, last = history["epochs"][0]["train"], history["epochs"][-1]["train"]
    assert "label" in first and last["label"] < first["label"]
    enc = tok(list(texts.values()), padding=True, return_tensors="pt")
    with torch.no_grad():
        t = model.text_embeddings(model.encode_text(enc["input_ids"], enc["attention_mask"]), enc["attention_mask"])
        scores, ys = [], []
        for x, y in _focal_bags(1, 24):
            out, _ = model.encode_patches(torch.from_numpy(x)[None])
            sim = query_max_similarity(model.query_embeddings(out), t)[0]
            scores.append(float(sim[0] - sim[1]))
            ys.append(y)
    assert metrics.roc_auc(np.asarray(scores), ys) >= 0.85


def test_a_part_bag_in_training_keeps_a_slide_that_carries_the_parts_diagnosis(tmp_path):
    from inference.data import Stage1Dataset, part_slide_subset
    from inference.qformer import default_text_model_dir, load_tokenizer

    corpus, feats = _write_corpus(tmp_path, [
        ("p1", "lung_adenocarcinoma", [("lung_normal", 5, None), ("lung_adenocarcinoma", 7, "G2"),
                                       ("lung_normal", 3, None), ("lung_normal", 2, None)]),
        ("p2", "lung_normal", [("lung_normal", 4, None), ("lung_normal", 6, None)]),
    ])
    examples, _ = load_examples(corpus, feats, stream=True, parts=True)
    p1 = next(e for e in examples if e.record["part_id"] == "p1")
    p2 = next(e for e in examples if e.record["part_id"] == "p2")
    subsets = [part_slide_subset(p1, 0.5, torch.Generator().manual_seed(s)) for s in range(200)]
    assert all(1 in s for s in subsets)  # the carcinoma's slide is in every bag
    assert len({tuple(s) for s in subsets}) == 8  # with any of the 2^3 choices of the benign ones
    assert all(part_slide_subset(p1, 0.0, torch.Generator().manual_seed(s)) == [1] for s in range(20))
    alone = {tuple(part_slide_subset(p2, 0.0, torch.Generator().manual_seed(s))) for s in range(40)}
    assert alone == {(0,), (1,)}  # a part without a lesion: any of its slides carries its diagnosis
    tok = load_tokenizer(default_text_model_dir())
    ds = Stage1Dataset([p1], tok, 16, part_slide_keep=0.5, seed=1)
    sizes = {ds[(epoch, 0)]["features"].shape[0] for epoch in range(30)}
    assert 7 in sizes and 17 in sizes and sizes <= {7 + a + b + c for a in (0, 5) for b in (0, 3) for c in (0, 2)}
    assert ds[0]["features"].shape[0] == 17  # evaluation items read the whole part
    assert Stage1Dataset([p1], tok, 16)[(3, 0)]["features"].shape[0] == 17  # keep 1: the whole part


def test_a_benign_slide_of_a_carcinoma_part_is_paired_with_a_report_of_its_own_diagnosis(tmp_path):
    corpus, feats = _write_corpus(tmp_path, [
        ("p1", "lung_adenocarcinoma", [("lung_normal", 5, None), ("lung_adenocarcinoma", 7, "G2")]),
        ("p2", "lung_normal", [("lung_normal", 4, None)]),
        ("p3", "colon_adenocarcinoma", [("colon_normal", 3, None), ("colon_adenocarcinoma", 3, "G1")]),
    ])
    plain, _ = load_examples(corpus, feats, stream=True)
    assert len(plain) == 5
    own, _ = load_examples(corpus, feats, stream=True, own_text=True)
    by_slide = {e.record["slide"]: e for e in own}
    assert "slides/p3-0.svs" not in by_slide  # no colon_normal part to lend a report: left out
    benign = by_slide["slides/p1-0.svs"]
    assert benign.text == "A. Lung, left lower lobe, biopsy: p2 report." and benign.record["text_from"] == "p2"
    assert benign.record["diagnosis"] == "lung_normal" and benign.record["grade"] is None
    carrier = by_slide["slides/p1-1.svs"]
    assert carrier.text.endswith("p1 report.") and "text_from" not in carrier.record
    assert by_slide["slides/p2-0.svs"].text.endswith("p2 report.")
