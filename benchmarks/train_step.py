"""One ResNet-18 CIFAR-10 training step, side by side: fp32, bf16 autocast, bf16 + channels_last.

Measures what ``pipeline train`` runs per batch (pipeline.train: crop-flip on the
batch, forward under the recipe's autocast, cross-entropy, backward, SGD step) on
random 32x32 images at batch 128, for each variant in turn, interleaved over
several rounds so that a change in the machine's load touches every variant alike.
Prints the median seconds per step of each and its ratio to fp32, and the
implied minutes per CIFAR-10 epoch (50,000 images).

    OMP_NUM_THREADS=2 python -m benchmarks.train_step [--arch resnet18] [--batch 128] [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from nhle_pipeline.pipeline.config import TrainConfig
from nhle_pipeline.pipeline.models import build_model
from nhle_pipeline.pipeline.train import build_optimizer, crop_flip

VARIANTS = {
    "fp32": {"autocast": "none", "channels_last": False},
    "bf16": {"autocast": "bf16", "channels_last": False},
    "bf16+channels_last": {"autocast": "bf16", "channels_last": True},
}
CIFAR_TRAIN = 50_000


def make_step(arch: str, batch: int, variant: dict, device: torch.device):
    cfg = TrainConfig(optimizer="sgd", lr=0.05, weight_decay=5e-4, batch_size=batch, augment="crop-flip", **variant)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, input_shape=(3, 32, 32)).to(device).train()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = build_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def step() -> None:
        xb = crop_flip(x, gen).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each times --steps steps per variant")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    steps = {name: make_step(args.arch, args.batch, v, device) for name, v in VARIANTS.items()}
    for step in steps.values():  # warm-up: first-call allocations, oneDNN kernel selection
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
    cpu = platform.processor() or platform.machine()
    print(f"{args.arch}, batch {args.batch}, 32x32, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"{cpu}, {args.rounds} rounds x {args.steps} steps per variant, interleaved")
    base = statistics.median(times["fp32"])
    print("| variant | s / step (median) | min / max | vs fp32 | min / CIFAR-10 epoch |")
    print("| --- | --- | --- | --- | --- |")
    for name, ts in times.items():
        med = statistics.median(ts)
        epoch_min = med * CIFAR_TRAIN / args.batch / 60
        print(f"| {name} | {med:.3f} | {min(ts):.3f} / {max(ts):.3f} | {med / base:.2f}x | {epoch_min:.1f} |")


if __name__ == "__main__":
    main()
