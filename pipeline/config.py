"""Typed run configuration, validated before any work starts.

A config is YAML; every key is checked (unknown keys are errors, at any
depth), types are strict (``"0.1"`` is not a float), and cross-field rules
(forgotten ids < ``num_classes``, no duplicates, not every class) are checked
here so that no stage ever sees an invalid request. ``load_config`` turns every
problem into one ``ConfigError`` line that names the field.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nhle_pipeline.pipeline import yamlio
from nhle_pipeline.pipeline.errors import ConfigError
from nhle_pipeline.pipeline.jsonio import MAX_NUMBER_CHARS
from nhle_pipeline.pipeline.names import name_problem
from nhle_pipeline.verify.gates import GatesConfig

DATASETS = ("digits", "npz", "imagefolder", "mnist", "fashionmnist", "svhn", "cifar10", "cifar100")
# \Z, not $: "$" also matches before a trailing newline, so "name\n" would pass a .match().
RELEASE_NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# model.kwargs is free-form YAML; it must stay plain, JSON-able data of bounded size
# (it is hashed and written to the manifest; YAML aliases can make it recursive or huge).
KWARGS_MAX_DEPTH = 16
KWARGS_MAX_VALUES = 10_000
# A wrong value is quoted in the error line, shortened (it can be a huge YAML structure).
_INPUT_REPR = reprlib.Repr()
_INPUT_REPR.maxlevel, _INPUT_REPR.maxstring, _INPUT_REPR.maxother = 2, 40, 40


def _short_repr(value: Any) -> str:
    try:
        return _INPUT_REPR.repr(value)
    except ValueError:  # an int too long to print (sys.get_int_max_str_digits())
        return f"a {type(value).__name__} too long to show"


def _not_plain_data(value: Any) -> str | None:
    """Why ``value`` is not plain YAML data (numbers, strings, booleans, null, lists, mappings), or None."""
    todo, seen = [(value, 0)], 0
    while todo:
        v, depth = todo.pop()
        seen += 1
        if seen > KWARGS_MAX_VALUES or depth > KWARGS_MAX_DEPTH:
            return f"more than {KWARGS_MAX_VALUES} values or {KWARGS_MAX_DEPTH} levels (a recursive YAML alias?)"
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                return "mapping keys must be strings"
            todo.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, depth + 1) for x in v)
        elif isinstance(v, int) and not isinstance(v, bool) and len(str(v)) > MAX_NUMBER_CHARS:
            return f"an integer {len(str(v))} characters long (at most {MAX_NUMBER_CHARS}: the manifest's JSON reader's bound)"
        elif not (v is None or isinstance(v, (bool, int, float, str))):
            return f"{type(v).__name__} values are not supported; expected numbers, strings, booleans, lists, mappings"
    return None


class _Section(BaseModel):
    """Strict base: unknown keys and lax type coercion are both errors."""

    # allow_inf_nan=False: every number in a config is finite (a NaN mean or an inf lr is an error)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def shown(default_text: str) -> dict[str, str]:
    """A field's default as the reference table shows it, where the value alone does not say
    it (``None`` that means "the variant's", "auto", "the file's stem")."""
    return {"shown_default": default_text}


class ModelConfig(_Section):
    """The trained model: its architecture, weights and head."""

    arch: str = Field(
        min_length=1, examples=["mlp"],
        description="`mlp`, `lenet`, `cnn` (small 3-block conv net for 32×32 colour), `vgg16`, `vgg16_bn`, "
        "`resnet18`, `resnet34`, `mobilenet_v3_large`, `inception_v3` (below 64 px the registry's "
        "VGG/ResNet/MobileNet get a CIFAR-style stem); `torchvision:NAME` (any torchvision classification "
        "model, `torchvision.models.get_model(NAME, weights=None, num_classes=…, **kwargs)`, 3-channel "
        "images, the library's stem as it is) or `timm:NAME` (`timm.create_model(NAME, pretrained=False, "
        "num_classes=…, in_chans=…, **kwargs)`, the `timm` extra); `huggingface` (a transformers image "
        "classifier from the `save_pretrained` folder in `model.weights`: its config.json, copied into "
        "`model.kwargs.config`, and model.safetensors; auto_map (remote code) refused; the `hf` extra) — the "
        "libraries' own builders, no code opt-in; a forward that returns a ModelOutput, a dict or a tuple is "
        "adapted to its logits (recorded as `source_model.logits_from`); or `package.module:factory` (called with `num_classes=` and `model.kwargs`; needs "
        "`model.trust_code: true`)")
    weights: str | None = Field(
        default=None, examples=["runs/digits-mlp.safetensors"], json_schema_extra=shown("—"),
        description="`.safetensors`, or a `torch.save` state dict loaded with `weights_only=True`, or a "
        "Hugging Face `save_pretrained` folder (`model.arch: huggingface`); a training wrapper's key prefix "
        "(`module.`, `model.`, `_orig_mod.`) is removed (recorded as `source_model.key_prefix`). A TorchScript "
        "file or a torch.export `.pt2` is not a model here: hand over its module's state dict")
    num_classes: int = Field(ge=2, examples=[10], description="must match the checkpoint")
    head: str | list[str] | None = Field(
        default=None, json_schema_extra=shown("auto"),
        description="dotted name, or a list of names, of the classifier head(s): an `nn.Linear` or a 1×1 "
        "`nn.Conv2d` (SqueezeNet) with `num_classes` outputs; several when their outputs are combined "
        "(DeiT-distilled's `head` and `head_dist`). CWM masks every one (same bias in each); the first is "
        "the one whose input the evidence reads. Default: the last Linear with `num_classes` outputs (a 1×1 "
        "Conv when there is none), plus every other such layer that moves each logit on its own when pushed "
        "(found by probing the built model: a hidden layer that happens to be as wide as the classes is not "
        "a head). A head without a bias takes `unlearn.cwm.mode: zero` only (the other modes set the "
        "forgotten classes' bias; refused before any work). The `output_masked` gate proves the result on the "
        "exported graph")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="builder arguments, e.g. `{hidden: [256, 128]}` for `mlp`")
    trust_pickle: bool = Field(
        default=False, description="allow full unpickling of the checkpoint (can run code); refused otherwise")
    trust_code: bool = Field(
        default=False,
        description="allow a `package.module:factory` arch (importing it runs that module's code, "
        "`torch.hub:load` included); refused otherwise, before anything is imported; "
        "`pipeline run/train --trust-code` sets it (and the manifest records it)")

    @field_validator("kwargs")
    @classmethod
    def _plain_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        problem = _not_plain_data(v)
        if problem:
            raise ValueError(problem)
        return v


class Normalize(_Section):
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    # The images are normalised in float32: each value must survive the conversion (1e-300 is 0
    # there, 1e39 infinite), and so must every normalised pixel, (x - mean) / std for x in [0, 1].
    @field_validator("mean")
    @classmethod
    def _mean_in_float32(cls, v: list[float]) -> list[float]:
        import numpy as np

        with np.errstate(over="ignore"):
            for i, m in enumerate(v):
                if not np.isfinite(np.float32(m)):
                    raise ValueError(f"mean[{i}] {m!r} is not finite in float32")
        return v

    @field_validator("std")
    @classmethod
    def _std_in_float32(cls, v: list[float], info: ValidationInfo) -> list[float]:
        import numpy as np

        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            for i, s in enumerate(v):
                s32 = np.float32(s)
                if s <= 0:
                    raise ValueError(f"std[{i}] {s!r}: expected a positive number")
                if not (np.isfinite(s32) and s32 > 0):
                    raise ValueError(f"std[{i}] {s!r} is {float(s32)!r} in float32 (the images' precision); "
                                     "expected a positive finite float32")
            mean = info.data.get("mean")
            if mean is not None and len(mean) == len(v):
                m32, s32 = np.asarray(mean, np.float32), np.asarray(v, np.float32)
                widest = np.maximum(np.abs(m32), np.abs(np.float32(1) - m32)) / s32
                for i in np.flatnonzero(~np.isfinite(widest)):
                    raise ValueError(f"std[{i}] {v[i]!r} is too small: normalised pixels overflow float32")
        return v

    @model_validator(mode="after")
    def _check(self) -> Normalize:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self


# The usual ImageNet evaluation preprocessing (torchvision's weights use it):
# shorter side to 256, center crop 224, these per-channel statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORM_PRESETS = {"imagenet": {"resize": 256, "center_crop": 224}}


class TransformConfig(_Section):
    # "imagenet": resize 256, center crop 224 and (unless data.normalize is
    # set) ImageNet's mean/std; explicit resize/center_crop override it.
    preset: Literal["imagenet"] | None = None
    # Shorter side resized to this many pixels (antialiased), aspect kept.
    resize: int | None = Field(default=None, ge=1, le=8192)
    # Square center crop of this many pixels (after resize).
    center_crop: int | None = Field(default=None, ge=1, le=8192)

    @model_validator(mode="after")
    def _something(self) -> TransformConfig:
        if self.preset is None and self.resize is None and self.center_crop is None:
            raise ValueError("set a preset, resize or center_crop (or leave data.transform out)")
        resize, crop = self.resolved_sizes()
        if resize is not None and crop is not None and crop > resize:
            raise ValueError(f"center_crop {crop} is larger than resize {resize}")
        return self

    def resolved_sizes(self) -> tuple[int | None, int | None]:
        preset = TRANSFORM_PRESETS.get(self.preset or "", {})
        return (self.resize if self.resize is not None else preset.get("resize"),
                self.center_crop if self.center_crop is not None else preset.get("center_crop"))


class DataConfig(_Section):
    """The data the model is measured on (and its forget samples drawn from)."""

    dataset: Literal[DATASETS] = Field(  # type: ignore[valid-type]
        default="digits",
        description="`digits` (embedded, scikit-learn), `npz`, `imagefolder`, `mnist`, `fashionmnist`, "
        "`svhn`, `cifar10`, `cifar100`")
    root: str | None = Field(
        default=None, json_schema_extra=shown("—"),
        description="local folder (all but digits). `npz`: `train.npz` + `test.npz` with `x` uint8 "
        "`(N,H,W)` or `(N,H,W,3)`, `y` `(N,)`; `imagefolder`: `train/<class>/…`, `test/<class>/…`; "
        "torchvision sets: their usual root")
    download: bool = Field(default=False, description="torchvision sets only; nothing is fetched otherwise")
    normalize: Normalize | None = Field(
        default=None, json_schema_extra=shown("none"),
        description="`{mean: [...], std: [...]}` per channel; inputs are float32 in [0, 1] otherwise")
    transform: TransformConfig | None = Field(
        default=None, json_schema_extra=shown("none"),
        description="per-batch resize and crop of uint8 images: `{preset: imagenet}` (shorter side 256, "
        "center crop 224, and ImageNet's mean/std unless `data.normalize` is set) or `{resize: N, "
        "center_crop: M}`; needed when image files differ in size")
    batch_size: int | None = Field(
        default=None, ge=1, json_schema_extra=shown("auto"),
        description="images per evaluation batch; auto: 256 up to 64×64 px, then fewer (a power of two "
        "with about 256 × 64 × 64 pixels; 16 at 224 px, the minimum), so memory does not grow with the "
        "image size")
    workers: int = Field(
        default=0, ge=0, le=64,
        description="DataLoader worker processes that decode image files (`imagefolder`); 0 decodes in "
        "the main process")
    class_names: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, min_length=2, json_schema_extra=shown("the data's"),
        description="the name of each class id, in id order, one per model output. Default: the data's "
        "own names: `imagefolder`: its class folders **sorted as strings** (`11` sorts before `2`, so "
        "folder `2` is id 1 when folder `11` exists: name classes to avoid mistakes), torchvision sets: "
        "their `classes`, `npz`: an optional `class_names` string array in `train.npz`, digits: `0`…`9`. "
        "Given both, they must agree. Recorded in the manifest (`class_names`), `model.onnx`'s metadata "
        "and the Triton labels file; `pipeline verify` refuses evaluation data whose names differ")

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, v: list[str] | None) -> list[str] | None:
        for name in v or ():
            problem = name_problem(name)
            if problem:
                raise ValueError(problem)
        if v is not None and len(set(v)) != len(v):
            dup = sorted({n for n in v if v.count(n) > 1})
            raise ValueError(f"duplicate class names {dup}")
        return v

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if self.dataset != "digits" and self.root is None:
            raise ValueError(f"dataset '{self.dataset}' needs data.root (a local folder)")
        return self


class ForgetConfig(_Section):
    """What to forget, and the handful of samples NHLE fine-tunes on."""

    classes: list[int | Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, examples=[[0]],
        description="classes to forget, not all: ids (integers < `num_classes`) or names (strings, see "
        "`data.class_names`), resolved to ids when the data is loaded; the manifest records the ids, the "
        "names and the resolved config")
    samples_per_class: int = Field(
        default=16, ge=1,
        description="forget samples per class from the training split (the paper: 16 for one class, 8 per "
        "class for several)")
    selection: Literal["first", "random"] = Field(
        default="first", description="`first`: dataset order (the paper's protocol); `random`: seeded")

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[int | str]) -> list[int | str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate classes in {v}")
        if any(isinstance(c, int) and c < 0 for c in v):
            raise ValueError(f"class ids must be >= 0, got {v}")
        return v


# What each NHLE variant runs with, for every setting left unset (None) in the
# config. Measured with benchmarks/unlearning.py and benchmarks/nhle_screen.py
# (README, "CWM and NHLE defaults"). "anchored" (0.5): relative steps of 0.03 %
# stopped at the paper's rule (half the forget samples no longer predicted as
# their class); 0.4 pushed on to a logit margin of 5 at 0.1 % steps, which cost
# a CIFAR-10 ResNet-18 0.038 of retained accuracy against CWM alone (0.5: 0.002).
# `stop_margin: 5` restores that push (both rules must then hold).
NHLE_PRESETS: dict[str, dict[str, Any]] = {
    "anchored": {"optimizer": "relative", "lr": 3e-4, "anchor": 3.0, "max_steps": 500,
                 "stop_forget_acc": 0.5, "stop_margin": None, "stop_margin_relative": None},
    # "anchored" with retained_per_class > 0: the retained samples hold the
    # retained logits well enough to push the forgotten logit further: 3x its
    # original lead (scale-free; a fixed margin of 20 costs CIFAR-10 0.027).
    "anchored-retained": {"optimizer": "relative", "lr": 1e-3, "anchor": 3.0, "max_steps": 300,
                          "stop_forget_acc": None, "stop_margin": None, "stop_margin_relative": 3.0},
    "soft-ce": {"optimizer": "sgd", "lr": 0.01, "anchor": 0.0, "max_steps": 100,
                "stop_forget_acc": 0.5, "stop_margin": None, "stop_margin_relative": None},
    "paper": {"optimizer": "sgd", "lr": 0.01, "anchor": 0.0, "max_steps": 100,
              "stop_forget_acc": 0.5, "stop_margin": None, "stop_margin_relative": None},
}
NHLE_PRESET_KEYS = tuple(NHLE_PRESETS["anchored"])  # the settings a preset fills (same keys in every preset)


class NHLEConfig(_Section):
    """NHLE fine-tuning on the forget samples (pipeline/nhle.py). Every setting left unset (null)
    takes its variant's value in NHLE_PRESETS."""

    enabled: bool = Field(default=True, description="run NHLE (off: CWM alone, output masking; the "
                          "`nhle_completed` gate then fails unless it is turned off)")
    variant: Literal["anchored", "soft-ce", "paper"] = Field(
        default="anchored",
        description="`anchored`: `soft-ce` plus the retained-logit anchor (below); `soft-ce`: PyTorch "
        "soft-target cross-entropy with the NHLE label (logit gradient −y~); `paper`: loss with logit "
        "gradient y − y~ (Eq. 2)")
    optimizer: Literal["relative", "sgd"] | None = Field(
        default=None, json_schema_extra=shown("variant's"),
        description="`relative`: each parameter tensor moves `lr` × its own norm per step, along its "
        "gradient (scale-free: one lr fits an MLP and a BatchNorm CNN); `sgd`: plain SGD (`momentum`, "
        "`grad_clip`). Full batch of forget samples, all parameters")
    lr: float | None = Field(
        default=None, gt=0, json_schema_extra=shown("variant's"),
        description="`anchored`: 0.0003 (relative; 0.001 before 0.5); `soft-ce`, `paper`: 0.01 (SGD)")
    anchor: float | None = Field(
        default=None, ge=0, json_schema_extra=shown("variant's"),
        description="weight of the mean squared change of the retained classes' logits on the forget "
        "samples, against the original model's; `anchored`: 3.0, others 0 (off)")
    max_steps: int | None = Field(
        default=None, ge=1, json_schema_extra=shown("variant's"),
        description="upper bound (the losses are unbounded below: a stop rule ends the loop): `anchored` "
        "500, others 100")
    stop_forget_acc: float | None = Field(
        default=None, ge=0, le=1, json_schema_extra=shown("variant's"),
        description="stop once the forget samples' accuracy is ≤ this: 0.5 for `anchored` (since 0.5), "
        "`soft-ce` and `paper`")
    stop_margin: float | None = Field(
        default=None, ge=0, json_schema_extra=shown("variant's"),
        description="stop once every forget sample's forgotten logit is this far below its best retained "
        "logit: unset in every preset (`anchored` used 5.0 before 0.5; `stop_margin: 5` restores that "
        "push). When both stop rules are set, both must hold")
    stop_margin_relative: float | None = Field(
        default=None, ge=0, json_schema_extra=shown("variant's"),
        description="the same margin in units of the original model's lead (mean over the forget samples "
        "of their own logit minus the best retained logit, at least 1): scale-free. Preset only for the "
        "retained mode (3.0)")
    retained_per_class: int = Field(
        default=0, ge=0,
        description="opt-in retained-data mode: this many training samples of every retained class "
        "(seeded random draw) join the anchor; with `anchored`, the preset then pushes on to "
        "`stop_margin_relative` 3 (`max_steps` 300, relative lr 0.001) instead of stopping at half. The "
        "manifest and report say how many retained samples were read")
    momentum: float = Field(default=0.0, ge=0, lt=1, description="`sgd` only: momentum")
    grad_clip: float | None = Field(
        default=5.0, gt=0, description="`sgd` only: global gradient-norm clip per step (`null` = off)")
    freeze_batchnorm: bool = Field(
        default=True,
        description="BatchNorm statistics (and dropout) stay in eval mode (a 16-sample batch would "
        "corrupt them)")

    def resolved(self) -> dict[str, Any]:
        """Every setting with the variant's presets filled in (what the run uses and records)."""
        out = self.model_dump()
        preset = NHLE_PRESETS[self.preset_name()]
        for key in NHLE_PRESET_KEYS:
            if out[key] is None:
                out[key] = preset[key]
        return out

    def preset_name(self) -> str:
        """The NHLE_PRESETS entry that fills the unset settings."""
        return "anchored-retained" if self.variant == "anchored" and self.retained_per_class > 0 else self.variant


