"""Supervised training: the original model (`pipeline train`) and the retrained reference.

The recipe is the config's ``train:`` section: optimizer, learning-rate schedule
(constant or one-cycle), per-batch augmentation (random crop with 4-px padding
and horizontal flip, seeded), bf16 autocast and channels-last memory order.
Defaults are float32, no augmentation, constant rate: exact and reproducible.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nhle_pipeline.pipeline.config import TrainConfig
from nhle_pipeline.pipeline.data import Split

EpochCallback = Callable[[int, int, float], None]  # (epoch, epochs, mean loss)

CROP_PADDING = 4  # pixels of zero padding around each image before the random crop
ONECYCLE_PCT_START = 0.3  # share of the steps spent warming up to the peak rate
# The augmentation stream is seeded apart from the shuffling one, so turning
# augmentation on leaves the order of the batches unchanged.
_AUGMENT_SEED_OFFSET = 0x9E3779B9


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``n`` samples (a trailing 1-sample batch is skipped)."""
    sizes = (min(batch_size, n - i) for i in range(0, n, batch_size))
    return sum(1 for k in sizes if k >= 2 or n == 1)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """The learning-rate schedule stepped once per optimizer step, or None (constant)."""
    if cfg.schedule == "constant" or total_steps < 1:
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=ONECYCLE_PCT_START
    )


def crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """A random ``H x W`` crop of each zero-padded image, mirrored left-right with probability 1/2.

    ``x`` is (N, C, H, W); the offsets and flips are drawn from ``gen`` (CPU), so the
    result depends only on the generator's state, whatever the device of ``x``.
    """
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = dy[:, None] + torch.arange(h)  # (N, H) rows of the padded image
    cols = dx[:, None] + torch.arange(w)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = x.device
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows.to(dev)[:, None, :, None],
        cols.to(dev)[:, None, None, :],
    ]


