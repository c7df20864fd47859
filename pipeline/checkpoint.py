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


def weights_file(path: str | Path) -> Path:
    """The file whose bytes are the weights: ``path``, or a Hugging Face folder's model.safetensors."""
    from nhle_pipeline.pipeline.hf_folder import folder_weights, is_folder

    return folder_weights(path) if is_folder(path) else Path(path)


def _read_state_dict(path: Path, trust_pickle: bool) -> Mapping[str, torch.Tensor]:
    where = f"model.weights: '{path}'"
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"{where} is not a valid safetensors file ({e})") from e
    program = program_kind(path)
    if program is not None:
        return _program_state_dict(path, program, trust_pickle)
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


# A compiled program is not a model here: its layers are compiled (no nn.Linear for CWM to mask, no
# hooks for the evidence), the ONNX exporter takes nn.Modules, and an ExportedProgram has no
# training mode for NHLE. Its weights, under the module's own key names, are what it can give.
TORCHSCRIPT = "a TorchScript program (torch.jit.save)"
EXPORTED_PROGRAM = "a torch.export program (torch.export.save, .pt2)"
NOT_A_MODEL = ("it cannot be the model itself (compiled layers: nothing for CWM to mask or NHLE to train, and "
               "the ONNX exporter takes an nn.Module): give model.arch the architecture it was made from")


def program_kind(path: Path) -> str | None:
    """Whether ``path`` is a TorchScript or torch.export archive (both zip files), by its member names."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            names = z.namelist()[:10_000]
    except (OSError, zipfile.BadZipFile):
        return None
    parts = [n.split("/", 1)[-1] for n in names]
    if any(p in ("archive_format", "models/model.json") or p.startswith("models/") for p in parts):
        return EXPORTED_PROGRAM
    if any(p.startswith("code/__torch__/") for p in parts) and "constants.pkl" in parts:
        return TORCHSCRIPT
    return None


def _program_state_dict(path: Path, kind: str, trust_pickle: bool) -> Mapping[str, torch.Tensor]:
    where = f"model.weights: '{path}' is {kind}, not a state dict"
    if not trust_pickle:
        raise ModelError(f"{where}; its loader unpickles (can run code): set model.trust_pickle: true to take its "
                         f"weights into model.arch, or re-save them as safetensors; {NOT_A_MODEL}")
    try:
        if kind == TORCHSCRIPT:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
        return dict(torch.export.load(str(path)).state_dict)
    except Exception as e:  # noqa: BLE001 - the loaders raise many types on a broken archive
        raise ModelError(f"{where}, and cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def load_weights(model: nn.Module, path: str | Path, *, trust_pickle: bool = False) -> str | None:
    """Load ``path`` into ``model``; keys and shapes must match exactly, once a training wrapper's
    prefix (``WRAPPER_PREFIXES``) common to every key is removed. Returns that prefix (None: none)."""
    p = Path(path)
    if p.is_dir():  # a Hugging Face save_pretrained folder (model.arch: huggingface)
        from nhle_pipeline.pipeline.hf_folder import load_folder_weights

        load_folder_weights(model, p)
        return None
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
