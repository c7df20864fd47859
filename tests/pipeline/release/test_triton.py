"""pipeline/release/triton.py: config.pbtxt checked with Triton's own ModelConfig protobuf.

The config is parsed by ``tritonclient.grpc.model_config_pb2`` (what the server
parses), and every field is compared with the ONNX graph it was read from.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.errors import InputError, OnnxFileError, ReleaseError
from nhle_pipeline.pipeline.release.manifest import file_digests
from nhle_pipeline.pipeline.release.triton import (
    DEFAULT_MAX_BATCH_SIZE,
    KIND_CPU,
    KIND_GPU,
    TensorSpec,
    config_pbtxt,
    graph_signature,
    triton_config_problem,
    write_triton_repository,
)

# ONNX element type -> the Triton enum the server must see
ONNX_TO_TRITON = {TensorProto.FLOAT: mc.TYPE_FP32, TensorProto.FLOAT16: mc.TYPE_FP16, TensorProto.INT64: mc.TYPE_INT64}


def tiny_classifier(path, *, shape=("batch", 3, 4, 5), classes=7, external=False):
    """(batch, 3, 4, 5) float32 'input' -> Flatten -> Gemm -> (batch, 7) 'logits', saved to ``path``."""
    features = int(np.prod(shape[1:]))
    w = numpy_helper.from_array(np.arange(classes * features, dtype=np.float32).reshape(classes, features), "head.weight")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "head.weight"], ["logits"], transB=1)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path), save_as_external_data=external, location=f"{path.name}.data", size_threshold=0)
    return path


def parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def assert_matches_graph(cfg: mc.ModelConfig, onnx_path, name: str, max_batch: int,
                         kind=mc.ModelInstanceGroup.KIND_AUTO, count: int = 1) -> None:
    """Every field of the config against the graph, read here straight from onnx."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    assert cfg.name == name
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == max_batch
    for tensors, values in ((cfg.input, graph.input), (cfg.output, graph.output)):
        assert [t.name for t in tensors] == [v.name for v in values]
        for t, v in zip(tensors, values, strict=True):
            tt = v.type.tensor_type
            assert t.data_type == ONNX_TO_TRITON[tt.elem_type]
            assert tt.shape.dim[0].dim_param  # the graph's batch dim is dynamic ...
            assert list(t.dims) == [d.dim_value for d in tt.shape.dim[1:]]  # ... and left out here
    assert cfg.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(kind, count)]


def test_repository_layout_and_config_match_the_graph(tmp_path):
    src = tiny_classifier(tmp_path / "model.onnx")
    root = write_triton_repository(tmp_path / "rel", "tiny-v1.0_a", src, max_batch_size=64)
    assert root == tmp_path / "rel" / "triton"
    model_dir = root / "tiny-v1.0_a"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()) == [
        "1/model.onnx", "config.pbtxt",
    ]
    assert (model_dir / "1" / "model.onnx").read_bytes() == src.read_bytes()
    cfg = parse(model_dir / "config.pbtxt")
    assert_matches_graph(cfg, src, "tiny-v1.0_a", 64)
    assert [list(t.dims) for t in cfg.input] == [[3, 4, 5]] and [list(t.dims) for t in cfg.output] == [[7]]


def test_default_batch_kind_and_the_settings(tmp_path):
    src = tiny_classifier(tmp_path / "model.onnx")
    auto = parse(write_triton_repository(tmp_path, "m", src) / "m" / "config.pbtxt")
    assert auto.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert [(g.kind, g.count) for g in auto.instance_group] == [(mc.ModelInstanceGroup.KIND_AUTO, 1)]
    ins, outs = graph_signature(src)
    cpu = text_format.Parse(config_pbtxt("m", ins, outs, instance_kind=KIND_CPU, max_batch_size=1024,
                                         instance_count=3), mc.ModelConfig())
    assert [(g.kind, g.count) for g in cpu.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]
    assert cpu.max_batch_size == 1024 and not cpu.output[0].label_filename