class TrainState:
    """A training run's resumable state in one file (``pipeline train`` writes it beside the
    weights every ``every_s`` seconds and at each epoch's end): the model, optimizer and
    schedule, the shuffling and augmentation generators, and the position in the epoch. A
    run that resumes from it ends with the same weights as one never interrupted.

    The file is this tool's own, read with ``torch.load(weights_only=True)`` (tensors and
    plain containers only: loading it runs no code); ``fingerprint`` ties it to one recipe,
    architecture, data and seed, so a changed config starts afresh instead of resuming."""

    def __init__(self, path: Path, fingerprint: str, every_s: float = 600.0) -> None:
        self.path, self.fingerprint, self.every_s = Path(path), fingerprint, every_s
        self._last = time.monotonic()

    def load(self) -> dict | None:
        """The saved state when it belongs to this run, else None."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or foreign file: start afresh (it is overwritten)
            return None
        return state if isinstance(state, dict) and state.get("fingerprint") == self.fingerprint else None

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, state: dict) -> None:
        """Written to a temporary file, then renamed: a kill mid-write keeps the previous state."""
        from nhle_pipeline.pipeline.errors import ModelError

        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # a full disk: the CLI's own one line and exit code
            # os.access() can say yes (root, read-only mounts) where writing says no
            raise ModelError(f"model.weights: cannot write the training state '{self.path}' ({e.strerror or e})") from e
        self._last = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def train_classifier(
    model: nn.Module,
    data: Split,
    cfg: TrainConfig,
    *,
    device: torch.device,
    seed: int,
    on_epoch: EpochCallback | None = None,
    state: TrainState | None = None,
    on_resume: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """Train ``model`` on ``data`` with cross-entropy under ``cfg``'s recipe.

    Shuffling and augmentation are seeded by ``seed``. The model comes back in eval
    mode and in the default (contiguous) memory format, whatever ``cfg.channels_last``.
    ``state``: save the run's state as it goes and resume from a saved one
    (``on_resume(epoch, step)`` says where).
    """
    model.to(device).train()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    n = len(data)
    sched = build_scheduler(opt, cfg, cfg.epochs * steps_per_epoch(n, cfg.batch_size))
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + _AUGMENT_SEED_OFFSET)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")
    first_epoch, first_batch, carried = 0, 0, (0.0, 0)
    saved = state.load() if state is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if sched is not None:
            sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["shuffle"])
        aug_gen.set_state(saved["augment"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:  # dropout draws on the GPU
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        first_epoch, first_batch = int(saved["epoch"]), int(saved["batch"])
        carried = (float(saved["loss_total"]), int(saved["loss_count"]))
        if on_resume is not None:
            on_resume(first_epoch + 1, first_batch)

    def snapshot(epoch: int, batch: int, epoch_start, total: float, count: int) -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "shuffle": epoch_start, "augment": aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "epoch": epoch, "batch": batch, "loss_total": total, "loss_count": count}

    try:
        for epoch in range(first_epoch, cfg.epochs):
            epoch_start = gen.get_state()  # the order is drawn from here: a resume redraws it
            order = torch.randperm(n, generator=gen).numpy()
            skip = first_batch if epoch == first_epoch else 0
            total, count = carried if epoch == first_epoch else (0.0, 0)
            for b, (x, y) in enumerate(data.batches(order[skip * cfg.batch_size:], cfg.batch_size), start=skip):
                if len(y) < 2 and n > 1:  # a 1-sample batch breaks BatchNorm
                    continue
                xb, yb = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
                if cfg.augment == "crop-flip":
                    xb = crop_flip(xb, aug_gen)
                if xb.ndim == 4:
                    xb = xb.contiguous(memory_format=memory_format)
                with autocast:
                    logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
                if state is not None and state.due():
                    state.save(snapshot(epoch, b + 1, epoch_start, total, count))
            if state is not None:
                state.save(snapshot(epoch + 1, 0, gen.get_state(), 0.0, 0))
            if on_epoch is not None:
                on_epoch(epoch + 1, cfg.epochs, total / max(count, 1))
    finally:
        if cfg.channels_last:
            model.to(memory_format=torch.contiguous_format)
    model.eval()
    return model


def retained_only(data: Split, forget_classes: list[int]) -> Split:
    """The split without the forgotten classes (the retrained reference's data)."""
    return data.subset(np.flatnonzero(~np.isin(data.y, forget_classes)))


STATE_SUFFIX = ".train-state.pt"  # beside model.weights while `pipeline train` runs


def training_fingerprint(cfg) -> str:
    """What a saved training state must have been made with: the recipe, the architecture,
    the data and the seed (not the forget request, the release or the verify settings)."""
    import hashlib
    import json

    parts = {"train": cfg.train.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
             "data": cfg.data.model_dump(mode="json"), "seed": cfg.seed}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def train_original(cfg, *, device: str | None = None, force: bool = False, on_epoch: EpochCallback | None = None,
                   on_resume: Callable[[int, int], None] | None = None, state_every_s: float = 600.0):
    """`pipeline train`: train the config's architecture on its data and save model.weights.

    Returns ``(path, test_accuracy)``. Refuses to overwrite existing weights without ``force``.
    The run's state is kept in ``<weights>.train-state.pt`` (every ``state_every_s`` seconds
    and at each epoch's end): a run stopped by Ctrl-C, SIGTERM, SIGKILL or a crash continues
    from it when started again with the same config, to the same weights; it is removed once
    the weights are saved.
    """
    from pathlib import Path

    from nhle_pipeline.pipeline.checkpoint import (
        SAFETENSORS_SUFFIX,
        check_weights_target,
        save_weights,
    )
    from nhle_pipeline.pipeline.data import eval_batch_size
    from nhle_pipeline.pipeline.device import resolve_device, seed_everything
    from nhle_pipeline.pipeline.errors import ModelError
    from nhle_pipeline.pipeline.inference import torch_accuracy
    from nhle_pipeline.pipeline.loading import build_configured_model, load_data

    if cfg.model.weights is None:
        raise ModelError("model.weights: required; 'pipeline train' writes the trained weights there")
    path = Path(cfg.model.weights)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise ModelError(f"model.weights: '{path}' must end in {SAFETENSORS_SUFFIX} to be written by 'pipeline train'")
    if path.exists() and not force:
        raise ModelError(f"model.weights: '{path}' already exists; use --force to retrain and replace it")
    if path.exists() and path.is_dir():
        raise ModelError(f"model.weights: '{path}' is a folder")
    check_weights_target(path)
    dev = resolve_device(device or cfg.device)
    data = load_data(cfg)
    seed_everything(cfg.seed)
    model, _ = build_configured_model(cfg, data)
    state = TrainState(path.with_name(path.name + STATE_SUFFIX), training_fingerprint(cfg), state_every_s)
    train_classifier(model, data.train, cfg.train, device=dev, seed=cfg.seed, on_epoch=on_epoch, state=state,
                     on_resume=on_resume)
    acc = torch_accuracy(model, data.test, eval_batch_size(cfg.data, data.input_shape), dev)
    save_weights(model.to("cpu"), path)
    state.remove()
    return path, acc
