"""The deployer's policy for `pipeline verify`: thresholds and required evidence.

A release's manifest records the gates its producer chose; a deployer does not
take them from the file it is checking. ``pipeline verify`` applies this
policy (``--policy POLICY.yaml``, then the threshold flags), or the documented
default gates when none is given; the manifest's own gate settings are shown,
never obeyed. A policy file is YAML, validated strictly like a config
(unknown keys, wrong types and out-of-range values are errors naming the key):

    gates:                        # verify.gates' fields (GatesConfig); omitted: the defaults
      acc_f_max: 0.01
      acc_r_drop_max: 0.035
      probe_auc_max: null         # the optional evidence gates, off unless set
    require_signature: false      # true: release.sig must verify (--public-key or public_key)
    public_key: null              # the producer's PEM public key (--public-key overrides)
    require_source_weights: false # true: ΔAcc_R and graph_unchanged against --source-weights
    require_cwm: false            # true: a release whose config says cwm.mode none fails

``gates.parity_atol`` and ``gates.nhle_completed`` are accepted (the same
section as a config's) but concern the producer's PyTorch model, which verify
does not have: they are not applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nhle_pipeline.pipeline import yamlio
from nhle_pipeline.pipeline.config import _format_validation_error
from nhle_pipeline.pipeline.errors import ConfigError
from nhle_pipeline.verify.gates import GatesConfig

# The threshold flags of `pipeline verify`, as GatesConfig fields.
THRESHOLD_FLAGS = {
    "acc_f_max": "--acc-f-max",
    "acc_r_drop_max": "--acc-r-drop-max",
    "ratio_d_max_relative": "--ratio-d-max-relative",
    "probe_auc_max": "--probe-auc-max",
    "mia_efficacy_min": "--mia-efficacy-min",
}


class Policy(BaseModel):
    """What the deployer requires of a release (strict: unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    gates: GatesConfig = Field(default_factory=GatesConfig)
    require_signature: bool = False
    public_key: str | None = None
    require_source_weights: bool = False
    require_cwm: bool = False


def load_policy(path: str | Path | None, overrides: dict[str, Any] | None = None) -> tuple[Policy, str]:
    """The policy from ``path`` (None: the defaults) with the threshold flags in ``overrides``
    (GatesConfig field -> value; None values are left out); returns it and where it came from."""
    data: Any = {}
    source = "default gates"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: no such policy file")
        try:
            data = yamlio.load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot read as UTF-8 text ({e})") from e
        except (yaml.YAMLError, RecursionError, ValueError) as e:
            raise ConfigError(f"{p}: invalid YAML ({' '.join(str(e).split())[:200]})") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping (gates, require_signature, ...), got {type(data).__name__}")
        try:
            policy = Policy.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{p}: {_format_validation_error(e)}") from e
    else:
        policy = Policy()
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    if flags:
        unknown = sorted(set(flags) - set(THRESHOLD_FLAGS))
        if unknown:
            raise ConfigError(f"policy: unknown threshold(s) {unknown}")
        for key, value in flags.items():
            try:
                GatesConfig.model_validate({key: value})
            except ValidationError as e:
                raise ConfigError(f"{THRESHOLD_FLAGS[key]}: {_format_validation_error(e).split(': ', 1)[-1]}") from e
        gates = GatesConfig.model_validate({**policy.gates.model_dump(), **flags})
        policy = policy.model_copy(update={"gates": gates})
        source += " + " + ", ".join(f"{THRESHOLD_FLAGS[k]} {v}" for k, v in flags.items())
    return policy, source
