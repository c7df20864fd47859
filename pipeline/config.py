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


class ModelConfig(_Section):
    # Registry name (mlp, lenet, cnn, vgg16, resnet18, resnet34, mobilenet_v3_large,
    # inception_v3) or an import path "package.module:factory".
    arch: str = Field(min_length=1)
    # Trained weights: .safetensors, or a torch.save() state dict (.pt/.pth).
    weights: str | None = None
    num_classes: int = Field(ge=2)
    # Dotted module name(s) of the classifier head(s): an nn.Linear or a 1x1 nn.Conv2d with
    # num_classes outputs; several when their outputs are combined (DeiT-distilled's head and
    # head_dist). CWM masks every one; the first is the one whose input the evidence reads.
    # Default: every such layer that feeds each logit on its own (found by probing the model),
    # the last of them first.
    head: str | list[str] | None = None
    # Extra keyword arguments for the architecture's builder.
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # Allow full unpickling of a checkpoint (can run arbitrary code). Only for
    # files you trust.
    trust_pickle: bool = False
    # Allow a "package.module:factory" arch (importing it runs the module's
    # code). Off: such a config is refused before anything is imported.
    trust_code: bool = False

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
    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    # Folder with the data (npz: train.npz + test.npz; imagefolder: train/ and
    # test/ with one sub-folder per class; torchvision sets: their usual root).
    root: str | None = None
    # torchvision sets only: fetch over the network if missing (off by default).
    download: bool = False
    # Inputs are float32 in [0, 1]; normalise per channel only when set.
    normalize: Normalize | None = None
    # Resize / center crop per batch (uint8 images: npz, imagefolder, torchvision sets).
    transform: TransformConfig | None = None
    # Images per onnxruntime / evaluation batch; null: 256 up to 64x64-pixel images,
    # fewer for larger ones (16 at 224 px), so the passes' memory does not grow with
    # the image size (pipeline.data.eval_batch_size).
    batch_size: int | None = Field(default=None, ge=1)
    # DataLoader worker processes that decode image files (imagefolder); 0: decode in-process.
    workers: int = Field(default=0, ge=0, le=64)
    # The name of each class id, in id order (model.num_classes of them). Default: the
    # data's own names (imagefolder: the class folders in sorted order; torchvision sets:
    # their classes; npz: a 'class_names' array in train.npz; digits: '0'..'9'). When
    # both are present they must agree.
    class_names: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(default=None, min_length=2)

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
    # Class ids (integers) or class names (strings: data.class_names or the data's own
    # names, resolved to ids when the data is loaded; the manifest records both).
    classes: list[int | Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    # Forget samples per class, from the training split (paper: 16 for one
    # class, 8 per class for several).
    samples_per_class: int = Field(default=16, ge=1)
    # "first": in dataset order (the paper's protocol); "random": seeded.
    selection: Literal["first", "random"] = "first"

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
    enabled: bool = True
    # The loss on the forget samples (pipeline/nhle.py):
    # "anchored" (default): soft-ce on the forgotten logit plus `anchor` x the
    #   mean squared change of the retained logits (the original's, on the same
    #   forget samples), relative steps, stop once half the forget samples are no longer top-1;
    # "soft-ce": PyTorch soft-target cross-entropy with y~ (gradient -y~);
    # "paper": the loss whose logit gradient is y - y~ (Eq. 2).
    variant: Literal["anchored", "soft-ce", "paper"] = "anchored"
    # Every setting below left unset takes the variant's value in NHLE_PRESETS.
    # "relative": each parameter tensor moves by lr x its own norm per step,
    # along its gradient (scale-free: one lr fits an MLP and a BatchNorm CNN);
    # "sgd": plain SGD (with momentum and grad_clip).
    optimizer: Literal["relative", "sgd"] | None = None
    lr: float | None = Field(default=None, gt=0)
    # Weight of the retained-logit anchor (0: off).
    anchor: float | None = Field(default=None, ge=0)
    max_steps: int | None = Field(default=None, ge=1)
    # Stopping rules (the losses are unbounded below: a stop is needed); the
    # loop stops at the first step where every rule that is set holds:
    # at most this fraction of forget samples still predicted as its class;
    stop_forget_acc: float | None = Field(default=None, ge=0, le=1)
    # every forget sample's forgotten logit at least this far below its best
    # retained logit.
    stop_margin: float | None = Field(default=None, ge=0)
    # every forget sample's forgotten logit this many times the original's
    # lead (mean over the forget samples of own logit - best retained logit,
    # at least 1) below its best retained logit: a margin in the model's scale.
    stop_margin_relative: float | None = Field(default=None, ge=0)
    # Opt-in retained-data mode: this many training samples of every retained
    # class (seeded random draw) join the anchor. 0 (default): forget samples
    # only. Runs that use retained samples say so in the manifest and report.
    retained_per_class: int = Field(default=0, ge=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)  # sgd only
    # Clip the global gradient norm per step (sgd only; None: no clipping).
    grad_clip: float | None = Field(default=5.0, gt=0)
    # Keep BatchNorm running statistics frozen (a 16-sample batch would
    # corrupt them).
    freeze_batchnorm: bool = True

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
    # "calibrated" (default): rows 0 and bias a margin below the lowest retained
    # logit seen on 1,024 training images, so a forgotten class is never top-1
    # and the output survives INT8/FP16 (pipeline/cwm.py); "suppress": rows 0
    # and the fixed bias suppress_bias (-1e4 makes static INT8 lose Acc_R);
    # "zero": rows and bias 0 (the paper) - its logit 0 still wins whenever
    # every other logit is negative (digits, 5 seeds: Acc_F 0.098 +/- 0.043
    # after NHLE); "none": skip CWM (ablation).
    mode: Literal["calibrated", "zero", "suppress", "none"] = "calibrated"
    suppress_bias: float = Field(default=-1.0e4, lt=0)


class ProjectionConfig(_Section):
    # Feature projection (pipeline/projection.py), before NHLE: the forgotten classes' own
    # directions removed, in closed form, from the input of every Linear and Conv2d but the
    # head, so that the features forget the class too, not only the outputs. It reads
    # `retained_per_class` seeded retained training samples per class (their class means),
    # recorded in the manifest.
    enabled: bool = False
    retained_per_class: int = Field(default=20, ge=1)
    # directions removed per layer, per forgotten class
    rank_per_class: int = Field(default=1, ge=1)
    # 1: the directions removed entirely; less: damped
    alpha: float = Field(default=1.0, gt=0, le=1)


class UnlearnConfig(_Section):
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    nhle: NHLEConfig = Field(default_factory=NHLEConfig)
    cwm: CWMConfig = Field(default_factory=CWMConfig)


# The opsets torch.onnx's exporter emits (torch.onnx._constants: 18 .. ONNX_MAX_OPSET 23
# in torch 2.14); the export stage also checks the file's opset is the one asked for.
OPSET_MIN, OPSET_MAX = 18, 23


class ExportConfig(_Section):
    opset: int = Field(default=18, ge=OPSET_MIN, le=OPSET_MAX)
    # The ONNX IR version model.onnx is written with. null (default): the exporter's own, 10
    # (onnxruntime 1.18+, Triton 24.05+); 9 or 8 rewrite the file for older servers
    # (docs/serving.md). Each carries opsets up to IR_VERSION_MAX_OPSET (9: 20, 8: 18).
    ir_version: int | None = None

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
    # Relearning (verify/relearn.py) of the unlearned and the original PyTorch
    # models in the verify stage: k = 1, 4, 16 held-out samples per forgotten
    # class, 64 SGD steps each, and retained-only drift. Off by default (cost:
    # README, "Evidence of forgetting").
    relearn: bool = False


class VerifyConfig(_Section):
    gates: GatesConfig = Field(default_factory=GatesConfig)
    # "retrain": also train a model without the forgotten classes (same recipe
    # as `train:`, needs the training split) and report the gap to it.
    reference: Literal["none", "retrain"] = "none"
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)

    @model_validator(mode="after")
    def _relearn_gate_needs_relearn(self) -> VerifyConfig:
        if self.gates.relearn_steps_min_relative is not None and not self.evidence.relearn:
            raise ValueError("verify.gates.relearn_steps_min_relative needs verify.evidence.relearn: true")
        if self.gates.require_representation and self.reference != "retrain":
            raise ValueError("verify.gates.require_representation needs verify.reference: retrain "
                             "(the representation level is judged against a retrained reference)")
        return self