def test_labels_file_when_class_names_are_known(tmp_path):
    src = tiny_classifier(tmp_path / "model.onnx")
    names = [f"class {i}" for i in range(7)]
    model_dir = write_triton_repository(tmp_path, "m", src, class_names=names) / "m"
    cfg = parse(model_dir / "config.pbtxt")
    assert cfg.output[0].label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().splitlines() == names  # one per class, in id order
    assert len(names) == list(cfg.output[0].dims)[0]
    with pytest.raises(ReleaseError, match="labels file"):
        write_triton_repository(tmp_path / "x", "m", src, class_names=["a\nb"] + names[1:])


def test_the_check_compares_parsed_messages(tmp_path):
    src = tiny_classifier(tmp_path / "model.onnx")
    ins, outs = graph_signature(src)
    config = {"release": {"triton": {"kind": "cpu", "max_batch_size": 8, "instances": 2}}}
    text = config_pbtxt("m", ins, outs, instance_kind=KIND_CPU, max_batch_size=8, instance_count=2)
    assert triton_config_problem(text, "m", ins, outs, config, labels=False) is None
    reflowed = " ".join(line for line in text.splitlines() if not line.startswith("#"))  # layout is not content
    assert triton_config_problem(reflowed, "m", ins, outs, config, labels=False) is None
    assert "not the config" in triton_config_problem(text.replace("max_batch_size: 8", "max_batch_size: 9"),
                                                     "m", ins, outs, config, labels=False)
    assert "not a Triton ModelConfig" in triton_config_problem("bogus {", "m", ins, outs, config, labels=False)
    # a 0.3 release (no release.triton in its config) was written with KIND_GPU, batch 256
    legacy = config_pbtxt("m", ins, outs, instance_kind=KIND_GPU)
    assert triton_config_problem(legacy, "m", ins, outs, {"release": {}}, labels=False) is None


def test_types_and_dynamic_dims_map_to_triton(tmp_path):
    # (batch, 2, seq) fp16 in -> (batch,) int64 out: -1 for the free dim, [1]+reshape for a (batch,) tensor
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
         helper.make_node("ArgMax", ["xf"], ["y"], axis=1, keepdims=0)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 2, "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["n", "seq"])],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    cfg = parse(write_triton_repository(tmp_path, "g", path) / "g" / "config.pbtxt")
    assert (cfg.input[0].data_type, list(cfg.input[0].dims)) == (mc.TYPE_FP16, [2, -1])
    assert (cfg.output[0].data_type, list(cfg.output[0].dims)) == (mc.TYPE_INT64, [-1])

    vec = TensorSpec("v", "TYPE_FP32", ())
    flat = text_format.Parse(config_pbtxt("g", [vec], [vec]), mc.ModelConfig())
    assert list(flat.input[0].dims) == [1] and list(flat.input[0].reshape.shape) == []


def test_external_data_travels_with_the_copy(tmp_path):
    src = tiny_classifier(tmp_path / "model.onnx", external=True)
    version = write_triton_repository(tmp_path / "rel", "m", src) / "m" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (version / "model.onnx.data").read_bytes() == (tmp_path / "model.onnx.data").read_bytes()


def test_rewrite_replaces_stale_versions(tmp_path):
    src = tiny_classifier(tmp_path / "model.onnx")
    root = write_triton_repository(tmp_path, "m", src)
    (root / "m" / "2").mkdir()
    write_triton_repository(tmp_path, "m", src)
    assert sorted(p.name for p in (root / "m").iterdir()) == ["1", "config.pbtxt"]


@pytest.mark.parametrize("name", ["../escape", "a b", "", ".hidden", "x/y"])
def test_unsafe_model_name_is_refused(tmp_path, name):
    src = tiny_classifier(tmp_path / "model.onnx")
    with pytest.raises(ReleaseError, match="not a safe folder name"):
        write_triton_repository(tmp_path / "rel", name, src)
    assert not (tmp_path / "rel").exists()


