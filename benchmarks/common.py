"""Shared pieces of the unlearning benchmark: settings, data, the cached original, evaluation.

Every method is scored here with the project's own metric functions
(``verify.metrics.accuracy``, ``verify.evidence.evidence_from_outputs``) on
PyTorch logits and penultimate features (the input of the classifier head).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nhle_pipeline.pipeline.config import DataConfig, TrainConfig
from nhle_pipeline.pipeline.data import Dataset, load_dataset
from nhle_pipeline.pipeline.device import seed_everything
from nhle_pipeline.pipeline.errors import DataError
from nhle_pipeline.pipeline.inference import torch_logits
from nhle_pipeline.pipeline.models import build_model, find_head
from nhle_pipeline.pipeline.train import train_classifier
from nhle_pipeline.verify.evidence import PROBE_MAX_TRAIN, evidence_from_outputs, subsample
from nhle_pipeline.verify.metrics import accuracy

NUM_CLASSES = 10  # all three benchmark datasets
EVAL_BATCH = 512
CACHE_VERSION = 1  # bump when training code changes what a cached original would be
NPZ_DATASETS = ("fashion-mnist", "cifar10")


@dataclass(frozen=True)
class Budget:
    """Compute given to the peer methods that have no natural stopping rule."""

    ft_epochs: int  # finetune: epochs over the retained set (about 20 % of the recipe)
    mix_steps: int  # random-label, salun, scrub: optimiser steps, each on the forget samples + one retained batch


# One recipe per dataset, chosen to train in minutes on 2 CPU cores (one thread).
RECIPES: dict[str, TrainConfig] = {
    "digits": TrainConfig(epochs=40, lr=0.003, batch_size=32, weight_decay=1e-4),  # = examples/digits.yaml
    "fashion-mnist": TrainConfig(epochs=10, lr=1e-3, batch_size=128),  # = examples/fashion-mnist-lenet.yaml
    "cifar10": TrainConfig(epochs=10, lr=1e-3, batch_size=128, weight_decay=1e-4),
}
BUDGETS: dict[str, Budget] = {
    "digits": Budget(ft_epochs=8, mix_steps=100),
    "fashion-mnist": Budget(ft_epochs=2, mix_steps=200),
    "cifar10": Budget(ft_epochs=2, mix_steps=200),
}
QUICK_RECIPE = TrainConfig(epochs=15, lr=0.003, batch_size=32, weight_decay=1e-4)
QUICK_BUDGET = Budget(ft_epochs=2, mix_steps=20)


def load_benchmark_data(dataset: str, data_root: str | None) -> Dataset:
    """digits (embedded) or an npz folder; ``data_root`` may be the folder or its parent."""
    if dataset == "digits":
        return load_dataset(DataConfig())
    if data_root is None:
        raise DataError(f"--data-root: needed for {dataset} (a folder with train.npz and test.npz)")
    root = Path(data_root)
    if not (root / "train.npz").is_file() and (root / dataset / "train.npz").is_file():
        root = root / dataset
    return load_dataset(DataConfig(dataset="npz", root=str(root)))


def data_fingerprint(dataset: str, data: Dataset) -> str:
    """Cheap identity of the data for the cache key: shapes and label counts."""
    parts = [dataset, str(data.train.x.shape), str(data.test.x.shape), str(np.bincount(data.train.y).tolist())]
    return "|".join(parts)


def train_fresh(arch: str, data_train, input_shape, recipe: TrainConfig, seed: int, device: torch.device) -> nn.Module:
    """A new ``arch`` trained on ``data_train`` with ``recipe``; one seed drives init and shuffling."""
    seed_everything(seed)
    model = build_model(arch, num_classes=NUM_CLASSES, input_shape=input_shape)
    return train_classifier(model, data_train, recipe, device=device, seed=seed)


def cached_original(
    cache_dir: Path, dataset: str, arch: str, data: Dataset, recipe: TrainConfig, seed: int, device: torch.device,
    trained: Path | None = None,
) -> tuple[nn.Module, dict]:
    """The original model for (dataset, model, recipe, seed): trained once, then read from safetensors.

    ``trained``: weights ``pipeline train`` wrote for this seed and recipe (``--config``),
    used instead of the cache when the file exists."""
    from nhle_pipeline.pipeline.checkpoint import load_weights, save_weights, sha256_file

    if trained is not None and trained.is_file():
        model = build_model(arch, num_classes=NUM_CLASSES, input_shape=data.input_shape)
        load_weights(model, trained)
        return model.to(device).eval(), {"path": str(trained), "cached": True, "sha256": sha256_file(trained),
                                         "from": "pipeline train"}

    key = {
        "version": CACHE_VERSION, "data": data_fingerprint(dataset, data), "arch": arch,
        "recipe": recipe.model_dump(), "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{dataset}-{arch}-seed{seed}-{digest}.safetensors"
    info = {"path": str(path), "key": key, "cached": path.is_file()}
    if path.is_file():
        model = build_model(arch, num_classes=NUM_CLASSES, input_shape=data.input_shape)
        load_weights(model, path)
        meta = path.with_suffix(".json")
        if meta.is_file():
            info["train_s"] = json.loads(meta.read_text()).get("train_s")
        return model.to(device).eval(), info
    t0 = time.perf_counter()
    model = train_fresh(arch, data.train, data.input_shape, recipe, seed, device)
    info["train_s"] = time.perf_counter() - t0
    save_weights(model, path)
    path.with_suffix(".json").write_text(json.dumps({"key": key, "train_s": info["train_s"]}, indent=1))
    return model.eval(), info


def logits_and_features(model: nn.Module, x: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> ((N, classes) logits, (N, D) penultimate features: the head's input)."""
    _, head = find_head(model, NUM_CLASSES)
    feats: list[np.ndarray] = []
    hook = head.register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach().flatten(1).cpu().numpy()))
    try:
        logits = torch_logits(model, x, EVAL_BATCH, device)
    finally:
        hook.remove()
    return logits, np.concatenate(feats).astype(np.float32)


def evaluate(model: nn.Module, data: Dataset, forget: list[int], seed: int, device: torch.device) -> dict:
    """Acc_F, Acc_R, per-class accuracy (test split) and the evidence metrics of verify/."""
    # Split.get reads just these images (Split.x would convert the whole split on every call).
    sub = subsample(len(data.train), PROBE_MAX_TRAIN, seed)
    tr_logits, tr_feats = logits_and_features(model, data.train.get(sub), device)
    te_logits, te_feats = logits_and_features(model, data.test.get(np.arange(len(data.test))), device)
    acc = accuracy(te_logits, data.test.y, forget, NUM_CLASSES)
    ev = evidence_from_outputs(
        (tr_logits, tr_feats, data.train.y[sub]), (te_logits, te_feats, data.test.y), forget, seed
    )
    return {"acc_f": acc.acc_f, "acc_r": acc.acc_r, "per_class": acc.per_class, **ev.to_dict()}


def code_version() -> str:
    """The commit, and whether the code the benchmark imports differs from it (a shared tree)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "pipeline", "verify", "benchmarks/common.py",
                                "benchmarks/methods.py", "benchmarks/unlearning.py"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in dirty.stdout.splitlines()]
    return head.stdout.strip() + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_facts(threads: int, device: torch.device) -> dict[str, str]:
    """Where the numbers were measured: they mean little without it."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "logical cores": str(os.cpu_count()),
        "torch threads": str(threads),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
        "torch": torch.__version__,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "python": platform.python_version(),
        "code": code_version(),
        "platform": platform.platform(),
    }


def budget_dict(budget: Budget) -> dict:
    return asdict(budget)
