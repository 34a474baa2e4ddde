"""Data-parallel stage 1 (DDP, gloo on CPU): two processes compute what one process computes on the global batch.

The test launches this file under ``torchrun`` (two processes, rendezvous on 127.0.0.1 and a free port).
Each rank: (1) one forward/backward through DDP on its half of a global batch, with the ITC negatives and
ITM hard negatives gathered from both ranks; (2) ``python -m inference.train`` (streamed features, a
DataLoader worker) for two epochs, rank 0 writing the bundle. The test then computes both in this process
alone and compares: the loss, every gradient after DDP's averaging, and the trained weights.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 12
REPORTS = [
    "Tubular adenoma. Low grade dysplasia in crowded glands.",
    "Invasive adenocarcinoma. Irregular glands infiltrate the wall.",
    "Benign colonic mucosa. No dysplasia seen.",
    "Chronic active gastritis. Neutrophils in the glands.",
]
N_SLIDES = 13  # 11 train (global batches 4, 4, 3: the last splits 2 + 1 over the ranks), 2 val
TRAIN_ARGS = ["--num-hidden-layers", "1", "--num-query-tokens", "4", "--epochs", "2", "--batch-size", "4",
              "--max-text-len", "16", "--max-patches", "6", "--dropout", "0", "--threads", "1",
              "--warmup-steps", "2", "--new-lr", "2e-3", "--text-view-prob", "0.5", "--device", "cpu",
              "--no-progress"]


def features(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + i)
    proto = torch.randn(len(REPORTS), WIDTH, generator=torch.Generator().manual_seed(0)) * 2
    n = 4 + i % 7  # 4..10 patches: padding differs between the ranks' batches and the global one
    return proto[i % len(REPORTS)] + 0.5 * torch.randn(n, WIDTH, generator=g)


def write_corpus(root: Path) -> tuple[Path, Path]:
    """A manifest and a feature cache (index.jsonl, encoder.json, one safetensors file per slide)."""
    from inference.features import SlideFeatures

    corpus, feats = root / "corpus", root / "features"
    corpus.mkdir(parents=True, exist_ok=True)
    feats.mkdir(parents=True, exist_ok=True)
    with open(corpus / "manifest.jsonl", "w") as m, open(feats / "index.jsonl", "w") as ix:
        for i in range(N_SLIDES):
            x = features(i)
            SlideFeatures(x, np.zeros((len(x), 2), np.int64), 224, 224, 1.0, 0.5, (1, 1)).save(feats / f"s{i}.safetensors")
            split = "val" if i >= N_SLIDES - 2 else "train"
            m.write(json.dumps({"slide": f"s{i}.svs", "report": REPORTS[i % len(REPORTS)], "split": split}) + "\n")
            ix.write(json.dumps({"slide": f"s{i}.svs", "features": f"s{i}.safetensors", "n_patches": len(x)}) + "\n")
    (feats / "encoder.json").write_text(json.dumps({"spec": {"kind": "test"}, "dim": WIDTH}))
    return corpus, feats


def one_step(ctx) -> dict:
    """Loss parts (global) and gradients (after DDP's averaging) of the first global batch of epoch 0."""
    from inference.data import GlobalBatchSampler, Stage1Collator, Stage1Dataset, feature_statistics
    from inference.train import Example, TrainConfig, build_model, seed_everything

    torch.set_num_threads(1)
    cfg = TrainConfig(num_hidden_layers=1, num_query_tokens=4, batch_size=4, max_text_len=16, max_patches=6,
                      dropout=0.0, text_view_prob=0.5, output_vocab="full", device="cpu")
    examples = [Example(features(i), REPORTS[i % len(REPORTS)]) for i in range(N_SLIDES - 2)]
    seed_everything(0)
    model, tok = build_model(cfg, WIDTH)
    shift, scale = feature_statistics(examples, ctx)
    model.feature_shift.copy_(shift)
    model.feature_scale.copy_(scale)
    net = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    sampler = GlobalBatchSampler(len(examples), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    dataset = Stage1Dataset(examples, tok, cfg.max_text_len, cfg.max_patches, cfg.text_view_prob, seed=cfg.seed)
    keys = next(iter(sampler))
    batch = Stage1Collator(tok.pad_token_id)([dataset[k] for k in keys])
    out = net(**batch, gather=ctx.gather(), generator=torch.Generator().manual_seed(7))
    out["loss"].backward()
    parts = torch.stack([out[k].detach() for k in ("loss", "itc", "itm", "itg")])
    return {"losses": (ctx.all_reduce_sum(parts) / ctx.world_size).tolist(), "rows": len(keys),
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}}


def _worker(work: Path) -> None:
    """What each torchrun process runs."""
    from inference.distributed import init_distributed
    from inference.train import main

    ctx = init_distributed("cpu")
    assert ctx.enabled and ctx.world_size == 2
    torch.save(one_step(ctx), work / f"step_rank{ctx.rank}.pt")
    corpus, feats = work / "corpus", work / "features"
    main(["--corpus", str(corpus), "--features", str(feats), "--out", str(work / "ddp_bundle"),
          "--num-workers", "1", *TRAIN_ARGS])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    from inference.bundle import load_bundle
    from inference.distributed import DistContext
    from inference.train import main

    corpus, feats = write_corpus(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), __file__, str(tmp_path)]
    log = open(tmp_path / "torchrun.log", "w+")  # noqa: SIM115 - read back below
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:  # the one-process references meanwhile
        single = one_step(DistContext())
        main(["--corpus", str(corpus), "--features", str(feats), "--out", str(tmp_path / "one_bundle"),
              "--num-workers", "0", *TRAIN_ARGS])
        rc = proc.wait(timeout=90)  # about 35 s on a busy 2-core machine
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    assert rc == 0, log.read()[-5000:]

    # (1) One step: the same loss, and DDP's averaged gradient is the one-process gradient, on both ranks.
    ranks = [torch.load(tmp_path / f"step_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["rows"] for r in ranks] == [2, 2] and single["rows"] == 4
    for r in ranks:
        np.testing.assert_allclose(r["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        assert r["grads"].keys() == single["grads"].keys()
        for name, g in single["grads"].items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")

    # (2) Two epochs of `python -m inference.train` (streamed features, uneven last batch, val on rank 0).
    cfg_ddp = json.loads((tmp_path / "ddp_bundle" / "bundle.json").read_text())
    cfg_one = json.loads((tmp_path / "one_bundle" / "bundle.json").read_text())
    epochs_ddp, epochs_one = cfg_ddp["training"]["epochs"], cfg_one["training"]["epochs"]
    assert len(epochs_ddp) == len(epochs_one) == 2
    for a, b in zip(epochs_ddp, epochs_one, strict=True):
        for split in ("train", "val"):
            assert a[split].keys() == b[split].keys()
            for k in a[split]:
                assert a[split][k] == pytest.approx(b[split][k], rel=1e-4, abs=1e-6), (split, k)
    ddp = load_bundle(tmp_path / "ddp_bundle").model.state_dict()
    one = load_bundle(tmp_path / "one_bundle").model.state_dict()
    for name, w in one.items():
        # Adam turns last-bit gradient differences of near-zero gradients into steps of up to lr (2e-3) on
        # single weights; a wrong gradient moves whole tensors by that much.
        torch.testing.assert_close(ddp[name], w, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


if __name__ == "__main__":  # under torchrun
    sys.path.insert(0, str(ROOT))
    _worker(Path(sys.argv[1]))