class CWMConfig(_Section):
    """Class Weight Masking of the head(s) (pipeline/cwm.py)."""

    # "suppress" with -1e4 makes static INT8 lose Acc_R; "zero"'s logit 0 still wins whenever every
    # other logit is negative (digits, 5 seeds: Acc_F 0.098 +/- 0.043 after NHLE).
    mode: Literal["calibrated", "zero", "suppress", "none"] = Field(
        default="calibrated",
        description="`calibrated` (rows 0, bias a margin below the lowest retained logit the unlearned "
        "model gives on 1,024 training images: never top-1 there, and the output keeps its precision "
        "under INT8/FP16; the manifest's `metrics.cwm` records the bias and how it was chosen), "
        "`suppress` (rows 0, the fixed bias `suppress_bias`), `zero` (the paper: rows and bias 0), "
        "`none` (ablation)")
    suppress_bias: float = Field(default=-1.0e4, lt=0, description="the bias of mode `suppress`")


class ProjectionConfig(_Section):
    """Feature projection before NHLE (pipeline/projection.py): the features forget too."""

    enabled: bool = Field(
        default=False,
        description="the forgotten classes' own directions, outside the span of the retained class means, "
        "removed in closed form from the input of every Linear and ungrouped Conv2d but the head — for the "
        "features to forget too ([Evidence: levels](../explanation/evidence.md#levels-of-forgetting))")
    retained_per_class: int = Field(
        default=20, ge=1,
        description="seeded retained training samples per class whose means the projection keeps "
        "(recorded in the manifest)")
    rank_per_class: int = Field(default=1, ge=1, description="directions removed per layer, per forgotten class")
    alpha: float = Field(default=1.0, gt=0, le=1,
                         description="in (0, 1]: 1 removes the directions, less damps them")


