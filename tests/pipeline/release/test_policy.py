"""The deployer's policy (pipeline/release/policy.py) and the NaN-safe reproduction check."""

from __future__ import annotations

import math

import pytest

from nhle_pipeline.pipeline.errors import ConfigError
from nhle_pipeline.pipeline.release.check_numbers import reproduction_drift
from nhle_pipeline.pipeline.release.policy import Policy, load_policy
from nhle_pipeline.verify.gates import GatesConfig


def test_no_policy_is_the_documented_default_gates():
    policy, source = load_policy(None)
    assert policy == Policy() and policy.gates == GatesConfig() and source == "default gates"
    assert not (policy.require_signature or policy.require_source_weights or policy.require_cwm)


def test_a_policy_file_then_the_flags(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("gates:\n  acc_f_max: 0.0\n  probe_auc_max: 0.9\nrequire_signature: true\npublic_key: k.pub\n")
    policy, source = load_policy(p, {"acc_r_drop_max": 0.01, "acc_f_max": None})
    assert policy.gates.acc_f_max == 0.0 and policy.gates.probe_auc_max == 0.9
    assert policy.gates.acc_r_drop_max == 0.01 and policy.require_signature and policy.public_key == "k.pub"
    assert source == f"{p} + --acc-r-drop-max 0.01"


@pytest.mark.parametrize("text, message", [
    ("gates:\n  acc_f_maxx: 0.1\n", "gates.acc_f_maxx: unknown key"),
    ("require_signatures: true\n", "require_signatures: unknown key"),
    ("gates:\n  acc_f_max: '0.1'\n", "gates.acc_f_max"),
    ("gates:\n  acc_f_max: 2\n", "gates.acc_f_max"),
    ("require_signature: 'yes'\n", "require_signature"),
    ("- a list\n", "expected a mapping"),
    ("gates: [\n", "invalid YAML"),
])
def test_a_bad_policy_file_is_one_line_naming_the_key(tmp_path, text, message):
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_policy(p)


def test_a_missing_policy_file_and_a_bad_flag(tmp_path):
    with pytest.raises(ConfigError, match="no such policy file"):
        load_policy(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="--acc-f-max: .*less than or equal to 1"):
        load_policy(None, {"acc_f_max": 1.5})
    with pytest.raises(ConfigError, match="--probe-auc-max"):
        load_policy(None, {"probe_auc_max": -0.1})


def test_an_empty_policy_file_is_the_defaults(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("")
    assert load_policy(p)[0] == Policy()


@pytest.mark.parametrize("pairs, expected", [
    ([(0.5, 0.5), (0.2, 0.2001)], pytest.approx(1e-4)),
    ([(math.nan, math.nan), (0.1, 0.1)], 0.0),  # NaN on both sides agrees
    ([(0.1, 0.1), (math.nan, 0.3)], math.inf),  # not in first position: still fails
    ([(0.1, 0.1), (0.3, math.nan)], math.inf),
    ([(math.inf, 1.0)], math.inf),
    ([(1.0, 1.0), (0.0, 0.5), (math.nan, 0.0)], math.inf),
])
def test_drift_lets_no_one_sided_nan_through(pairs, expected):
    assert reproduction_drift(pairs) == expected
