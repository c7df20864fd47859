"""A Hugging Face image classifier from a local ``save_pretrained`` folder (``model.arch: huggingface``).

The folder is ``model.weights``: its ``config.json`` names the architecture and
``model.safetensors`` holds the weights. transformers' own classes build it
(``AutoModelForImageClassification``'s mapping, from the config's ``model_type``);
remote code never runs: a config with ``auto_map`` is refused, and nothing is
fetched (``local_files_only``). The weights load through transformers'
``from_pretrained``, which maps the saved key names to the model's.

A run copies the config into ``model.kwargs.config``, so that the release's own
config rebuilds the architecture (verify's fresh export, ``--source-weights``)
without the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from nhle_pipeline.pipeline.errors import ModelError

HF_ARCH = "huggingface"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_MAX_BYTES = 1 << 20  # an image classifier's config.json is a few KB (id2label included)
_INSTALL = "pip install 'nhle-pipeline[hf]'"


def is_folder(path: str | Path) -> bool:
    return Path(path).is_dir()


def folder_weights(folder: str | Path) -> Path:
    """The folder's weights file; a folder without one gets a line saying what it holds instead."""
    folder = Path(folder)
    f = folder / WEIGHTS_FILE
    if f.is_file():
        return f
    if (folder / f"{WEIGHTS_FILE}.index.json").is_file():
        raise ModelError(f"model.weights: '{folder}' holds sharded weights ({WEIGHTS_FILE}.index.json); re-save it "
                         "in one file: save_pretrained(folder, max_shard_size='100GB')")
    if (folder / "pytorch_model.bin").is_file():
        raise ModelError(f"model.weights: '{folder}' holds pytorch_model.bin (a pickle, which can run code); "
                         f"re-save it as {WEIGHTS_FILE}: save_pretrained(folder, safe_serialization=True)")
    raise ModelError(f"model.weights: '{folder}' has no {WEIGHTS_FILE} (a Hugging Face save_pretrained folder)")


def read_folder_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` as plain data, checked: an object naming a ``model_type``, no remote code."""
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise ModelError(f"model.weights: model.arch {HF_ARCH} needs a save_pretrained folder; '{folder}' is not one")
    if not path.is_file():
        raise ModelError(f"model.weights: '{path}' not found (a Hugging Face save_pretrained folder has one)")
    if path.stat().st_size > CONFIG_MAX_BYTES:
        raise ModelError(f"model.weights: '{path}' is over {CONFIG_MAX_BYTES} bytes; not a model config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model.weights: '{path}' is not readable JSON ({e})") from e
    check_config(config, str(path))
    return config


def check_config(config: object, where: str) -> None:
    if not isinstance(config, dict):
        raise ModelError(f"{where}: expected a JSON object, got {type(config).__name__}")
    if "auto_map" in config:
        raise ModelError(f"{where}: has auto_map (the model's own code, trust_remote_code); only transformers' "
                         "built-in architectures are loaded")
    if not isinstance(config.get("model_type"), str):
        raise ModelError(f"{where}: names no model_type")


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ModelError(f"model.arch: {HF_ARCH} needs transformers ({_INSTALL})") from e
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def build_from_config(config: object, num_classes: int) -> nn.Module:
    """transformers' image classifier for ``config`` (config.json's content), random weights."""
    check_config(config, f"model.kwargs.config ({CONFIG_FILE})")
    tf = _transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    fields = dict(config)  # type: ignore[call-overload]
    model_type = fields.pop("model_type")
    try:
        conf = tf.AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError, KeyError) as e:
        raise ModelError(f"model.arch: transformers {tf.__version__} cannot read a config of model_type "
                         f"'{model_type}' ({str(e).splitlines()[0]})") from e
    cls = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING.get(type(conf), None)
    if cls is None:
        raise ModelError(f"model.arch: model_type '{model_type}' is not an image classifier in transformers "
                         f"{tf.__version__} (AutoModelForImageClassification has none for it)")
    if conf.num_labels != num_classes:
        raise ModelError(f"model.num_classes: {num_classes}, but {CONFIG_FILE} has {conf.num_labels} labels")
    return cls(conf)


def load_folder_weights(model: nn.Module, folder: str | Path) -> None:
    """Load the folder's ``model.safetensors`` into ``model`` (built from the same config) through
    transformers' own loader; every tensor must be found and fit."""
    import torch

    folder = Path(folder)
    folder_weights(folder)
    tf = _transformers()
    if not isinstance(model, tf.PreTrainedModel):
        raise ModelError(f"model.weights: '{folder}' is a folder; only model.arch {HF_ARCH} loads one")
    try:
        loaded, info = type(model).from_pretrained(
            str(folder), config=model.config, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            output_loading_info=True, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - the loader raises many types (SafetensorError, OSError, ...) on junk
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"model.weights: '{folder}' cannot be loaded ({type(e).__name__}: {first})") from e
    problems = [f"{k.replace('_', ' ')} {sorted(info[k])[:3]}" for k in ("missing_keys", "unexpected_keys",
                                                                        "mismatched_keys") if info.get(k)]
    if problems:
        raise ModelError(f"model.weights: '{folder}/{WEIGHTS_FILE}' does not fit its {CONFIG_FILE} "
                         f"({'; '.join(problems)})")
    state = loaded.state_dict()
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"model.weights: '{folder}/{WEIGHTS_FILE}': tensor '{k}' holds NaN or inf values")
    model.load_state_dict(state)