class UnlearnConfig(_Section):
    """How the forgetting is done: projection, NHLE, CWM, in that order."""

    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    nhle: NHLEConfig = Field(default_factory=NHLEConfig)
    cwm: CWMConfig = Field(default_factory=CWMConfig)


# The opsets torch.onnx's exporter emits (torch.onnx._constants: 18 .. ONNX_MAX_OPSET 23
# in torch 2.14); the export stage also checks the file's opset is the one asked for.
OPSET_MIN, OPSET_MAX = 18, 23


class ExportConfig(_Section):
    """The ONNX file (export/)."""

    opset: int = Field(default=18, ge=OPSET_MIN, le=OPSET_MAX, description=f"{OPSET_MIN} to {OPSET_MAX}")
    # The exporter's own IR is 10 (onnxruntime 1.18+, Triton 24.05+).
    ir_version: int | None = Field(
        default=None, json_schema_extra=shown("unset (the exporter's IR 10)"),
        description="8, 9 or 10: the ONNX IR version model.onnx is written with, for older servers "
        "([Serving](../serving.md)); IR 9 carries opsets ≤ 20, IR 8 ≤ 18 (else exit 2 naming the field)")

    @field_validator("ir_version")
    @classmethod
    def _ir_carries_opset(cls, v: int | None, info: ValidationInfo) -> int | None:
        from nhle_pipeline.export.onnx_file import IR_VERSION_MAX_OPSET

        if v is None:
            return v
        if v not in IR_VERSION_MAX_OPSET:
            raise ValueError(f"{v} is not an IR version the export writes; expected one of "
                             f"{', '.join(map(str, IR_VERSION_MAX_OPSET))} (null: the exporter's own)")
        opset = info.data.get("opset")  # absent when export.opset itself is invalid
        if opset is not None and opset > IR_VERSION_MAX_OPSET[v]:
            fits = [ir for ir, top in IR_VERSION_MAX_OPSET.items() if top >= opset]
            raise ValueError(f"IR {v} carries opsets up to {IR_VERSION_MAX_OPSET[v]} (onnx's VERSION_TABLE), "
                             f"export.opset is {opset}: lower export.opset to {IR_VERSION_MAX_OPSET[v]} or set "
                             + (f"ir_version {' or '.join(map(str, fits))}" if fits else "ir_version null"))
        return v


