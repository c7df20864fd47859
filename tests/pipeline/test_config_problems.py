"""Every config problem at once, each as `field: expectation`, on one line that starts with the first."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.cli import cli
from nhle_pipeline.pipeline.config import parse_config
from nhle_pipeline.pipeline.errors import ConfigError

BROKEN = {
    "seed": -1,
    "device": "tpu",
    "model": {"arch": "mlp", "num_classes": "10", "bogus": 1},
    "forget": {"classes": [0], "samples_per_class": 0},
    "unlearn": {"nhle": {"lr": -1.0}},
}


def test_every_problem_is_named_in_file_order():
    with pytest.raises(ConfigError) as e:
        parse_config(BROKEN, "c.yaml")
    msg = str(e.value)
    assert msg == (
        "c.yaml: seed: Input should be greater than or equal to 0; "
        "device: Input should be 'auto', 'cpu' or 'cuda'; "
        "model.num_classes: Input should be a valid integer, got '10'; "
        "model.bogus: unknown key; "
        "forget.samples_per_class: Input should be greater than or equal to 1; "
        "unlearn.nhle.lr: Input should be greater than 0 (6 problems)"
    )


def test_one_problem_reads_as_before():
    with pytest.raises(ConfigError) as e:
        parse_config({**BROKEN, "seed": 0, "device": "cpu", "model": {"arch": "mlp", "num_classes": 10},
                      "forget": {"classes": [0]}, "unlearn": {}, "typo": 1}, "c.yaml")
    assert str(e.value) == "c.yaml: typo: unknown key"


def test_cli_prints_them_on_one_error_line_with_exit_2(tmp_path):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(BROKEN))
    r = CliRunner().invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cfg}: seed: ") and lines[0].endswith("(6 problems)")
    assert not (tmp_path / "releases").exists()
