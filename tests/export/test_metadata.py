import onnx
import pytest

from nhle_pipeline.export.errors import OnnxFileError
from nhle_pipeline.export.metadata import PREFIX, stamp_metadata
from nhle_pipeline.export.onnx_file import check_onnx, load_onnx


def props(path) -> dict[str, str]:
    return {p.key: p.value for p in load_onnx(path).metadata_props}


@pytest.fixture()
def copy_of_masked(exported, tmp_path):
    _, d = exported
    p = tmp_path / "m.onnx"
    p.write_bytes((d / "masked.onnx").read_bytes())
    return p


def test_stamp_adds_prefixed_string_props_and_keeps_the_file_valid(copy_of_masked):
    stamp_metadata(copy_of_masked, {"method": "nhle-cwm", "forget_classes": "0,4", "seed": 7})
    assert props(copy_of_masked) == {
        f"{PREFIX}forget_classes": "0,4", f"{PREFIX}method": "nhle-cwm", f"{PREFIX}seed": "7",
    }
    check_onnx(copy_of_masked)


def test_restamping_replaces_our_props_and_keeps_foreign_ones(copy_of_masked):
    model = load_onnx(copy_of_masked)
    foreign = model.metadata_props.add()
    foreign.key, foreign.value = "author", "someone else"
    onnx.save(model, str(copy_of_masked))
    stamp_metadata(copy_of_masked, {"method": "a", "old": "x"})
    stamp_metadata(copy_of_masked, {"method": "b"})
    assert props(copy_of_masked) == {"author": "someone else", f"{PREFIX}method": "b"}


def test_stamping_leaves_the_graph_and_weights_alone(exported, copy_of_masked):
    _, d = exported
    stamp_metadata(copy_of_masked, {"method": "x"})
    before, after = load_onnx(d / "masked.onnx"), load_onnx(copy_of_masked)
    assert after.graph.SerializeToString() == before.graph.SerializeToString()


def test_stamping_a_missing_file_is_an_onnx_file_error(tmp_path):
    with pytest.raises(OnnxFileError, match="no such ONNX file"):
        stamp_metadata(tmp_path / "none.onnx", {"a": "b"})
