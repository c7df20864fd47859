"""Test-only hooks: inert unless an environment variable asks for them.

``PIPELINE_TEST_PAUSE_AT=<stage>`` makes the runner sleep at the start of that
stage (``PIPELINE_TEST_PAUSE_S`` seconds, default 60), so that
``tests/test_interrupts.py`` can kill or interrupt a run at a known point
(verify and release take milliseconds on digits: too short to hit by polling).

``PIPELINE_TEST_DIE_RANK=<rank>`` makes that rank of a torchrun group exit
abruptly (``os._exit(1)``) when it is asked to measure, so that
``tests/test_distributed.py`` can check that a dead rank releases nothing.
"""

from __future__ import annotations

import os
import time

PAUSE_AT_ENV = "PIPELINE_TEST_PAUSE_AT"
PAUSE_SECONDS_ENV = "PIPELINE_TEST_PAUSE_S"
DEFAULT_PAUSE_S = 60.0
DIE_RANK_ENV = "PIPELINE_TEST_DIE_RANK"


def pause_at(stage: str) -> None:
    """Sleep here when ``PIPELINE_TEST_PAUSE_AT`` names ``stage``; otherwise return at once."""
    if os.environ.get(PAUSE_AT_ENV) == stage:
        time.sleep(float(os.environ.get(PAUSE_SECONDS_ENV, DEFAULT_PAUSE_S)))


def die_if_rank(rank: int) -> None:
    """Exit at once, with no cleanup, when ``PIPELINE_TEST_DIE_RANK`` names ``rank``."""
    if os.environ.get(DIE_RANK_ENV) == str(rank):
        os._exit(1)