class EvidenceConfig(_Section):
    """Evidence beyond the gates' defaults, measured in the verify stage."""

    relearn: bool = Field(
        default=False,
        description="relearning test (verify/relearn.py) of the release and the original in the verify "
        "stage: k = 1, 4, 16 held-out samples per forgotten class, 64 SGD steps each (see "
        "[Evidence](../explanation/evidence.md); seconds on the examples)")


class AuditConfig(_Section):
    """The representation audit's layers (verify/audit_layers.py); the head's input is always audited."""

    layers: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, max_length=8, json_schema_extra=shown("auto"),
        description="ONNX tensors audited layer-wise besides the head's input (LPR and CKA, pooled per "
        "image), as the manifest's `metrics.representation.layers` names them. Default: the output of the "
        "stage before the last (the input of the last downsampling Conv or pool) in a convolutional "
        "network, else the last two hidden layers. A name the graph lacks is exit 2 listing its layers")

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"duplicate layers in {v}")
        return v


class VerifyConfig(_Section):
    """The verification stage: gates, the retrained reference, optional evidence."""

    gates: GatesConfig = Field(default_factory=GatesConfig)
    reference: Literal["none", "retrain"] = Field(
        default="none",
        description="`retrain`: also train the reference without the forgotten classes (same recipe as "
        "`train`, needs the training split; costs one training run) and report the gap to it")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _relearn_gate_needs_relearn(self) -> VerifyConfig:
        if self.gates.relearn_steps_min_relative is not None and not self.evidence.relearn:
            raise ValueError("verify.gates.relearn_steps_min_relative needs verify.evidence.relearn: true")
        if self.gates.require_representation and self.reference != "retrain":
            raise ValueError("verify.gates.require_representation needs verify.reference: retrain "
                             "(the representation level is judged against a retrained reference)")
        return self


