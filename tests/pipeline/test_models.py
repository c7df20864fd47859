import pytest
import torch
from torch import nn

from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.models import build_model, find_head, list_models, register


def test_registry_lists_paper_and_torchvision_models():
    assert {"mlp", "lenet", "vgg16", "resnet18", "resnet34", "mobilenet_v3_large", "inception_v3"} <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register("mlp")(lambda **kw: nn.Linear(1, 1))


@pytest.mark.parametrize(
    "arch, shape",
    [("mlp", (1, 8, 8)), ("lenet", (1, 28, 28)), ("resnet18", (3, 32, 32)), ("mobilenet_v3_large", (3, 32, 32)), ("vgg16", (1, 32, 32))],
)
def test_builders_adapt_to_channels_size_and_classes(arch, shape):
    m = build_model(arch, num_classes=7, input_shape=shape)
    out = m(torch.zeros(3, *shape))
    assert out.shape == (3, 7)
    name, head = find_head(m, 7)
    assert isinstance(head, nn.Linear) and head.out_features == 7


def test_unknown_arch_and_bad_kwargs():
    with pytest.raises(ModelError, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ModelError, match="model.kwargs"):
        build_model("mlp", num_classes=10, input_shape=(1, 8, 8), kwargs={"depth": 3})
    with pytest.raises(ModelError, match="at least 12x12"):
        build_model("lenet", num_classes=10, input_shape=(1, 8, 8))


def test_import_path_factory_and_output_width_check():
    m = build_model("tests.factories:tiny_net", num_classes=4, input_shape=(1, 8, 8), kwargs={"hidden": 5}, trust_code=True)
    assert m(torch.zeros(1, 1, 8, 8)).shape == (1, 4)
    with pytest.raises(ModelError, match="model.num_classes: 4, but 'tests.factories:wrong_width' outputs shape"):
        build_model("tests.factories:wrong_width", num_classes=4, input_shape=(1, 8, 8), trust_code=True)
    with pytest.raises(ModelError, match="has no callable"):
        build_model("tests.factories:nothing", num_classes=4, input_shape=(1, 8, 8), trust_code=True)


def test_find_head_picks_last_matching_linear_or_named_one():
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10))
    assert find_head(m, 10)[0] == "3"
    assert find_head(m, 10, "1")[0] == "1"
    with pytest.raises(ModelError, match="'2' is not an nn.Linear"):
        find_head(m, 10, "2")
    with pytest.raises(ModelError, match="no nn.Linear \\(or 1x1 nn.Conv2d\\) with 5 outputs"):
        find_head(m, 5)


def test_an_import_path_arch_runs_no_code_unless_trusted(tmp_path, monkeypatch):
    (tmp_path / "side_effect_mod.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('ran').write_text('x')\n"
        "def net(num_classes):\n    import torch\n    return torch.nn.Linear(64, num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="imports and runs code; set model.trust_code: true"):
        build_model("side_effect_mod:net", num_classes=4, input_shape=(1, 8, 8))
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ModelError, match="torch.hub:load"):
        build_model("torch.hub:load", num_classes=4, input_shape=(1, 8, 8))