class CacheConfig(_Section):
    # Reuse the original model's measurements across forget requests (keyed by
    # the weights' sha256, the data, preprocessing, evidence settings and the
    # code version); a corrupt entry is rebuilt, never trusted.
    enabled: bool = True
    # Where: default $PIPELINE_CACHE_DIR, else ~/.cache/nhle-pipeline. Also holds
    # npz members extracted for memory mapping.
    dir: str | None = None


class TritonConfig(_Section):
    """The release's Triton model repository (triton/<name>/config.pbtxt)."""

    # Where Triton places the model instances: auto (KIND_AUTO: the GPUs it sees, else
    # the CPU), gpu (KIND_GPU: refused to load where there is none), cpu (KIND_CPU).
    kind: Literal["auto", "gpu", "cpu"] = "auto"
    # The largest batch Triton accepts (and dynamic batching merges requests up to).
    max_batch_size: int = Field(default=256, ge=1, le=2**31 - 1)
    # Model instances per device (per GPU, or on the CPU): more serve concurrent requests.
    instances: int = Field(default=1, ge=1, le=64)


class ReleaseConfig(_Section):
    dir: str = "releases"
    # The Triton repository's settings (written into config.pbtxt; part of the config's sha256).
    triton: TritonConfig = Field(default_factory=TritonConfig)
    # Release folder name; default: the config file's stem.
    name: str | None = None
    # PEM elliptic-curve private key: sign the release (release.sig, OpenSSF
    # model signing) so `pipeline verify --public-key` can tell who wrote it.
    # `pipeline run --sign-key` overrides. Not part of the config's sha256 nor
    # of the manifest: which key signs is not part of the unlearning request.
    sign_key: str | None = Field(default=None, min_length=1, exclude=True)

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

    # MLflow tracking URI: a local folder (a path or file:///abs/path: MLflow's file
    # store), http(s)://host:port (a tracking server), databricks. null: nothing is
    # logged and mlflow is never imported. Set: mlflow must be installed
    # (pip install 'nhle-pipeline[tracking]'), checked before any work.
    mlflow_uri: str | None = Field(default=None, min_length=1)
    experiment: str = Field(default="nhle-pipeline", min_length=1)
    # The MLflow run's name; default: the release name.
    run_name: str | None = Field(default=None, min_length=1)

    @field_validator("experiment", "run_name")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        problem = name_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v


