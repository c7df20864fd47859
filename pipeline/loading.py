"""Stage 1, load: everything a run needs, validated before anything is written.

Shared by ``pipeline run``, ``pipeline train`` and ``pipeline verify``: the
device, the dataset, the model with its weights, the head, and the forget
samples. Every failure here is an InputError (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nhle_pipeline.pipeline.checkpoint import load_weights, sha256_file, weights_file
from nhle_pipeline.pipeline.config import Config
from nhle_pipeline.pipeline.cwm import check_heads_take_a_bias
from nhle_pipeline.pipeline.data import (
    Dataset,
    check_labels_fit,
    default_cache_dir,
    load_dataset,
    select_forget_indices,
    select_retained_indices,
)
from nhle_pipeline.pipeline.device import resolve_device
from nhle_pipeline.pipeline.errors import DataError, ModelError
from nhle_pipeline.pipeline.hf_folder import HF_ARCH, read_folder_config
from nhle_pipeline.pipeline.models import build_model, find_heads


@dataclass
class Loaded:
    cfg: Config  # the request, its forget.classes resolved to ids (class names -> ids)
    class_names: list[str] | None  # the name of each class id (None: the data names none)
    device: torch.device
    data: Dataset
    model: nn.Module
    head_name: str
    forget_idx: np.ndarray  # indices into data.train
    weights_sha256: str | None
    retained_idx: np.ndarray  # indices into data.train (unlearn.nhle.retained_per_class; empty by default)
    # indices into data.train: the feature projection's retained samples (empty when it is off)
    projection_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    heads: list[str] = field(default_factory=list)  # every head CWM masks, head_name first
    weights_prefix: str | None = None  # a training wrapper's key prefix removed from the checkpoint


def load_data(cfg: Config, cache_dir: Path | None = None) -> Dataset:
    """The config's dataset, streamed; npz members are extracted under ``cache_dir``
    (default: ``cache.dir``, else the user's cache folder) when compressed."""
    data = load_dataset(cfg.data, cache_dir or cache_dir_for(cfg))
    check_labels_fit(data, cfg.model.num_classes)
    return data


def class_names_for(cfg: Config, data: Dataset) -> list[str] | None:
    """The name of each class id: ``data.class_names``, else the data's own names when there
    is one per model output. Both present and different is an error (the wrong class could
    be forgotten without a sign)."""
    own = list(data.class_names) if data.class_names else None
    given = cfg.data.class_names
    if given is not None and own is not None and list(given) != own:
        raise DataError(f"data.class_names: {list(given)} differ from the data's own class names {own} (ids in order)")
    names = list(given) if given is not None else own
    return names if names is not None and len(names) == cfg.model.num_classes else None


def resolve_request(cfg: Config, data: Dataset) -> tuple[Config, list[str] | None]:
    """The config with forget.classes as ids, and the class names they were resolved with."""
    names = class_names_for(cfg, data)
    try:
        return cfg.resolve_class_names(names), names
    except ValueError as e:
        raise DataError(str(e)) from None


def check_measurable(data: Dataset, forget: list[int]) -> None:
    """The test split must hold each forgotten class and at least 2 retained samples, or
    Acc_F, Acc_R and the evidence cannot be measured: say so before any work."""
    counts = np.bincount(data.test.y, minlength=max(forget) + 1)
    missing = [c for c in forget if counts[c] == 0]
    if missing:
        raise DataError(f"forget.classes: {missing} have no test sample; Acc_F cannot be measured on this data")
    retained = int(len(data.test) - counts[forget].sum())
    if retained < 2:
        raise DataError(f"data.root: the test split has {retained} retained-class sample(s); at least 2 are needed")


def with_folder_config(cfg: Config) -> Config:
    """For ``model.arch: huggingface``, the config with the folder's config.json as
    ``model.kwargs.config``: the release's own config then rebuilds the architecture."""
    if cfg.model.arch != HF_ARCH:
        return cfg
    folder_config = read_folder_config(cfg.model.weights)
    if cfg.model.kwargs not in ({}, {"config": folder_config}):
        raise ModelError(f"model.kwargs: model.arch {HF_ARCH} takes its architecture from '{cfg.model.weights}/"
                         f"config.json'; leave model.kwargs out")
    dumped = cfg.model_dump(mode="json")
    return cfg.model_validate({**dumped, "model": {**dumped["model"], "kwargs": {"config": folder_config}}})


def cache_dir_for(cfg: Config) -> Path:
    """Where this run caches (``cache.dir``, else ``$PIPELINE_CACHE_DIR`` or ~/.cache/nhle-pipeline)."""
    return Path(cfg.cache.dir) if cfg.cache.dir else default_cache_dir()


def build_configured_model(cfg: Config, data: Dataset) -> tuple[nn.Module, str]:
    """The architecture for this config and data, untrained, and its (primary) head's name."""
    model, heads = build_configured_model_heads(cfg, data)
    return model, heads[0]


def build_configured_model_heads(cfg: Config, data: Dataset) -> tuple[nn.Module, list[str]]:
    """The architecture for this config and data, untrained, and every head CWM masks (primary first)."""
    model = build_model(  # a module:factory arch is imported only with model.trust_code
        cfg.model.arch, num_classes=cfg.model.num_classes, input_shape=data.input_shape, kwargs=cfg.model.kwargs,
        trust_code=cfg.model.trust_code,
    )
    return model, find_heads(model, cfg.model.num_classes, cfg.model.head, data.input_shape)


def load_inputs(cfg: Config, device_override: str | None = None) -> Loaded:
    """Device, data, model + weights, head and forget samples for an unlearning run."""
    device = resolve_device(device_override or cfg.device)
    if cfg.model.weights is None:
        raise ModelError("model.weights: required for 'pipeline run' (train one with 'pipeline train CONFIG')")
    data = load_data(cfg)
    cfg, class_names = resolve_request(cfg, data)
    check_measurable(data, cfg.forget_ids)
    cfg = with_folder_config(cfg)
    model, heads = build_configured_model_heads(cfg, data)
    check_heads_take_a_bias(model, heads, cfg.unlearn.cwm.mode)
    head_name = heads[0]
    prefix = load_weights(model, cfg.model.weights, trust_pickle=cfg.model.trust_pickle)
    forget_idx = select_forget_indices(
        data.train.y, cfg.forget_ids, cfg.forget.samples_per_class, cfg.forget.selection, cfg.seed
    )
    retained_idx = select_retained_indices(
        data.train.y, cfg.forget_ids, cfg.model.num_classes, cfg.unlearn.nhle.retained_per_class, cfg.seed
    )
    proj = cfg.unlearn.projection
    projection_idx = select_retained_indices(
        data.train.y, cfg.forget_ids, cfg.model.num_classes, proj.retained_per_class if proj.enabled else 0, cfg.seed
    )
    return Loaded(cfg, class_names, device, data, model.eval(), head_name, forget_idx, sha256_file(weights_file(cfg.model.weights)),
                  retained_idx, projection_idx, heads, prefix)
