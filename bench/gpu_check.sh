#!/usr/bin/env bash
# The CUDA / bf16 paths of issue #14 on one GPU, with their throughput figures, in under 8 minutes:
#   1. encoders hold bf16 weights on CUDA; encode from pinned host memory (uint8 batches, no host sync);
#      torch.compile off vs on (ViT-S/16, ViT-L/16: patches/s on pre-decoded patches)
#   2. a DDP smoke on 1 GPU: torchrun --nproc-per-node 1 -m inference.train (NCCL, streamed features,
#      DataLoader workers, pinned batches) writes a bundle
#   3. bench/embed.py --devices cuda: slide file -> tiling -> reading -> encoder -> Q-Former for ViT-S/16,
#      ViT-B/16, ViT-L/16, ViT-H/14, with the targets (ViT-L/16 >= 3,000, ViT-S/16 >= 10,000 patches/s)
# Without CUDA it says so and exits 0. Run from the repository root: bash bench/gpu_check.sh
# Every step runs under a time limit (160 + 90 + 220 s: at most 8 minutes in all, within one 10-minute device
# command) and the script exits 1 if any failed; figures printed before a step's limit are kept in the log.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check; the CPU paths"
  echo "are covered by the tests and bench/embed.py."
  exit 0
fi
start=$(date +%s)
status=0
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name (limit ${limit} s)"
  local t0=$(date +%s)
  if timeout "$limit" "$@"; then echo "=== $name: ok in $(( $(date +%s) - t0 )) s"
  else echo "=== $name: FAILED (exit $?) after $(( $(date +%s) - t0 )) s"; status=1; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

step "bf16 weights, pinned memory, compile off/on" 160 "$PY" - <<'EOF'
import time, numpy as np, torch
from inference.encoders import build_encoder
specs = {"ViT-S/16": {"kind": "timm", "model_name": "vit_small_patch16_224", "pooling": "head",
                      "model_kwargs": {"num_classes": 0}, "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225], "input_size": 224},
         "ViT-L/16": {"preset": "uni"}}
patches = np.random.default_rng(0).integers(0, 255, (4096, 224, 224, 3), dtype=np.uint8)
for name, spec in specs.items():
    for compile in (False, True):
        enc = build_encoder(spec, device="cuda", compile=compile)
        assert enc.compute_dtype == torch.bfloat16, enc.compute_dtype
        x = torch.from_numpy(patches[:256])
        assert x.pin_memory().is_pinned()
        enc.encode_on_device(patches[:512], batch_size=256); torch.cuda.synchronize()  # warm-up / compile
        t = time.perf_counter()
        out = enc.encode_on_device(patches, batch_size=256); torch.cuda.synchronize()
        dt = time.perf_counter() - t
        assert out.shape == (len(patches), enc.dim) and torch.isfinite(out).all()
        print(f"{name} compile={compile!s:5s} bf16 weights, uint8 batches from pinned memory: "
              f"{len(patches) / dt:8.0f} patches/s (encoder alone, pre-decoded)", flush=True)
        del enc; torch.cuda.empty_cache()
EOF

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step "DDP smoke on 1 GPU (torchrun, NCCL)" 90 bash -c '
set -e
"$0" - "$1" <<EOF
import json, sys, numpy as np, torch
from pathlib import Path
from inference.features import SlideFeatures
root = Path(sys.argv[1]); (root / "corpus").mkdir(); (root / "features").mkdir()
texts = ["Tubular adenoma. Low grade.", "Adenocarcinoma. Invasive.", "Benign mucosa. Normal.", "Gastritis. Active."]
g = torch.Generator().manual_seed(0)
with open(root / "corpus/manifest.jsonl", "w") as m, open(root / "features/index.jsonl", "w") as ix:
    for i in range(64):
        x = torch.randn(200, 1024, generator=g) + i % 4
        SlideFeatures(x, np.zeros((200, 2), np.int64), 224, 224, 0.5, 0.5, (1, 1)).save(root / f"features/s{i}.safetensors")
        m.write(json.dumps({"slide": f"s{i}.svs", "report": texts[i % 4], "split": "val" if i % 8 == 0 else "train"}) + "\n")
        ix.write(json.dumps({"slide": f"s{i}.svs", "features": f"s{i}.safetensors", "n_patches": 200}) + "\n")
(root / "features/encoder.json").write_text(json.dumps({"spec": {"kind": "test"}, "dim": 1024}))
EOF
"$0" -m torch.distributed.run --nnodes 1 --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29533 \
  -m inference.train --corpus "$1/corpus" --features "$1/features" --out "$1/bundle" --device cuda \
  --epochs 2 --batch-size 16 --num-hidden-layers 2 --num-workers 2 --no-progress
test -f "$1/bundle/bundle.json"
"$0" -c "import json,sys; e=json.load(open(sys.argv[1]))[\"training\"][\"epochs\"]; print(\"epochs:\", [round(x[\"train\"][\"loss\"], 3) for x in e], \"seconds:\", [x[\"seconds\"] for x in e])" "$1/bundle/bundle.json"
' "$PY" "$work"

step "bench/embed.py on CUDA (all four encoder sizes, every tissue patch)" 220 "$PY" bench/embed.py --devices cuda

echo; echo "gpu_check: $(( $(date +%s) - start )) s in all; $([ $status = 0 ] && echo 'every step passed' || echo 'a step FAILED')"
exit $status