class CacheConfig(_Section):
    """The original model's measurements, reused across forget requests."""

    enabled: bool = Field(
        default=True,
        description="reuse the original model's measurements across forget requests (keyed by the "
        "weights' sha256, the data, preprocessing, evidence settings and the code version; a corrupt "
        "entry is rebuilt, never trusted; [Scale](../guides/scale.md)); `--no-cache` overrides")
    dir: str | None = Field(
        default=None, json_schema_extra=shown("`$PIPELINE_CACHE_DIR`, else `~/.cache/nhle-pipeline`"),
        description="the baseline cache (`baseline/`) and npz members extracted for memory mapping (`npz/`)")


class TritonConfig(_Section):
    """The release's Triton model repository (triton/<name>/config.pbtxt)."""

    kind: Literal["auto", "gpu", "cpu"] = Field(
        default="auto",
        description="where Triton places the model: `auto` (`KIND_AUTO`: the GPUs it sees, else the CPU), "
        "`gpu` (`KIND_GPU`: refused where there is none), `cpu` (`KIND_CPU`)")
    max_batch_size: int = Field(
        default=256, ge=1, le=2**31 - 1,
        description="the largest batch Triton accepts (a bigger request is refused with HTTP 400); "
        "dynamic batching merges requests up to it")
    instances: int = Field(
        default=1, ge=1, le=64,
        description="model instances per device (`instance_group.count`): more for many concurrent "
        "small requests")