class TrainConfig(_Section):
    """Recipe for `pipeline train` (the original model) and the retrained reference."""

    epochs: int = Field(default=30, ge=1)
    lr: float = Field(default=1.0e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    # constant: lr throughout; onecycle: torch's OneCycleLR with lr as the peak
    # (warm-up over the first 30 % of the steps, then cosine decay to lr / 2.5e5).
    schedule: Literal["constant", "onecycle"] = "constant"
    # crop-flip: per training batch, a random crop after 4-px zero padding and a
    # horizontal flip (half the images), seeded by the config's seed.
    augment: Literal["none", "crop-flip"] = "none"
    # bf16: the forward pass under torch.autocast(<device type>, bfloat16); weights
    # and the optimizer stay float32. none: float32 throughout (exact, the default).
    autocast: Literal["none", "bf16"] = "none"
    # Images and 4-D weights in channels-last memory order while training (faster
    # convolutions on CPU with bf16 and on CUDA); the saved weights are the same layout-free tensors.
    channels_last: bool = False
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class Config(_Section):
    # numpy, torch and scikit-learn all accept 0 .. 2**32 - 1 (sklearn's random_state bound).
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    # auto: CUDA when PyTorch sees it (and onnxruntime's CUDA provider when
    # available), else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
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
        data = yaml.safe_load(text)
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
