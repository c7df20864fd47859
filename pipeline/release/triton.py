"""A Triton Inference Server model repository for a released ONNX model.

    <release>/triton/<model_name>/config.pbtxt
    <release>/triton/<model_name>/1/model.onnx      (a byte-identical copy)
    <release>/triton/<model_name>/labels.txt        (class names, when known)

so that ``tritonserver --model-repository <release>/triton`` serves the release
as it is. The config is Triton's own ``ModelConfig`` protobuf message (from
``tritonclient``), written with protobuf's text format, in full, not left to
Triton's auto-complete, because auto-complete is off on some servers (``--strict-model-
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
from nhle_pipeline.pipeline.release.files import TRITON_DIR

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the ORT backend's default_model_filename
MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
LABELS_FILE = "labels.txt"  # class names, one per line (the output's label_filename)
KIND_AUTO = "KIND_AUTO"  # Triton: on the GPUs it sees, else on the CPU
KIND_GPU = "KIND_GPU"
KIND_CPU = "KIND_CPU"
INSTANCE_KINDS = (KIND_AUTO, KIND_GPU, KIND_CPU)
KINDS = {"auto": KIND_AUTO, "gpu": KIND_GPU, "cpu": KIND_CPU}  # release.triton.kind -> Triton's enum name
# The pipeline's default evaluation batch and the largest benchmarked batch
# (benchmarks/inference.py); dynamic batching merges requests up to this.
DEFAULT_MAX_BATCH_SIZE = 256
MAX_BATCH_SIZE_LIMIT = 2**31 - 1  # Triton's int32 field
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


def _tensor(section, spec: TensorSpec) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    t = section.add()
    t.name = spec.name
    t.data_type = mc.DataType.Value(spec.data_type)
    if spec.dims:
        t.dims.extend(spec.dims)
    else:  # a (batch,) tensor: Triton needs non-empty dims, so [1] reshaped to the model's []
        t.dims.append(1)
        t.reshape.SetInParent()


def model_config(
    model_name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    instance_kind: str = KIND_AUTO,
    instance_count: int = INSTANCE_COUNT,
    labels: bool = False,
):
    """Triton's ``ModelConfig`` protobuf message (``tritonclient.grpc.model_config_pb2``: the
    schema the server parses). ``labels``: the first output names ``labels.txt`` (class names)."""
    from tritonclient.grpc import model_config_pb2 as mc

    _check_name(model_name)
    if not 1 <= max_batch_size <= MAX_BATCH_SIZE_LIMIT:
        raise InputError(f"max_batch_size: {max_batch_size}; expected 1 .. {MAX_BATCH_SIZE_LIMIT} "
                         "(the model has a dynamic batch dim)")
    if instance_kind not in INSTANCE_KINDS:
        raise InputError(f"instance_kind: '{instance_kind}'; expected one of {', '.join(INSTANCE_KINDS)}")
    if instance_count < 1:
        raise InputError(f"instance_count: {instance_count}; expected >= 1")
    if not inputs or not outputs:
        raise InputError(f"triton model '{model_name}': the graph needs at least one input and one output")
    cfg = mc.ModelConfig(name=model_name, platform=PLATFORM, max_batch_size=max_batch_size)
    for spec in inputs:
        _tensor(cfg.input, spec)
    for spec in outputs:
        _tensor(cfg.output, spec)
    if labels:
        cfg.output[0].label_filename = LABELS_FILE
    cfg.dynamic_batching.SetInParent()  # merge concurrent requests up to max_batch_size
    cfg.instance_group.add(count=instance_count, kind=mc.ModelInstanceGroup.Kind.Value(instance_kind))
    return cfg


def config_pbtxt(
    model_name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    instance_kind: str = KIND_AUTO,
    instance_count: int = INSTANCE_COUNT,
    labels: bool = False,
) -> str:
    """The ``config.pbtxt`` text: :func:`model_config` written with protobuf's text format,
    after a comment header. Pure, so it can be checked without a server."""
    from google.protobuf import text_format

    cfg = model_config(model_name, inputs, outputs, max_batch_size=max_batch_size, instance_kind=instance_kind,
                       instance_count=instance_count, labels=labels)
    header = [
        "# Triton Inference Server model configuration, written by nhle-pipeline from model.onnx",
        "# (release.triton: kind, max_batch_size, instances). Serve: tritonserver --model-repository <release>/triton",
        "# The batch dim is implicit: dims leave it out; -1 means any size.",
    ]
    return "\n".join(header) + "\n" + text_format.MessageToString(cfg)


def settings_from_config(config: dict) -> dict:
    """``model_config``'s keyword arguments from a config's ``release.triton`` (a dict, as in a manifest)."""
    t = config.get("release", {}).get("triton") or {}
    return {"max_batch_size": t.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
            "instance_kind": KINDS[t.get("kind", "auto")], "instance_count": t.get("instances", INSTANCE_COUNT)}


def labels_text(class_names: list[str]) -> str:
    """``labels.txt``: one class name per line, in class-id order (Triton's label_filename)."""
    bad = [n for n in class_names if not n or "\n" in n or "\r" in n]
    if bad:
        raise ReleaseError(f"class names {bad!r}: a Triton labels file needs one non-empty line per name")
    return "".join(f"{n}\n" for n in class_names)


def write_triton_repository(
    release_dir: Path,
    model_name: str,
    onnx_path: Path,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    instance_kind: str = KIND_AUTO,
    instance_count: int = INSTANCE_COUNT,
    class_names: list[str] | None = None,
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
        model_name, inputs, outputs, max_batch_size=max_batch_size, instance_kind=instance_kind,
        instance_count=instance_count, labels=bool(class_names),
    )
    labels = labels_text(class_names) if class_names else None
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
    if labels is not None:
        (model_dir / LABELS_FILE).write_text(labels, encoding="utf-8")
    return root


def triton_config_problem(text: str, model_name: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                          config: dict, labels: bool) -> str | None:
    """Why ``text`` is not the config.pbtxt written for this graph under ``config``'s
    ``release.triton`` (None: it is). Compared as parsed ModelConfig messages, so comments
    and layout do not matter; a config without ``release.triton`` (0.3 releases) was written
    with KIND_GPU or KIND_CPU, one instance, batch 256."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        got = text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        return f"not a Triton ModelConfig ({str(e)[:200]})"
    if (config.get("release") or {}).get("triton") is None:
        expected = [model_config(model_name, inputs, outputs, instance_kind=k) for k in (KIND_GPU, KIND_CPU)]
    else:
        expected = [model_config(model_name, inputs, outputs, labels=labels, **settings_from_config(config))]
    if got not in expected:
        return "not the config written from model.onnx and release.triton (name, tensors, batching, instances)"
    return None