class ReleaseConfig(_Section):
    """Where and how a release is written (only when every gate passes)."""

    dir: str = Field(default="releases", description="releases/<name>/ appears here; `--out` overrides")
    triton: TritonConfig = Field(default_factory=TritonConfig)
    name: str | None = Field(
        default=None, json_schema_extra=shown("config file stem"),
        description="the release folder's name: letters, digits, `.`, `_`, `-` only")
    # Which key signs is not part of the unlearning request: excluded from the sha256 and manifest.
    sign_key: str | None = Field(
        default=None, min_length=1, exclude=True,
        description="PEM elliptic-curve private key: sign the release (`release.sig`, OpenSSF model "
        "signing, so `pipeline verify --public-key` can tell who wrote it); `run --sign-key` overrides. "
        "Not part of the config's sha256 nor recorded in the manifest")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and not RELEASE_NAME_PATTERN.match(v):
            raise ValueError(
                f"'{v}' is not a safe folder name (letters, digits, '.', '_', '-'; "
                "no path separators, not starting with '.')"
            )
        return v


class TrackingConfig(_Section):
    """Optional MLflow experiment tracking of `pipeline run` (pipeline/tracking.py)."""

    mlflow_uri: str | None = Field(
        default=None, min_length=1,
        description="log each `pipeline run` to MLflow (see [Experiment tracking](../guides/tracking.md)): "
        "a folder or `file:///…` (MLflow's file store), `http(s)://…` (a tracking server), `databricks` "
        "(mlflow must be installed: the `tracking` extra, checked before any work); null: nothing is "
        "logged and mlflow is never imported. Not part of the config's sha256 nor recorded in the "
        "manifest (nor is the rest of `tracking`)")
    experiment: str = Field(default="nhle-pipeline", min_length=1,
                            description="the MLflow experiment (created when missing)")
    run_name: str | None = Field(default=None, min_length=1, json_schema_extra=shown("the release name"),
                                 description="the MLflow run's name")

    @field_validator("experiment", "run_name")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        problem = name_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v


