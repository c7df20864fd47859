"""Models by library name (pipeline/models.py): torchvision's and timm's own builders, called
with fixed arguments, no code opt-in; bad names and failing builders are exit-2 errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.models import build_model, library_of


def test_library_names_are_recognised_and_nothing_else():
    assert library_of("torchvision:resnet50") == "torchvision" and library_of("timm:convnext_atto") == "timm"
    assert library_of("torchvision:") is None and library_of("my_models:factory") is None
    assert library_of("resnet18") is None


def test_a_torchvision_classifier_by_name_needs_no_code_opt_in():
    m = build_model("torchvision:resnet18", num_classes=4, input_shape=(3, 32, 32))  # trust_code False
    assert isinstance(m.fc, nn.Linear) and m.fc.out_features == 4
    assert m.conv1.kernel_size == (7, 7)  # the library's model as it is: no CIFAR stem swapped in


@pytest.mark.parametrize("arch, shape, kwargs, expect", [
    ("torchvision:resnet81", (3, 32, 32), {}, "no classification model 'resnet81'; close matches: ['resnet18'"),
    ("torchvision:fcn_resnet50", (3, 32, 32), {}, "no classification model"),  # segmentation, not a classifier
    ("torchvision:resnet18", (1, 32, 32), {}, "takes 3-channel images, the data has 1"),
    ("torchvision:resnet18", (3, 32, 32), {"widthh": 2}, "model.kwargs"),
    ("resnt18", (3, 32, 32), {}, "close matches: ['resnet18'"),
])
def test_bad_library_names_and_arguments_are_model_errors(arch, shape, kwargs, expect):
    with pytest.raises(ModelError, match=None) as e:
        build_model(arch, num_classes=3, input_shape=shape, kwargs=kwargs)
    assert expect in str(e.value)


def test_timm_by_name_calls_its_builder_with_fixed_arguments(monkeypatch):
    calls = []

    def create_model(name, *, pretrained, num_classes, in_chans, **kw):
        calls.append((name, pretrained, num_classes, in_chans, kw))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * 8 * 8, num_classes))

    def broken(*_a, **_k):
        raise KeyError("no such config")

    fake = types.SimpleNamespace(list_models=lambda: ["convnext_atto", "vit_tiny"], create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", fake)
    m = build_model("timm:convnext_atto", num_classes=5, input_shape=(1, 8, 8), kwargs={"drop_rate": 0.1})
    assert calls == [("convnext_atto", False, 5, 1, {"drop_rate": 0.1})] and m[1].out_features == 5
    with pytest.raises(ModelError, match="timm has no model 'convnext_atom'; close matches: \\['convnext_atto'\\]"):
        build_model("timm:convnext_atom", num_classes=5, input_shape=(1, 8, 8))
    fake.create_model = broken  # whatever a library's builder raises is the input's fault: exit 2
    with pytest.raises(ModelError, match="failed to build .*KeyError"):
        build_model("timm:vit_tiny", num_classes=5, input_shape=(1, 8, 8))
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(ModelError, match=r"needs timm \(pip install 'nhle-pipeline\[timm\]'\)"):
        build_model("timm:convnext_atto", num_classes=5, input_shape=(1, 8, 8))


def _npz_data(root: Path) -> Path:
    """3 classes of 32x32 colour images, each tinted by its class: learnable in a few epochs."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name, n in (("train", 240), ("test", 90)):
        y = np.arange(n) % 3
        x = rng.normal(0.5, 0.15, (n, 32, 32, 3))
        x[np.arange(n), :, :, y] += 0.3
        np.savez(root / f"{name}.npz", x=(np.clip(x, 0, 1) * 255).astype(np.uint8), y=y.astype(np.int64))
    return root


@pytest.mark.slow
def test_a_torchvision_model_trains_releases_and_verifies_with_its_source_weights(tmp_path):
    """torchvision:mobilenet_v3_small (Hardswish, squeeze-excitation, a Linear head) end to end: the
    output-level masking proof holds through its graph, and verify rebuilds the original from the
    same builder for --source-weights and for the fresh-export comparison."""
    from nhle_pipeline.pipeline.cli import cli
    from tests.conftest import write_config

    torch.set_num_threads(1)
    weights = tmp_path / "runs" / "mnv3.safetensors"
    cfg = write_config(tmp_path / "tv.yaml", {
        "seed": 0,
        "model": {"arch": "torchvision:mobilenet_v3_small", "weights": str(weights), "num_classes": 3},
        "data": {"dataset": "npz", "root": str(_npz_data(tmp_path / "data"))},
        "forget": {"classes": [0], "samples_per_class": 8},
        "release": {"name": "tv", "dir": str(tmp_path / "releases")},
        "train": {"epochs": 2, "lr": 0.003, "batch_size": 32},
    })
    runner = CliRunner()
    assert runner.invoke(cli, ["train", str(cfg)]).exit_code == 0
    r = runner.invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "releases" / "tv" / "manifest.json").read_text())
    assert m["metrics"]["output_masked"] is True and m["head"] == "classifier.3"
    v = runner.invoke(cli, ["verify", str(tmp_path / "releases" / "tv"), "--source-weights", str(weights)])
    assert v.exit_code == 0, v.output
    assert "[✓] graph_unchanged" in v.output and "measured here from --source-weights" in v.output


def test_a_factory_module_in_the_working_folder_is_importable(tmp_path, monkeypatch):
    """The console script's sys.path does not hold the working folder; a user's `my_models.py`
    beside the config is what `model.arch: my_models:build` means."""
    (tmp_path / "my_models_here.py").write_text(
        "from torch import nn\n\ndef build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    m = build_model("my_models_here:build", num_classes=4, input_shape=(1, 8, 8), trust_code=True)
    assert m[1].out_features == 4
    sys.modules.pop("my_models_here", None)


@pytest.mark.parametrize("key", ["weights", "pretrained", "checkpoint_path"])
def test_library_arguments_that_load_weights_are_refused(key):
    """The config's model.weights is the only weights a run, or verify's rebuild, reads."""
    with pytest.raises(ModelError, match=f"model.kwargs: \\['{key}'\\] would make torchvision load or fetch weights"):
        build_model("torchvision:resnet18", num_classes=3, input_shape=(3, 32, 32), kwargs={key: "x"})