def test_bad_onnx_files_name_the_file(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(OnnxFileError, match="missing.onnx: no such ONNX file"):
        write_triton_repository(tmp_path, "m", missing)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx\xff" * 8)
    with pytest.raises(OnnxFileError, match="junk.onnx: not"):
        write_triton_repository(tmp_path, "m", junk)
    fixed = tiny_classifier(tmp_path / "fixed.onnx", shape=(2, 3, 4, 5))
    with pytest.raises(OnnxFileError, match="fixed.onnx: graph tensor 'input' has a fixed leading dim 2"):
        write_triton_repository(tmp_path, "m", fixed)
    assert not (tmp_path / "triton").exists()


def test_bad_arguments_raise_input_errors(tmp_path):
    ins, outs = graph_signature(tiny_classifier(tmp_path / "model.onnx"))
    with pytest.raises(InputError, match="max_batch_size: 0; expected 1 .. 2147483647"):
        config_pbtxt("m", ins, outs, max_batch_size=0)
    with pytest.raises(InputError, match="instance_kind: 'KIND_TPU'"):
        config_pbtxt("m", ins, outs, instance_kind="KIND_TPU")


@pytest.mark.slow
def test_pipeline_run_release_ships_triton_layout(make_config, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["run", str(make_config())], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rel = tmp_path / "releases" / "digits-test"
    model_dir = rel / "triton" / "digits-test"
    m = json.loads((rel / "manifest.json").read_text())
    assert {"triton/digits-test/config.pbtxt", "triton/digits-test/1/model.onnx"} <= set(m["files"])
    assert m["files"] == file_digests(rel)
    assert (model_dir / "1" / "model.onnx").read_bytes() == (rel / "model.onnx").read_bytes()
    cfg = parse(model_dir / "config.pbtxt")
    assert_matches_graph(cfg, rel / "model.onnx", "digits-test", DEFAULT_MAX_BATCH_SIZE)
    # the digits set: 8x8 grey images, 10 classes
    assert [list(t.dims) for t in cfg.input] == [[1, 8, 8]] and [list(t.dims) for t in cfg.output] == [[10]]
    assert [t.name for t in cfg.input] == ["input"] and [t.name for t in cfg.output] == ["logits"]
    assert cfg.output[0].label_filename == "labels.txt"  # digits names its classes '0'..'9'
    assert (model_dir / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    assert "triton/digits-test/labels.txt" in m["files"]

    assert runner.invoke(cli, ["verify", str(rel)]).exit_code == 0
    (model_dir / "config.pbtxt").write_text(
        (model_dir / "config.pbtxt").read_text().replace(
            f"max_batch_size: {DEFAULT_MAX_BATCH_SIZE}", f"max_batch_size: {2 * DEFAULT_MAX_BATCH_SIZE}"
        )
    )
    t = runner.invoke(cli, ["verify", str(rel)])
    assert t.exit_code == 2 and "config.pbtxt: sha256 differs" in t.output


def test_release_triton_settings_are_validated():
    from nhle_pipeline.pipeline.config import parse_config
    from nhle_pipeline.pipeline.errors import ConfigError

    base = {"model": {"arch": "mlp", "num_classes": 10}, "forget": {"classes": [0]}}
    cfg = parse_config({**base, "release": {"triton": {"kind": "cpu", "max_batch_size": 1024, "instances": 2}}})
    assert (cfg.release.triton.kind, cfg.release.triton.max_batch_size, cfg.release.triton.instances) == ("cpu", 1024, 2)
    assert parse_config(base).release.triton.kind == "auto"
    with pytest.raises(ConfigError, match="release.triton.kind: Input should be 'auto', 'gpu' or 'cpu'; "
                                          "release.triton.max_batch_size: Input should be greater than or equal to 1"):
        parse_config({**base, "release": {"triton": {"kind": "tpu", "max_batch_size": 0}}})
