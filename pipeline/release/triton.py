"""A Triton Inference Server model repository for a released ONNX model.

    <release>/triton/<model_name>/config.pbtxt
    <release>/triton/<model_name>/1/model.onnx      (a byte-identical copy)

so that ``tritonserver --model-repository <release>/triton`` serves the release
as it is. The config is written out in full, not left to Triton's
auto-complete, because auto-complete is off on some servers (``--strict-model-
config``) and because the checked-in config then states exactly what the
server will accept: names, data types and dims are read from the ONNX graph
itself, so they cannot drift from the model that ships.

The release is copied, not linked: a release folder is uploaded and moved
around as a whole, and its manifest records a checksum of every file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.export.onnx_file import external_data_locations, load_onnx
from nhle_pipeline.pipeline.config import RELEASE_NAME_PATTERN
from nhle_pipeline.pipeline.errors import InputError, ReleaseError

TRITON_DIR = "triton"
CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the ORT backend's default_model_filename
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
KIND_GPU = "KIND_GPU"
KIND_CPU = "KIND_CPU"
INSTANCE_KINDS = (KIND_GPU, KIND_CPU)
# The pipeline's default evaluation batch and the largest benchmarked batch
# (benchmarks/inference.py); dynamic batching merges requests up to this.
DEFAULT_MAX_BATCH_SIZE = 256
INSTANCE_COUNT = 1  # model instances per device; raise for concurrent small requests
DYNAMIC_DIM = -1  # Triton's "any size" for a non-batch dimension

# onnx.TensorProto element type name -> Triton DataType name (model_config.proto)
_TRITON_TYPES = {
    "FLOAT": "TYPE_FP32",
    "FLOAT16": "TYPE_FP16",
    "BFLOAT16": "TYPE_BF16",
    "DOUBLE": "TYPE_FP64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "BOOL": "TYPE_BOOL",
    "STRING": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it: dims exclude the batch dim."""

    name: str
    data_type: str  # Triton name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # e.g. (1, 8, 8) for an (batch, 1, 8, 8) input


def _tensor_spec(value, source: Path) -> TensorSpec:
    """A graph ValueInfo -> TensorSpec; the leading dim must be the dynamic batch dim."""
    import onnx

    where = f"{source}: graph tensor '{value.name}'"
    if value.type.WhichOneof("value") != "tensor_type":
        raise OnnxFileError(f"{where} is not a tensor; Triton's ONNX backend serves tensors only")
    tt = value.type.tensor_type
    type_name = onnx.TensorProto.DataType.Name(tt.elem_type)
    if type_name not in _TRITON_TYPES:
        raise OnnxFileError(f"{where} has element type {type_name}, which Triton cannot serve")
    if not tt.HasField("shape") or not tt.shape.dim:
        raise OnnxFileError(f"{where} has no shape; expected (batch, ...) with a dynamic batch dim")
    batch, *rest = tt.shape.dim
    if batch.HasField("dim_value"):
        raise OnnxFileError(
            f"{where} has a fixed leading dim {batch.dim_value}; Triton batching needs a dynamic batch dim"
        )
    dims = tuple(d.dim_value if d.HasField("dim_value") else DYNAMIC_DIM for d in rest)
    return TensorSpec(value.name, _TRITON_TYPES[type_name], dims)


def graph_signature(onnx_path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of the ONNX graph as Triton tensors (initializers are not inputs)."""
    path = Path(onnx_path)
    return _signature(load_onnx(path, weights=False), path)


def _signature(model, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    weights = {t.name for t in model.graph.initializer}
    inputs = [_tensor_spec(v, path) for v in model.graph.input if v.name not in weights]
    outputs = [_tensor_spec(v, path) for v in model.graph.output]
    return inputs, outputs


def _check_name(model_name: str) -> None:
    # Triton uses the folder name as the model name in URLs and requests.
    if not RELEASE_NAME_PATTERN.match(model_name):
        raise ReleaseError(
            f"triton model name: '{model_name}' is not a safe folder name (letters, digits, '.', '_', '-')"
        )


def _quote(text: str) -> str:
    """A protobuf text-format string literal (graph names may hold any character)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_block(section: str, specs: list[TensorSpec]) -> list[str]:
    lines = [f"{section} ["]
    for i, s in enumerate(specs):
        lines += [
            "  {",
            f"    name: {_quote(s.name)}",
            f"    data_type: {s.data_type}",
            # a (batch,) tensor: Triton needs non-empty dims, so [1] reshaped to the model's []
            *([f"    dims: [ {', '.join(map(str, s.dims))} ]"] if s.dims else ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]),
            "  }" + ("," if i < len(specs) - 1 else ""),
        ]
    return lines + ["]"]


def config_pbtxt(
    model_name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    instance_kind: str = KIND_GPU,
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig).

    Pure, so it can be checked against the official protobuf without a
    server. ``instance_kind`` is ``KIND_GPU`` (the default, what a serving
    fleet runs) or ``KIND_CPU``; the other variant is written as a comment.
    """
    _check_name(model_name)
    if max_batch_size < 1:
        raise InputError(f"max_batch_size: {max_batch_size}; expected >= 1 (the model has a dynamic batch dim)")
    if instance_kind not in INSTANCE_KINDS:
        raise InputError(f"instance_kind: '{instance_kind}'; expected one of {', '.join(INSTANCE_KINDS)}")
    if not inputs or not outputs:
        raise InputError(f"triton model '{model_name}': the graph needs at least one input and one output")
    other = KIND_CPU if instance_kind == KIND_GPU else KIND_GPU
    lines = [
        "# Triton Inference Server model configuration, written by nhle-pipeline from model.onnx.",
        "# Serve: tritonserver --model-repository <release>/triton",
        f"name: {_quote(model_name)}",
        f'platform: "{PLATFORM}"',
        "# The batch dim is implicit: dims below leave it out; -1 means any size.",
        f"max_batch_size: {max_batch_size}",
        *_tensor_block("input", inputs),
        *_tensor_block("output", outputs),
        "# Merge concurrent requests into one batch (up to max_batch_size).",
        "dynamic_batching { }",
        f"# {instance_kind}: {INSTANCE_COUNT} model instance per device. For the {other} variant use:",
        f"#   instance_group [ {{ count: {INSTANCE_COUNT}, kind: {other} }} ]",
        "instance_group [",
        "  {",
        f"    count: {INSTANCE_COUNT}",
        f"    kind: {instance_kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    release_dir: Path,
    model_name: str,
    onnx_path: Path,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    instance_kind: str = KIND_GPU,
) -> Path:
    """Write ``release_dir/triton/<model_name>/`` (config + version 1); returns the repository root.

    The root is what ``tritonserver --model-repository`` takes. An existing
    folder for the same model is replaced, so a re-export never leaves stale
    versions behind.
    """
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path, weights=False)
    inputs, outputs = _signature(model, onnx_path)
    text = config_pbtxt(
        model_name, inputs, outputs, max_batch_size=max_batch_size, instance_kind=instance_kind
    )
    root = Path(release_dir) / TRITON_DIR
    model_dir = root / model_name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True)
    shutil.copyfile(onnx_path, version_dir / MODEL_FILE)
    for name in [loc for loc in external_data_locations(model) if loc]:
        src = onnx_path.parent / name
        if not src.is_file():
            raise OnnxFileError(f"{onnx_path}: external data file '{name}' is missing")
        (version_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, version_dir / name)
    (model_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    return root
