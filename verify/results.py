"""The base of every result verify computes and the manifest records.

One type per result: the value a metric function returns (``Accuracy``, ``Evidence``,
``Audit``, ``GateResult``, CWM's ``Calibration``) is the record the manifest holds, read
back as the same type. Unknown keys are refused (a manifest is untrusted input), values
are immutable once made, and NaN stays NaN in JSON (a metric that could not be measured
fails its gate; it is never dropped).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (the manifest's JSON, before serialisation)."""
        return self.model_dump()
