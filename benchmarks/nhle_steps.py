"""Sweep NHLE loss variants over fixed step counts (no stopping rule) on a config.

    python -m benchmarks.nhle_steps examples/digits.yaml [--classes 0,4 --samples 8]

Prints Acc_F / ΔAcc_R (PyTorch, test split) after NHLE alone and after NHLE +
zero-CWM, for each variant and step count. The original weights must exist
(`pipeline train CONFIG`).
"""

from __future__ import annotations

import argparse
import copy

import torch

from nhle_pipeline.pipeline.config import load_config
from nhle_pipeline.pipeline.cwm import apply_cwm
from nhle_pipeline.pipeline.data import select_forget_indices
from nhle_pipeline.pipeline.inference import torch_logits
from nhle_pipeline.pipeline.loading import load_inputs
from nhle_pipeline.pipeline.models import find_head
from nhle_pipeline.pipeline.nhle import nhle_finetune
from nhle_pipeline.verify.metrics import accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--classes", default=None, help="comma-separated ids (default: the config's)")
    ap.add_argument("--samples", type=int, default=None, help="forget samples per class")
    ap.add_argument("--steps", default="1,2,3,5,8,12,20")
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args()

    cfg = load_config(args.config)
    inp = load_inputs(cfg, "cpu")
    classes = [int(c) for c in args.classes.split(",")] if args.classes else list(cfg.forget.classes)
    n = args.samples or cfg.forget.samples_per_class
    k = cfg.model.num_classes
    idx = select_forget_indices(inp.data.train.y, classes, n, "first", cfg.seed)
    xf, yf = torch.from_numpy(inp.data.train.x[idx]), torch.from_numpy(inp.data.train.y[idx])
    test, cpu = inp.data.test, torch.device("cpu")
    base = accuracy(torch_logits(inp.model, test.x, 256, cpu), test.y, classes, k)
    print(f"forget {classes}, {n} samples/class, lr {args.lr}; original Acc_F {base.acc_f:.3f} Acc_R {base.acc_r:.4f}")
    print("| variant | steps | Acc_F (NHLE) | ΔAcc_R (NHLE) | Acc_F (+zero CWM) | ΔAcc_R (+zero CWM) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant in ("paper", "soft-ce"):
        for steps in [int(s) for s in args.steps.split(",")]:
            m = copy.deepcopy(inp.model)
            nc = cfg.unlearn.nhle.model_copy(update={"max_steps": steps, "stop_forget_acc": -1.0, "variant": variant, "lr": args.lr})
            nhle_finetune(m, xf, yf, k, nc)
            a = accuracy(torch_logits(m, test.x, 256, cpu), test.y, classes, k)
            apply_cwm(find_head(m, k, inp.head_name)[1], classes, "zero", 0.0)
            b = accuracy(torch_logits(m, test.x, 256, cpu), test.y, classes, k)
            print(f"| {variant} | {steps} | {a.acc_f:.3f} | {a.acc_r - base.acc_r:+.4f} | {b.acc_f:.3f} | {b.acc_r - base.acc_r:+.4f} |")


if __name__ == "__main__":
    main()
