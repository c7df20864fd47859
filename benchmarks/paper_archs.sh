#!/usr/bin/env bash
# The paper's architectures through the harness (issue #16): ResNet-18 and VGG16 (BatchNorm) on
# CIFAR-10, forget 0 and forget 0, 4, methods nhle-cwm, nhle-cwm-paper, cwm-only and retrain,
# the recipes of benchmarks/configs/cifar10-{resnet18,vgg16}.yaml.
#   bash benchmarks/paper_archs.sh [DATA_ROOT]         DATA_ROOT: parent of cifar10/{train,test}.npz
# On a CUDA machine: SEEDS=3 (default there), --device cuda; every original and retrained model is
# trained by the harness (cached under benchmarks/cache/); not yet run on a GPU.
# On a CPU: SEEDS=1; seed 0's original is the config's model.weights (`pipeline train CONFIG`,
# about 45 min per architecture on 2 cores), RELEARN=off skips the relearning attack (minutes
# per method on a ResNet-18), METHODS can drop retrain (about 45 min per run on 2 cores).
# Writes benchmarks/results/cifar10-{resnet18,vgg16_bn}-forget-{0,0-4}.{md,json}.
set -euo pipefail
DATA_ROOT="${1:-../shared/datasets}"
PY="${PY:-.venv/bin/python}"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda; SEEDS="${SEEDS:-3}"; THREADS="${THREADS:-8}"
else
  DEVICE=cpu; SEEDS="${SEEDS:-1}"; THREADS="${THREADS:-2}"
fi
METHODS="${METHODS:-nhle-cwm,nhle-cwm-paper,cwm-only,retrain}"
EXTRA=()
[ "${RELEARN:-on}" = off ] && EXTRA+=(--no-relearn)
for arch in resnet18 vgg16; do
  for forget in 0 0,4; do
    t0=$SECONDS
    echo "== $arch forget $forget ($DEVICE, $SEEDS seed(s))"
    "$PY" -m benchmarks.unlearning --dataset cifar10 --data-root "$DATA_ROOT" \
        --config "benchmarks/configs/cifar10-$arch.yaml" --forget "$forget" --seeds "$SEEDS" \
        --methods "$METHODS" --device "$DEVICE" --threads "$THREADS" "${EXTRA[@]}"
    echo "   ($((SECONDS - t0)) s)"
  done
done
