#!/usr/bin/env bash
# The paper's architectures through the harness (issue #16): ResNet-18 and VGG16 (BatchNorm) on
# CIFAR-10, forget 0 and forget 0, 4, methods nhle-cwm, nhle-cwm-paper, cwm-only and retrain,
# the recipes of benchmarks/configs/cifar10-{resnet18,vgg16}.yaml, with the relearning attack.
#   bash benchmarks/paper_archs.sh [DATA_ROOT]         DATA_ROOT: parent of cifar10/{train,test}.npz
# Environment: ARCHS ("resnet18 vgg16"), FORGETS ("0 0,4"), SEEDS, METHODS, RELEARN (on|off),
# RESULTS (the results folder), PY (the Python with this project importable; .venv/bin/python).
# On a CUDA machine: SEEDS=3, --device cuda, RESULTS=benchmarks/results/gpu; every original and
# retrained model is trained by the harness (cached under benchmarks/cache/). Measured on one
# H200 (benchmarks/results/gpu/README.md): one seed of all four settings in 6.3 min (each
# training 25-34 s); three seeds of one architecture (both requests) take about 8-9 min, so
# where a command may run 10 minutes, run one architecture per command: ARCHS=resnet18, then
# ARCHS=vgg16 (the cache keeps the originals between them on the same machine). Every finished
# seed is kept under benchmarks/cache/seeds/ and the harness runs with --resume: run the same
# command again after a cut and it goes on from the seed it lost.
# On a CPU: SEEDS=1, RESULTS=benchmarks/results; seed 0's original is the config's model.weights
# (`pipeline train CONFIG`, about 45 min per architecture on 2 cores), RELEARN=off skips the
# relearning attack (minutes per method on a ResNet-18), METHODS can drop retrain (about 45 min
# per run on 2 cores).
set -euo pipefail
DATA_ROOT="${1:-../shared/datasets}"
PY="${PY:-.venv/bin/python}"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda; SEEDS="${SEEDS:-3}"; THREADS="${THREADS:-8}"; RESULTS="${RESULTS:-benchmarks/results/gpu}"
else
  DEVICE=cpu; SEEDS="${SEEDS:-1}"; THREADS="${THREADS:-2}"; RESULTS="${RESULTS:-benchmarks/results}"
fi
METHODS="${METHODS:-nhle-cwm,nhle-cwm-paper,cwm-only,retrain}"
EXTRA=()
[ "${RELEARN:-on}" = off ] && EXTRA+=(--no-relearn)
for arch in ${ARCHS:-resnet18 vgg16}; do
  for forget in ${FORGETS:-0 0,4}; do
    t0=$SECONDS
    echo "== $arch forget $forget ($DEVICE, $SEEDS seed(s)) -> $RESULTS"
    "$PY" -m benchmarks.unlearning --dataset cifar10 --data-root "$DATA_ROOT" \
        --config "benchmarks/configs/cifar10-$arch.yaml" --forget "$forget" --seeds "$SEEDS" \
        --methods "$METHODS" --device "$DEVICE" --threads "$THREADS" --out "$RESULTS" --resume "${EXTRA[@]}"
    echo "   ($((SECONDS - t0)) s)"
  done
done
