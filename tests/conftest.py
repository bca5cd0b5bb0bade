"""Shared fixtures. Timing-sensitive tests scale their waits by RXAGENT_TEST_TIME_SCALE."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Multiply real-time waits by this on slow machines.
TIME_SCALE = float(os.environ.get("RXAGENT_TEST_TIME_SCALE", "1"))


@pytest.fixture
def time_scale() -> float:
    return TIME_SCALE
