"""Every head shape (pipeline/models.py find_heads): several Linear heads whose outputs are
combined, a 1x1 Conv head; CWM masks each, and the output-level gate holds on the release."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.models import build_model, find_heads
from tests import factories
from tests.conftest import digits_config, write_config

SHAPE = (1, 8, 8)


def test_both_heads_of_a_two_head_model_are_found():
    assert find_heads(factories.two_heads(10), 10, None, SHAPE) == ["head_dist", "head"]  # the last Linear first
    assert find_heads(factories.two_heads(10), 10, ["head", "head_dist"], SHAPE) == ["head", "head_dist"]


def test_a_hidden_layer_as_wide_as_the_classes_is_not_a_head():
    assert find_heads(factories.hidden_of_class_width(10), 10, None, SHAPE) == ["3"]


def test_a_1x1_conv_head_is_found():
    assert find_heads(factories.conv_head(10), 10, None, SHAPE) == ["classifier.1"]


@pytest.mark.parametrize("names, expect", [
    (["head", "head"], "distinct names"),
    ([], "distinct names"),
    (["head", "body.1"], "'body.1' has 32 outputs"),
    ("nope", "'nope' is not an nn.Linear or 1x1 nn.Conv2d"),
])
def test_bad_head_names_are_model_errors(names, expect):
    with pytest.raises(ModelError, match="model.head") as e:
        find_heads(factories.two_heads(10), 10, names, SHAPE)
    assert expect in str(e.value)


def test_registry_models_keep_their_one_head():
    m = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert find_heads(m, 10, None, (3, 32, 32)) == ["fc"]


@pytest.mark.slow
@pytest.mark.parametrize("factory, heads", [("two_heads", ["head_dist", "head"]), ("conv_head", ["classifier.1"])])
def test_each_head_shape_trains_releases_masked_at_the_output_and_verifies(tmp_path, factory, heads):
    """The DeiT-distilled shape (before: only one head masked, the forgotten logit still moved
    with the input) and the SqueezeNet shape (before: refused), end to end."""
    from nhle_pipeline.pipeline.cli import cli

    weights = tmp_path / "m.safetensors"
    cfg = write_config(tmp_path / "c.yaml", digits_config(
        weights, tmp_path / "releases", model={"arch": f"tests.factories:{factory}", "trust_code": True},
        train={"epochs": 15}))
    runner = CliRunner()
    assert runner.invoke(cli, ["train", str(cfg)]).exit_code == 0
    r = runner.invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 0, r.output
    rel = tmp_path / "releases" / "digits-test"
    m = json.loads((rel / "manifest.json").read_text())
    assert m["head"] == heads[0] and (m["heads"] or [m["head"]]) == heads
    assert m["metrics"]["output_masked"] is True and m["metrics"]["forgotten_logit_spread"] == 0.0
    v = runner.invoke(cli, ["verify", str(rel)])
    assert v.exit_code == 0, v.output
    assert "[✓] output_masked" in v.output and "[✓] cwm_in_graph" in v.output


def test_a_head_without_a_bias_is_refused_before_any_work_unless_cwm_zero(tmp_path):
    """calibrated and suppress set the forgotten classes' bias: a bias-free head gets one line and
    exit 2 naming model.head before the data is measured; mode zero loads it."""
    from safetensors.torch import save_file

    from nhle_pipeline.pipeline.cli import cli
    from nhle_pipeline.pipeline.config import load_config
    from nhle_pipeline.pipeline.loading import load_inputs

    weights = tmp_path / "m.safetensors"
    save_file(factories.bias_free_head(10).state_dict(), str(weights))
    model = {"arch": "tests.factories:bias_free_head", "trust_code": True}
    cfg = write_config(tmp_path / "c.yaml", digits_config(weights, tmp_path / "releases", model=model))
    r = CliRunner().invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 2, r.output
    assert "model.head: '3' has no bias, which unlearn.cwm.mode 'calibrated' sets" in r.output
    assert not (tmp_path / "releases").exists()
    zero = write_config(tmp_path / "z.yaml", digits_config(weights, tmp_path / "releases", model=model,
                                                           unlearn={"cwm": {"mode": "zero"}}))
    assert load_inputs(load_config(zero)).head_name == "3"
