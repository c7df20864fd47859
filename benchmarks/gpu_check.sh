#!/usr/bin/env bash
# The CUDA path in one go, for a machine with NVIDIA GPUs (about 10 minutes on one H200):
#   bash benchmarks/gpu_check.sh [DATA_ROOT]        (DATA_ROOT: folder with cifar10/{train,test}.npz)
# 1. the gpu-marked tests; 2. a digits run with NHLE on CUDA, then `pipeline verify`; with
# onnxruntime's CUDA provider (onnxruntime-gpu) both use it (--device cuda), without it they run
# with --device auto (NHLE on CUDA, onnxruntime on its CPU provider) and the steps that need the
# provider are skipped, saying so; 3. the same run under torchrun over every GPU (one rank per
# GPU, onnxruntime on its LOCAL_RANK GPU); 4. the scale benchmark's ResNet-18/CIFAR-10 case.
# Prints each step's wall time; stops at the first failure. Run from the repository root.
# PY: a Python where this project is importable (`pip install -e .`); default .venv/bin/python.
set -euo pipefail
DATA_ROOT="${1:-../shared/datasets}"
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-$(mktemp -d -t gpu-check-XXXX)}"
export PIPELINE_CACHE_DIR="$OUT/cache"
step() { local t0=$SECONDS; echo "== $1"; shift; "$@"; echo "   ($((SECONDS - t0)) s)"; }

"$PY" -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'GPU(s); ort', ort.__version__, ort.get_available_providers())"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
[ "$NGPU" -ge 1 ] || { echo "no CUDA device visible to PyTorch"; exit 1; }
if "$PY" -c "import sys, onnxruntime as ort; sys.exit(0 if 'CUDAExecutionProvider' in ort.get_available_providers() else 1)"; then
  DEV=cuda; PROVIDER=CUDAExecutionProvider
else
  DEV=auto; PROVIDER=CPUExecutionProvider
  echo "== onnxruntime has no CUDA provider (onnxruntime-gpu not installed): onnxruntime runs on its CPU provider;"
  echo "   SKIPPED: verify on CUDA, CUDA/CPU logits parity, onnxruntime on each rank's GPU"
fi

step "pytest -m gpu" "$PY" -m pytest -q -rs -m gpu tests
sed "s#runs/digits-mlp.safetensors#$OUT/digits-mlp.safetensors#" examples/digits.yaml > "$OUT/digits.yaml"
step "train digits (cuda)" "$PY" -m nhle_pipeline.pipeline train "$OUT/digits.yaml" --device cuda --force
step "run digits (--device $DEV)" "$PY" -m nhle_pipeline.pipeline run "$OUT/digits.yaml" --device "$DEV" --out "$OUT/rel" --force --no-cache
"$PY" - "$OUT/rel/digits-forget-0/manifest.json" "$PROVIDER" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print("   torch device:", m["runtime"]["torch_device"], "| onnxruntime:", m["runtime"]["onnxruntime_provider"],
      "| timings:", m["timings_s"])
assert m["runtime"]["torch_device"].startswith("cuda"), "NHLE did not run on CUDA"
assert m["runtime"]["onnxruntime_provider"] == sys.argv[2], f"onnxruntime did not run on {sys.argv[2]}"
PYEOF
step "verify (--device $DEV)" "$PY" -m nhle_pipeline.pipeline verify "$OUT/rel/digits-forget-0" --device "$DEV"
step "torchrun x$NGPU (--device $DEV)" "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" \
    -m nhle_pipeline.pipeline run "$OUT/digits.yaml" --device "$DEV" --out "$OUT/rel-dist" --force --no-cache
cmp "$OUT/rel/digits-forget-0/manifest.json" "$OUT/rel-dist/digits-forget-0/manifest.json" >/dev/null \
    || echo "   (manifests differ in timings/runtime as expected; compare metrics in the files under $OUT)"
if [ -f "$DATA_ROOT/cifar10/train.npz" ]; then
  step "scale benchmark (resnet18/cifar10, --device $DEV)" "$PY" -m benchmarks.scale --cases resnet18-cifar10 --device "$DEV" \
      --data-root "$DATA_ROOT" --work-dir "$OUT/scale" --out "$OUT/results"
else
  echo "== scale benchmark skipped: no $DATA_ROOT/cifar10/train.npz"
fi
echo "all GPU checks passed; files under $OUT"
