"""export.ir_version: model.onnx written as ONNX IR 9 (or 8) for servers whose onnxruntime
predates 1.18 (which refuse the exporter's IR 10).

The other side of the claim, that onnxruntime 1.17 loads the IR 9 file and gives the same
logits while it refuses the IR 10 one, needs a second Python environment from PyPI:
``benchmarks/ort_compat.py`` (its result: benchmarks/results/ort-compat.md), not a test.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from nhle_pipeline.export.metadata import stamp_metadata
from nhle_pipeline.export.onnx_export import export_onnx
from nhle_pipeline.export.onnx_file import (
    IR_VERSION_MAX_OPSET,
    check_onnx,
    drop_annotations_above,
    ir_features_above,
    load_onnx,
)
from nhle_pipeline.export.precision import MODES, derive
from nhle_pipeline.pipeline.config import OPSET_MIN, parse_config
from nhle_pipeline.pipeline.errors import ConfigError
from nhle_pipeline.pipeline.models import build_model
from nhle_pipeline.verify.canonical import structure_difference
from nhle_pipeline.verify.ort import open_session, ort_logits

INPUT = (1, 8, 8)
EXPORTER_IR = 10  # what torch.onnx (dynamo) writes today, whatever the opset
BASE = {"model": {"arch": "mlp", "weights": "w.safetensors", "num_classes": 10}, "forget": {"classes": [0]}}


def annotations(model) -> int:
    """metadata_props on nodes, the graph and its values: what IR 10 added that exports carry."""
    g = model.graph
    return (sum(len(n.metadata_props) for n in g.node) + len(g.metadata_props)
            + sum(len(v.metadata_props) for v in (*g.input, *g.output, *g.value_info)))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A conv net (Conv with BatchNorm folded in, MaxPool, Gemm) exported as the exporter writes
    it (key None) and as IR 9 and 8; (the model, {ir_version: path})."""
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, input_shape=INPUT, kwargs={}).eval()
    d = tmp_path_factory.mktemp("ir")
    paths = {}
    for ir in (None, 9, 8):
        paths[ir] = d / f"cnn-ir{ir}.onnx"
        export_onnx(model, INPUT, paths[ir], opset=18, ir_version=ir)
    return model, paths


def test_the_ir_table_is_onnx_version_table():
    """Each IR's highest opset as the installed onnx's helper.VERSION_TABLE has it (rows:
    release, IR, ai.onnx opset, ...); 8 is the lowest IR carrying the exporter's lowest opset."""
    top: dict[int, int] = {}
    for row in onnx.helper.VERSION_TABLE:
        ir, opset = row[1], row[2]
        top[ir] = max(top.get(ir, 0), opset)
    assert IR_VERSION_MAX_OPSET == {ir: top[ir] for ir in IR_VERSION_MAX_OPSET}
    lowest = min(IR_VERSION_MAX_OPSET)
    assert top[lowest - 1] < OPSET_MIN <= top[lowest]
    assert max(IR_VERSION_MAX_OPSET) == EXPORTER_IR and onnx.IR_VERSION >= EXPORTER_IR


def test_the_default_is_the_exporters_ir_10(cnn):
    _, paths = cnn
    m = load_onnx(paths[None])
    assert m.ir_version == EXPORTER_IR
    assert annotations(m) > 0  # the exporter's stack traces and scopes (an IR 10 field)


@pytest.mark.parametrize("ir", [9, 8])
def test_the_setting_writes_that_ir_and_the_same_graph(cnn, ir):
    _, paths = cnn
    m, full = load_onnx(paths[ir]), load_onnx(paths[None])
    assert m.ir_version == ir
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 18)]
    check_onnx(paths[ir])  # onnx.checker with full_check
    assert annotations(m) == 0 and ir_features_above(m, ir) == []
    assert structure_difference(m, full) is None  # nodes, initializers, inputs/outputs, opsets
    for a, b in zip(m.graph.initializer, full.graph.initializer, strict=True):
        assert a.name == b.name and a.raw_data == b.raw_data  # the same weights, byte for byte


def test_ir9_logits_are_the_ir10_logits_in_onnxruntime(cnn):
    model, paths = cnn
    sessions = {ir: open_session(p, "cpu")[0] for ir, p in paths.items()}
    for n in (1, 7, 64):
        x = np.random.default_rng(n).random((n, *INPUT), dtype=np.float32)
        want = ort_logits(sessions[None], x, batch_size=64)
        for ir in (9, 8):
            np.testing.assert_array_equal(ort_logits(sessions[ir], x, batch_size=64), want)
        with torch.no_grad():
            assert np.abs(want - model(torch.from_numpy(x)).numpy()).max() < 1e-5


def test_stamping_and_the_triton_copy_keep_ir9(cnn, tmp_path):
    from nhle_pipeline.pipeline.release.triton import write_triton_repository

    _, paths = cnn
    path = tmp_path / "model.onnx"
    shutil.copy(paths[9], path)
    stamp_metadata(path, {"method": "nhle-cwm", "forget_classes": "[0]"})
    m = load_onnx(path)
    assert m.ir_version == 9 and {p.key for p in m.metadata_props} >= {"unlearning.method"}
    check_onnx(path)
    write_triton_repository(tmp_path, "cnn", path)
    assert (tmp_path / "triton" / "cnn" / "1" / "model.onnx").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("mode", MODES)
