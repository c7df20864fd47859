"""Models whose forward returns more than logits, adapted to return the logits alone.

Hugging Face classifiers return a ModelOutput (``.logits``), others a dict or a tuple
(logits first, then auxiliary outputs). Every later stage (NHLE, CWM, export, the
evidence) takes logits: the model's class is swapped for a subclass whose forward
picks them, so its state dict, its parameters and its layer names stay the model's
own. The picker's name (``logits_from``) is recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nhle_pipeline.pipeline.errors import ModelError

# logits_from -> how the logits are taken from the forward's result
_PICKERS = {
    "output.logits": lambda out: out.logits,
    "output['logits']": lambda out: out["logits"],
    "output[0]": lambda out: out[0],
}
_CLASSES: dict[tuple[type, str], type] = {}  # one subclass per model class and picker


def picker_for(out: object) -> str | None:
    """How the logits are taken from a forward's result ``out`` (None: ``out`` is the logits);
    raises ModelError when it holds no logits tensor."""
    if isinstance(out, torch.Tensor):
        return None
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):  # transformers' ModelOutput (also a dict)
        return "output.logits"
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return "output['logits']"
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return "output[0]"
    keys = f" with keys {sorted(map(str, out))[:5]}" if isinstance(out, Mapping) else ""
    raise ModelError(f"model.arch: the model's forward returns a {type(out).__name__}{keys}; expected logits: a "
                     "tensor, a ModelOutput or dict with 'logits', or a tuple whose first item is the logits")


def adapt_to_logits(model: nn.Module, out: object) -> str | None:
    """Make ``model``'s forward return logits, given one result ``out`` of it; returns the
    picker's name (None: it returned logits already, nothing changed)."""
    how = picker_for(out)
    if how is None:
        return None
    base = type(model)
    cls = _CLASSES.get((base, how))
    if cls is None:
        pick = _PICKERS[how]

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # one input: the exporter names it
            return pick(base.forward(self, x))

        cls = type(f"{base.__name__}Logits", (base,), {"forward": forward, "nhle_logits_from": how,
                                                        "__module__": base.__module__})
        _CLASSES[(base, how)] = cls
    model.__class__ = cls
    return how


def logits_from(model: nn.Module) -> str | None:
    """The picker ``adapt_to_logits`` gave ``model`` (None: its forward returns logits)."""
    return getattr(type(model), "nhle_logits_from", None)
