"""benchmarks/: a pipeline config's trained original in the harness (--config), --no-relearn, and
the NHLE screen (benchmarks/nhle_screen.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from benchmarks import nhle_screen, unlearning
from benchmarks.common import load_benchmark_data
from nhle_pipeline.pipeline.checkpoint import save_weights, sha256_file
from nhle_pipeline.pipeline.config import TrainConfig
from nhle_pipeline.pipeline.models import build_model
from nhle_pipeline.pipeline.train import train_classifier

RECIPE = TrainConfig(epochs=4, lr=0.003, batch_size=32, weight_decay=1e-4)


@pytest.fixture(scope="module")
def digits_config(tmp_path_factory):
    """A digits config whose model.weights is a trained MLP (what `pipeline train` would write)."""
    root = tmp_path_factory.mktemp("cfg")
    data = load_benchmark_data("digits", None)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=data.input_shape)
    train_classifier(model, data.train, RECIPE, device=torch.device("cpu"), seed=0)
    weights = root / "digits-mlp.safetensors"
    save_weights(model, weights)
    cfg = {"seed": 0, "model": {"arch": "mlp", "weights": str(weights), "num_classes": 10},
           "data": {"dataset": "digits"}, "forget": {"classes": [0]}, "train": RECIPE.model_dump()}
    path = root / "digits.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, weights


def test_harness_uses_the_configs_weights_and_recipe_without_relearning(digits_config, tmp_path):
    cfg, weights = digits_config
    out = tmp_path / "results"
    argv = ["--dataset", "digits", "--config", str(cfg), "--methods", "nhle-cwm,cwm-only", "--no-relearn",
            "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert unlearning.main(argv) == 0
    record = json.loads((out / "digits-mlp-forget-0.json").read_text())
    original = record["per_seed"]["0"]["original"]
    assert original["weights"] == {"path": str(weights), "sha256": sha256_file(weights), "from": "pipeline train"}
    cached = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*.*"))
    assert [p.split("-seed")[0] for p in cached] == ["seeds/digits-mlp-forget-0"]  # no original trained
    assert record["recipe"] == RECIPE.model_dump() and record["relearn"] is None
    assert "relearn_auc" not in original and "relearn_auc" not in record["per_seed"]["0"]["nhle-cwm"]
    md = (out / "digits-mlp-forget-0.md").read_text()
    assert "not run (`--no-relearn`)" in md
    row = next(line for line in md.splitlines() if line.startswith("| cwm-only |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[8:11] == ["—", "—", "—"]  # relearn steps, relearn AUC, passive Acc_F
    assert record["summary"]["cwm-only"]["acc_f"]["mean"] == 0.0


def test_harness_config_errors_are_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {arch: mlp, num_classes: 10, weights: w.safetensors}\nbogus: 1\n")
    with pytest.raises(SystemExit) as e:
        unlearning.main(["--dataset", "digits", "--config", str(bad)])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


def test_screen_pairs_every_setting_with_the_original(digits_config, tmp_path):
    cfg, _ = digits_config
    out = tmp_path / "screen"
    argv = ["--dataset", "digits", "--config", str(cfg), "--test-samples", "200", "--try", "cwm-only",
            "--try", "default", "--try", 'short={"max_steps": 1}', "--out", str(out)]
    assert nhle_screen.main(argv) == 0
    record = json.loads((out / "digits-mlp-forget-0-screen.json").read_text())
    rows = record["rows"]
    assert record["test_samples"] == 200 and record["retained_test_samples"] == 180  # 20 of each class
    assert set(rows) == {"original", "cwm-only", "default", "short"}
    assert rows["original"]["acc_f"] > 0.8
    for name in ("cwm-only", "default", "short"):
        r = rows[name]
        assert r["acc_f"] == 0.0
        assert r["d_acc_r"] == pytest.approx(r["acc_r"] - rows["original"]["acc_r"])
    # CWM edits the head only: features and hence Ratio_D are the original's
    assert rows["cwm-only"]["ratio_d"] == pytest.approx(rows["original"]["ratio_d"])
    assert rows["short"]["info"]["steps"] == 1 and rows["default"]["info"]["steps"] > 1
    assert np.isfinite(rows["default"]["ratio_d"])
    assert "| short |" in (out / "digits-mlp-forget-0-screen.md").read_text()


def test_screen_rejects_an_unknown_setting(digits_config, capsys):
    cfg, _ = digits_config
    assert nhle_screen.main(["--dataset", "digits", "--config", str(cfg), "--try", "nonsense"]) == 2
    assert "--try 'nonsense'" in capsys.readouterr().err
