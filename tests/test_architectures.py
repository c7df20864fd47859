"""Every registered architecture through `pipeline run` end to end (issue #16, item 4).

Tiny generated RGB data (an npz folder), random-init weights: the run must load,
fine-tune, mask, export, and verify the exported file. Random weights cannot meet
the accuracy gates, so those are opened wide (as benchmarks/scale.py does), and
NHLE gets two steps, which cannot meet its stop rule (nhle_completed off). What
must pass on every architecture is the export's own checks: ``graph_unchanged``
(CWM adds no op), ``cwm_in_graph`` (the masked rows are in the file), ``parity``
(onnxruntime = PyTorch within the default 1e-3, or within what float32 itself
can tell on that model, see ``PARITY_FLOAT32_FACTOR``) and ``evidence_copy``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nhle_pipeline.pipeline.checkpoint import save_weights
from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.models import build_model, list_models
from tests.conftest import write_config

pytestmark = pytest.mark.slow

CLASSES = 4
SIDE = 32  # the CIFAR-style stems (resnet, vgg16, mobilenet) and 5 VGG max-pools need 32; inception upsamples to 75 inside
TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 3
EXPORT_GATES = {"graph_unchanged", "cwm_in_graph", "parity", "evidence_copy"}
DEFAULT_PARITY_ATOL = 1e-3  # verify.gates.parity_atol's default
# A random Inception-v3 (torchvision's init: truncated normal, std 0.1, whatever the
# fan-in) is so ill-conditioned that PyTorch's own float32 logits differ from
# float64 by about 5e-3 (measured): no two float32 runtimes can agree within 1e-3.
# The parity threshold is then this many times the model's own float32 error.
PARITY_FLOAT32_FACTOR = 4.0
# Every architecture the registry knows, and what the test expects of it; a new
# registration must be added here (test_every_registered_architecture_is_covered).
ARCHS = ["cnn", "inception_v3", "lenet", "mlp", "mobilenet_v3_large", "resnet18", "resnet34", "vgg16", "vgg16_bn"]


def test_every_registered_architecture_is_covered():
    assert sorted(ARCHS) == list_models()


@pytest.fixture(scope="module")
def npz_root(tmp_path_factory) -> Path:
    """train.npz / test.npz: per class a random colour template plus noise, uint8 (N, 32, 32, 3)."""
    root = tmp_path_factory.mktemp("tiny-rgb")
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(CLASSES, SIDE, SIDE, 3))
    for name, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        y = np.repeat(np.arange(CLASSES), per_class).astype(np.uint8)
        noise = rng.integers(0, 256, size=(len(y), SIDE, SIDE, 3))
        x = (0.7 * templates[y] + 0.3 * noise).astype(np.uint8)
        np.savez(root / f"{name}.npz", x=x, y=y)
    return root


def float32_error(model: torch.nn.Module, data_root: Path) -> float:
    """max |float32 - float64| of ``model``'s logits on the test images (PyTorch, CPU)."""
    import copy

    with np.load(data_root / "test.npz") as z:
        x = torch.from_numpy(z["x"]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return float((model(x).double() - copy.deepcopy(model).double()(x.double())).abs().max())


def random_init(arch: str, data_root: Path) -> torch.nn.Module:
    """``arch`` at random init, its BatchNorm statistics measured on the training images.

    Left at their init values (mean 0, var 1), BatchNorm layers in eval mode pass
    activations through unnormalised: a random ResNet-34 or Inception-v3 then
    has logits around 1e7, where float32 rounding alone differs by more than the
    parity gate's absolute 1e-3 between any two runtimes (measured: 44 on
    Inception-v3). A trained model's statistics are measured on its data; these are too.
    """
    torch.manual_seed(0)
    model = build_model(arch, num_classes=CLASSES, input_shape=(3, SIDE, SIDE))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with np.load(data_root / "train.npz") as z:
        x = torch.from_numpy(z["x"]).permute(0, 3, 1, 2).float() / 255.0
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the one pass
    model.train()
    with torch.no_grad():
        model(x)
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def run_config(tmp_path: Path, arch: str, data_root: Path) -> tuple[Path, float]:
    """The run's config (random-init weights written beside it) and its parity threshold."""
    weights = tmp_path / f"{arch}.safetensors"
    model = random_init(arch, data_root)
    save_weights(model, weights)
    parity_atol = max(DEFAULT_PARITY_ATOL, PARITY_FLOAT32_FACTOR * float32_error(model, data_root))
    return write_config(tmp_path / "run.yaml", {
        "seed": 0,
        "device": "cpu",
        "model": {"arch": arch, "weights": str(weights), "num_classes": CLASSES},
        "data": {"dataset": "npz", "root": str(data_root)},
        "forget": {"classes": [0], "samples_per_class": 4},
        "unlearn": {"nhle": {"max_steps": 2}},
        "verify": {"gates": {"acc_f_max": 1.0, "acc_r_drop_max": 1.0, "nhle_completed": False,
                             "parity_atol": parity_atol}},
        "release": {"dir": str(tmp_path / "releases"), "name": f"tiny-{arch}"},
        "cache": {"enabled": False},
    }), parity_atol


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_exports_and_verifies(arch, npz_root, tmp_path):
    cfg, parity_atol = run_config(tmp_path, arch, npz_root)
    if arch != "inception_v3":  # the others are well-conditioned: the default threshold holds
        assert parity_atol == DEFAULT_PARITY_ATOL
    r = CliRunner().invoke(cli, ["run", str(cfg)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    release = tmp_path / "releases" / f"tiny-{arch}"
    m = json.loads((release / "manifest.json").read_text())
    gates = {g["name"]: g for g in m["gates"]}
    assert EXPORT_GATES <= set(gates), sorted(gates)
    for name in EXPORT_GATES:
        assert gates[name]["passed"] is True, gates[name]
    assert gates["parity"]["value"] <= parity_atol and gates["parity"]["threshold"] == parity_atol
    assert m["status"] == "released" and (release / "model.onnx").is_file()
    assert 1 <= m["metrics"]["nhle"]["steps"] <= 2  # NHLE ran (it may meet its stop rule in one step), then CWM
