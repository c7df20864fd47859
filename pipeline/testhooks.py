"""Test-only hooks: inert unless an environment variable asks for them.

``PIPELINE_TEST_PAUSE_AT=<stage>`` makes the runner sleep at the start of that
stage (``PIPELINE_TEST_PAUSE_S`` seconds, default 60), so that
``tests/test_interrupts.py`` can kill or interrupt a run at a known point
(verify and release take milliseconds on digits: too short to hit by polling).
"""

from __future__ import annotations

import os
import time

PAUSE_AT_ENV = "PIPELINE_TEST_PAUSE_AT"
PAUSE_SECONDS_ENV = "PIPELINE_TEST_PAUSE_S"
DEFAULT_PAUSE_S = 60.0


def pause_at(stage: str) -> None:
    """Sleep here when ``PIPELINE_TEST_PAUSE_AT`` names ``stage``; otherwise return at once."""
    if os.environ.get(PAUSE_AT_ENV) == stage:
        time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, DEFAULT_PAUSE_S)))