class TrainConfig(_Section):
    """Recipe for `pipeline train` (the original model) and the retrained reference."""

    epochs: int = Field(default=30, ge=1, description="passes over the training split")
    lr: float = Field(default=1.0e-3, gt=0, description="learning rate (the peak with `onecycle`)")
    batch_size: int = Field(default=64, ge=1, description="images per training step")
    weight_decay: float = Field(default=0.0, ge=0, description="the optimizer's weight decay")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="`adam`, or `sgd` with momentum 0.9")
    schedule: Literal["constant", "onecycle"] = Field(
        default="constant",
        description="`onecycle`: `lr` is the peak of torch's OneCycleLR (warm-up over 30 % of the steps, "
        "then decay to lr / 2.5·10⁵)")
    augment: Literal["none", "crop-flip"] = Field(
        default="none",
        description="`crop-flip`: per batch, a random crop after 4-px zero padding and a horizontal flip, "
        "seeded by `seed`")
    autocast: Literal["none", "bf16"] = Field(
        default="none",
        description="`bf16`: the forward pass under `torch.autocast` (cpu or cuda) in bfloat16; weights "
        "and the optimizer stay float32")
    channels_last: bool = Field(
        default=False,
        description="channels-last memory order while training (faster convolutions with bf16 on CPU and "
        "on CUDA; the saved weights are unaffected)")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="cross-entropy label smoothing, in [0, 1)")