def test_onnxruntime_quantization_tools_keep_the_parents_ir(cnn, tmp_path, mode):
    """`pipeline quantize` derives with onnxruntime's tools: they keep IR 9 (no rewrite to 10)."""
    _, paths = cnn
    calibration = [np.random.default_rng(0).random((16, *INPUT), dtype=np.float32)]
    derive(paths[9], tmp_path / "d.onnx", mode, calibration if mode == "int8-static" else None)
    m = load_onnx(tmp_path / "d.onnx")
    assert m.ir_version == 9 and annotations(m) == 0
    check_onnx(tmp_path / "d.onnx")


@pytest.mark.parametrize("ir, opset, expect", [
    (9, 21, "IR 9 carries opsets up to 20"),
    (8, 19, "IR 8 carries opsets up to 18"),
    (10, 23, "IR 10 carries opsets up to 22"),
    (11, 18, "11 is not an IR version the export writes; expected one of 8, 9, 10"),
    (7, 18, "7 is not an IR version"),
    ("9", 18, "valid integer"),
    (True, 18, "valid integer"),
])
def test_config_refuses_what_the_opset_does_not_allow_naming_the_field(ir, opset, expect):
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "export": {"opset": opset, "ir_version": ir}}, "c.yaml")
    msg = str(e.value)
    assert msg.startswith("c.yaml: export.ir_version: ") and expect in msg and "\n" not in msg


@pytest.mark.parametrize("ir, opset", [(None, 18), (None, 23), (10, 22), (9, 20), (9, 18), (8, 18)])
def test_config_accepts_what_the_opset_allows(ir, opset):
    export = {"opset": opset} if ir is None else {"opset": opset, "ir_version": ir}
    assert parse_config({**BASE, "export": export}).export.ir_version == ir


def test_the_default_setting_is_the_exporters_own():
    assert parse_config(BASE).export.ir_version is None


def test_pipeline_run_refuses_it_with_exit_2_before_any_work(tmp_path):
    from nhle_pipeline.pipeline.cli import cli

    cfg = tmp_path / "c.yaml"  # the weights do not exist: reading them would be work done
    cfg.write_text(f"model: {{arch: mlp, weights: {tmp_path / 'none.safetensors'}, num_classes: 10}}\n"
                   f"forget: {{classes: [0]}}\nexport: {{opset: 21, ir_version: 9}}\n"
                   f"release: {{dir: {tmp_path / 'releases'}}}\n")
    r = CliRunner().invoke(cli, ["run", str(cfg)], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert "export.ir_version: IR 9 carries opsets up to 20" in r.output and "weights" not in r.output
    assert not (tmp_path / "releases").exists()


def test_export_onnx_refuses_the_combination_before_exporting(tmp_path):
    m = build_model("mlp", num_classes=10, input_shape=INPUT, kwargs={"hidden": [8]})
    with pytest.raises(ValueError, match="ir_version 8 cannot carry opset 19"):
        export_onnx(m, INPUT, tmp_path / "m.onnx", opset=19, ir_version=8)
    assert not (tmp_path / "m.onnx").exists()


def _cast_model(dtype: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=dtype, name="narrow"),
             helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT, name="widen")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_types_a_lower_ir_lacks_are_named_not_dropped():
    int4 = _cast_model(TensorProto.INT4)
    assert ir_features_above(int4, 10) == []
    assert ir_features_above(int4, 9) == ["Cast 'narrow' attribute 'to' is INT4 (IR 10)"]
    f8 = _cast_model(TensorProto.FLOAT8E4M3FN)
    assert ir_features_above(f8, 9) == [] and ir_features_above(f8, 8) == [
        "Cast 'narrow' attribute 'to' is FLOAT8E4M3FN (IR 9)"]


def test_annotations_are_dropped_below_ir10_only():
    m = _cast_model(TensorProto.FLOAT)
    helper.set_metadata_props(m.graph.node[0], {"pkg.torch.onnx.stack_trace": "File ..."})
    helper.set_model_props(m, {"unlearning.method": "nhle-cwm"})
    assert drop_annotations_above(m, 10) == 0 and len(m.graph.node[0].metadata_props) == 1
    assert drop_annotations_above(m, 9) == 1 and len(m.graph.node[0].metadata_props) == 0
    assert [p.key for p in m.metadata_props] == ["unlearning.method"]  # the model's own stays


@pytest.mark.slow
def test_an_ir9_release_verifies_and_its_derived_release_stays_ir9(digits_weights, tmp_path):
    """pipeline run with export.ir_version 9, pipeline verify (its fresh-export comparison is
    against an IR 10 export), pipeline quantize and verify of the derived release."""
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.quantize import quantize_release
    from nhle_pipeline.pipeline.release.check import verify_release
    from nhle_pipeline.pipeline.run import run_pipeline
    from tests.conftest import digits_config, write_config

    cfg = write_config(tmp_path / "ir9.yaml", digits_config(
        digits_weights, tmp_path / "releases", export={"ir_version": 9}, release={"name": "digits-ir9"}))
    rel = run_pipeline(load_config(cfg), cfg).path
    assert load_onnx(rel / "model.onnx").ir_version == 9
    assert (rel / "triton" / "digits-ir9" / "1" / "model.onnx").read_bytes() == (rel / "model.onnx").read_bytes()
    check = verify_release(rel)
    assert check.passed, [g.line() for g in check.gates if not g.passed]
    assert "graph_unchanged" in {g.name for g in check.gates}
    derived = quantize_release(rel, "fp16", tmp_path / "releases" / "digits-ir9-fp16").path
    assert load_onnx(derived / "model.onnx").ir_version == 9
    again = verify_release(derived, parent=rel)
    assert again.passed, [g.line() for g in again.gates if not g.passed]
