"""Shared fixtures and markers. Timing-sensitive tests scale their waits by
RXAGENT_TEST_TIME_SCALE (tests/_helpers.py: ``TIME_SCALE``, ``MS``, ``until()``).

Markers (registered in pyproject.toml): ``kafka`` is set here on every test under
tests/kafka/ and every test using a Kafka fixture; ``slow`` (more than about 5 s) is set
by the tests themselves. ``pytest -m "not kafka and not slow"`` is the quick loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _helpers import TIME_SCALE
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def time_scale() -> float:
    return TIME_SCALE


_KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
#: fixtures of tests/kafka/conftest.py that start or reach the broker
_KAFKA_FIXTURES = frozenset(
    {"kafka_bootstrap", "kafka_topic", "kafka_produce", "restartable_kafka"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _KAFKA_DIR in item.path.parents or fixtures & _KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