class Config(_Section):
    """A forget request: `pipeline run CONFIG` (written by `pipeline init`)."""

    # numpy, torch and scikit-learn all accept 0 .. 2**32 - 1 (sklearn's random_state bound).
    seed: int = Field(default=0, ge=0, le=2**32 - 1,
                      description="drives sampling, fine-tuning and training")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="`auto` (CUDA when PyTorch sees it, and onnxruntime's CUDA provider when available), "
        "`cpu`, `cuda` (error if absent)")
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    forget: ForgetConfig
    unlearn: UnlearnConfig = Field(default_factory=UnlearnConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # Where the run is logged is not part of the unlearning request: like release.sign_key,
    # not part of the config's sha256 nor of the manifest (a URI may carry credentials).
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, exclude=True)

    @model_validator(mode="after")
    def _classes_fit(self) -> Config:
        n = self.model.num_classes
        bad = [c for c in self.forget.classes if isinstance(c, int) and c >= n]
        if bad:
            raise ValueError(
                f"forget.classes: {bad} out of range for model.num_classes={n} (ids are 0..{n - 1})"
            )
        if len(self.forget.classes) >= n:
            raise ValueError("forget.classes: forgetting every class leaves nothing to keep")
        names = self.data.class_names
        if names is not None:
            if len(names) != n:
                raise ValueError(f"data.class_names: {len(names)} names for model.num_classes={n}")
            unknown = [c for c in self.forget.classes if isinstance(c, str) and c not in names]
            if unknown:
                raise ValueError(f"forget.classes: {unknown} are not in data.class_names")
        return self

    @property
    def forget_ids(self) -> list[int]:
        """forget.classes as ids; names must have been resolved (``resolve_class_names``)."""
        ids = self.forget.classes
        if not all(isinstance(c, int) for c in ids):
            raise TypeError(f"forget.classes {ids} holds names that were never resolved to ids")
        return list(ids)  # type: ignore[arg-type]

    def resolve_class_names(self, names: list[str] | None) -> Config:
        """This config with every class name in forget.classes replaced by its id in ``names``."""
        if all(isinstance(c, int) for c in self.forget.classes):
            return self
        if names is None:
            raise ValueError(
                "forget.classes: names need class names; this data names none (set data.class_names)"
            )
        unknown = [c for c in self.forget.classes if isinstance(c, str) and c not in names]
        if unknown:
            raise ValueError(f"forget.classes: {unknown} are not class names of this data; known: {names}")
        ids = [names.index(c) if isinstance(c, str) else c for c in self.forget.classes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"forget.classes: {self.forget.classes} name the same class twice")
        return self.model_validate({**self.model_dump(mode="json"),
                                    "forget": {**self.forget.model_dump(mode="json"), "classes": ids}})

    def sha256(self) -> str:
        """Hash of the validated config (canonical JSON), recorded in the manifest."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# pydantic names the member of a union an input failed in its error's location
# (forget.classes.0.int, ….constrained-str): not a config key, left out of the field name.
_UNION_TAGS = ("int", "str", "float", "bool", "none", "constrained-str", "constrained-int", "constrained-float")


def _problem(error: dict) -> tuple[str, str]:
    """One pydantic error as (field, expectation)."""
    loc = ".".join(str(p) for p in error["loc"]
                   if not str(p).startswith("function-") and str(p) not in _UNION_TAGS and "[" not in str(p))
    kind = error["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required field is missing"
    else:
        msg = error["msg"].removeprefix("Value error, ")
        if "input" in error and kind.endswith("_type"):
            msg += f", got {_short_repr(error['input'])}"
    return loc, msg


def validation_problems(err: ValidationError) -> list[str]:
    """Every problem of ``err`` as ``field: expectation``, in file order; one per field (a value
    that fits no member of a union reports each member's complaint once, joined with 'or')."""
    by_field: dict[str, list[str]] = {}
    for error in err.errors():
        loc, msg = _problem(error)
        msgs = by_field.setdefault(loc, [])
        if msg not in msgs:
            msgs.append(msg)
    return [f"{loc}: {' or '.join(msgs)}" if loc else " or ".join(msgs) for loc, msgs in by_field.items()]


def _format_validation_error(err: ValidationError) -> str:
    """All of ``err``'s problems on one line: the first one first, then '; '-separated."""
    problems = validation_problems(err)
    if len(problems) == 1:
        return problems[0]
    return "; ".join(problems) + f" ({len(problems)} problems)"


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate an already-parsed YAML document."""
    if data is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping of config sections")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of config sections, got {type(data).__name__}"
        )
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_validation_error(e)}") from e
    except (TypeError, ValueError, RecursionError) as e:  # pathological YAML values
        raise ConfigError(f"{source}: invalid value ({e})") from e


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; every failure is one ``ConfigError`` line."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such config file")
    if not p.is_file():
        raise ConfigError(f"{p}: not a file; expected a YAML config")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read as UTF-8 text ({e})") from e
    try:
        data = yamlio.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from e
    except (RecursionError, ValueError) as e:  # nesting deeper than the parser's stack; a 5000-digit int
        raise ConfigError(f"{p}: invalid YAML: nested too deeply or a value too large ({type(e).__name__})") from e
    return parse_config(data, str(p))


def release_name(cfg: Config, config_path: str | Path) -> str:
    """The release folder's name: ``release.name`` or the config file's stem."""
    name = cfg.release.name or Path(config_path).stem
    if not RELEASE_NAME_PATTERN.match(name):
        raise ConfigError(
            f"release.name: '{name}' (from the config file name) is not a safe folder name; set release.name"
        )
    return name
