"""Shared pieces of the unlearning benchmark: settings, data, the cached original, evaluation.

Every method is scored here with the project's own metric functions
(``verify.metrics.accuracy``, ``verify.evidence.evidence_from_outputs``) on
PyTorch logits and penultimate features (the input of the classifier head),
and with the representation audit's (``verify.representation``: linear-probe
recovery, linear CKA) at two layers: the head's input and the output of the
model's last stage before it (``stage_layer``).
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
from nhle_pipeline.verify.representation import linear_probe_recovery

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


# The two layers of the representation columns: the head's input, and the output of the
# model's last stage before the head's input (``stage_layer``).
LAYERS = ("head", "stage")


def stage_layer(model: nn.Module, num_classes: int = NUM_CLASSES) -> tuple[str, nn.Module, str]:
    """The model's last stage before the head's input: (description, module, "output" or "input").

    ResNet: ``layer3``'s output; a conv net with a ``features`` stack (LeNet, the cnn, VGG): the
    last conv block's output (the last module of ``features`` before its Flatten); an MLP: the
    input of the last hidden Linear (the previous hidden layer's output). 4-D outputs are
    globally average-pooled (``stage_features``)."""
    mods = dict(model.named_modules())
    if isinstance(mods.get("layer3"), nn.Module) and "layer4" in mods:
        return "layer3 output, global average pool", mods["layer3"], "output"
    features = mods.get("features")
    if isinstance(features, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in features.modules()):
        blocks = [(n, m) for n, m in features.named_children() if not isinstance(m, nn.Flatten)]
        name, module = blocks[-1]
        return f"features.{name} output (last conv block), global average pool", module, "output"
    head_name, _ = find_head(model, num_classes)
    linears = [(n, m) for n, m in mods.items() if isinstance(m, nn.Linear) and n != head_name]
    if not linears:
        raise ValueError("no stage before the head: the model has no hidden Linear or conv stack")
    name, module = linears[-1]
    return f"{name} input (previous hidden layer)", module, "input"


def _pooled(t: torch.Tensor, pool: bool = True) -> np.ndarray:
    t = t.detach()
    if pool and t.ndim == 4:
        t = t.mean(dim=(2, 3))  # global average pool
    return t.flatten(1).float().cpu().numpy()


def logits_and_layers(model: nn.Module, x: np.ndarray, device: torch.device,
                      stage: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, C, H, W) -> ((N, classes) logits, {"head": (N, D) the head's input, "stage": (N, D')
    the last stage's output, pooled}) from forward hooks in one pass."""
    _, head = find_head(model, NUM_CLASSES)
    feats: dict[str, list[np.ndarray]] = {"head": []}
    hooks = [head.register_forward_pre_hook(lambda _m, args: feats["head"].append(_pooled(args[0], pool=False)))]
    if stage:
        feats["stage"] = []
        _, module, where = stage_layer(model)
        if where == "input":
            hooks.append(module.register_forward_pre_hook(lambda _m, args: feats["stage"].append(_pooled(args[0]))))
        else:
            hooks.append(module.register_forward_hook(lambda _m, _a, out: feats["stage"].append(_pooled(out))))
    try:
        logits = torch_logits(model, x, EVAL_BATCH, device)
    finally:
        for h in hooks:
            h.remove()
    return logits, {k: np.concatenate(v).astype(np.float32) for k, v in feats.items()}


def logits_and_features(model: nn.Module, x: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W) -> ((N, classes) logits, (N, D) penultimate features: the head's input)."""
    logits, feats = logits_and_layers(model, x, device, stage=False)
    return logits, feats["head"]


def evaluate_with_features(model: nn.Module, data: Dataset, forget: list[int], seed: int,
                           device: torch.device) -> tuple[dict, dict[str, np.ndarray]]:
    """``evaluate``'s metrics, with the linear-probe recovery at both ``LAYERS`` (``lpr_f``,
    ``lpr_r``: the head's input; ``lpr_f_stage``, ``lpr_r_stage``: the last stage's output), and
    the test-split features of both layers (for CKA against other models on the same images)."""
    # Split.get reads just these images (Split.x would convert the whole split on every call).
    sub = subsample(len(data.train), PROBE_MAX_TRAIN, seed)
    tr_logits, tr_feats = logits_and_layers(model, data.train.get(sub), device)
    te_logits, te_feats = logits_and_layers(model, data.test.get(np.arange(len(data.test))), device)
    acc = accuracy(te_logits, data.test.y, forget, NUM_CLASSES)
    ev = evidence_from_outputs(
        (tr_logits, tr_feats["head"], data.train.y[sub]), (te_logits, te_feats["head"], data.test.y), forget, seed
    )
    out = {"acc_f": acc.acc_f, "acc_r": acc.acc_r, "per_class": acc.per_class, **ev.to_dict()}
    for layer in LAYERS:
        suffix = "" if layer == "head" else f"_{layer}"
        lpr_f, lpr_r = linear_probe_recovery(tr_feats[layer], data.train.y[sub], te_feats[layer], data.test.y,
                                             forget, seed)
        out[f"lpr_f{suffix}"], out[f"lpr_r{suffix}"] = lpr_f, lpr_r
    return out, te_feats


def evaluate(model: nn.Module, data: Dataset, forget: list[int], seed: int, device: torch.device) -> dict:
    """Acc_F, Acc_R, per-class accuracy (test split), the evidence metrics of verify/ and the
    linear-probe recovery at both ``LAYERS``."""
    return evaluate_with_features(model, data, forget, seed, device)[0]


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
