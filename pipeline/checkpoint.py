"""Loading and saving model weights safely.

Weights come from safetensors, or from ``torch.load(weights_only=True)``; a
checkpoint that needs full unpickling (which can run arbitrary code) is
refused unless ``model.trust_pickle: true``. Every failure names the file and
what was expected.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.paths import folder_problem

SAFETENSORS_SUFFIX = ".safetensors"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_state_dict(path: Path, trust_pickle: bool) -> Mapping[str, torch.Tensor]:
    where = f"model.weights: '{path}'"
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{where} is not a valid safetensors file ({e})") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise ModelError(f"{where} cannot be unpickled ({str(e).splitlines()[0]})") from e
        raise ModelError(
            f"{where} needs full unpickling, which can run arbitrary code; re-save it as a state dict "
            "or safetensors, or set model.trust_pickle: true if you trust the file"
        ) from e
    except Exception as e:  # torch.load raises many types on junk (IndexError, EOFError, ...)
        raise ModelError(f"{where} is not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from e
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{where} holds a {type(obj).__name__}, expected a state dict of tensors")
    return obj


def load_weights(model: nn.Module, path: str | Path, *, trust_pickle: bool = False) -> str | None:
    """Load ``path`` into ``model``; keys and shapes must match exactly, once a training wrapper's
    prefix (``WRAPPER_PREFIXES``) common to every key is removed. Returns that prefix (None: none)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model.weights: no such file '{p}'")
    if p.stat().st_size == 0:
        raise ModelError(f"model.weights: '{p}' is empty")
    state = dict(_read_state_dict(p, trust_pickle))
    own = model.state_dict()
    state, prefix = strip_wrapper_prefix(state, set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        raise ModelError(
            f"model.weights: '{p}' does not fit model.arch ({'; '.join(detail)})"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelError(
                f"model.weights: '{p}' does not fit the model: '{k}' has shape {tuple(state[k].shape)}, "
                f"expected {tuple(v.shape)} (check model.arch and model.num_classes)"
            )
        t = state[k]
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"model.weights: '{p}': tensor '{k}' holds NaN or inf values")
    model.load_state_dict(state)
    return prefix


# What training wrappers put before every key: DistributedDataParallel / DataParallel
# ("module."), Lightning modules and timm's EMA ("model."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def strip_wrapper_prefix(state: dict, keys: set[str]) -> tuple[dict, str | None]:
    """``state`` with a wrapper's prefix removed from every key, when every key has it and the
    stripped keys are the model's (else unchanged); and the prefix removed (None: none)."""
    if set(state) == keys:
        return state, None
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) == keys:
                return stripped, prefix
    return state, None


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s state dict as safetensors (atomically: temp file, then rename)."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != SAFETENSORS_SUFFIX:
        raise ModelError(f"model.weights: '{p}' must end in {SAFETENSORS_SUFFIX} to be written by 'pipeline train'")
    check_weights_target(p)
    tmp = p.with_name(f".{p.name}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(tmp))
        tmp.replace(p)
    except OSError as e:  # os.access() can say yes (root, read-only mounts) where writing says no
        tmp.unlink(missing_ok=True)
        raise ModelError(f"model.weights: cannot write '{p}' ({e.strerror or e})") from e


def check_weights_target(path: str | Path) -> None:
    """Fail before training when ``path``'s folder cannot exist: a file in the way, or not writable."""
    problem = folder_problem(Path(path).parent)
    if problem:
        raise ModelError(f"model.weights: {problem}")
