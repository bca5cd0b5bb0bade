"""The rxagent pytest plugin: marble and virtual-time fixtures.

Installed with rxagent (entry point ``pytest11``: ``rxagent``), so any test can
ask for:

``test_scheduler``
    a fresh :class:`reactivex.testing.TestScheduler` (virtual time, at 0).
``marble_frame``
    the length of one marble frame in seconds: the ``rxagent_marble_frame``
    ini option (``"1ms"``, ``"0.5s"``, ``"0.001"``; default 1 ms, as in RxJS).
    Override the fixture to change it for a module.
``marbles``
    a :class:`~rxagent.testing.marbles.Marbles`: ``assert_marbles``, ``run``,
    ``parse``, ``time`` and ``render`` bound to ``test_scheduler`` and
    ``marble_frame``; during the test it is the current kit, so
    :func:`~rxagent.testing.cold`, :func:`~rxagent.testing.hot` and
    :func:`~rxagent.testing.expect_observable` use it, and their assertions
    run when the test function returns (as RxJS's ``run`` flushes at the end).

Disable with ``pytest -p no:rxagent``.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from .marbles import Marbles

__all__ = [
    "marble_frame",
    "marbles",
    "parse_frame",
    "pytest_addoption",
    "pytest_runtest_call",
    "scheduler_fixture",
]

_FRAME_INI = "rxagent_marble_frame"
_FRAME = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_frame(text: str) -> float:
    """``"1ms"`` -> 0.001; a bare number is seconds."""
    m = _FRAME.fullmatch(text)
    seconds = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if seconds <= 0:
        raise pytest.UsageError(
            f"{_FRAME_INI} must be a positive duration such as '1ms', '0.5s' or '0.001', "
            f"got {text!r}"
        )
    return seconds


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini option setting the length of one frame of the ``marbles`` fixture (default 1
    ms)."""
    parser.addini(
        _FRAME_INI,
        "length of one marble frame for the rxagent `marbles` fixture (default: 1ms)",
        default="1ms",
    )


@pytest.fixture(name="test_scheduler")
def scheduler_fixture() -> TestScheduler:
    """A fresh virtual-time scheduler, its clock at 0."""
    return TestScheduler()


@pytest.fixture
def marble_frame(request: pytest.FixtureRequest) -> float:
    """Seconds per marble frame, from the ``rxagent_marble_frame`` ini option."""
    value = request.config.getini(_FRAME_INI)
    return parse_frame(str(value))


@pytest.fixture
def marbles(test_scheduler: TestScheduler, marble_frame: float) -> Generator[Marbles]:
    """The marble kit on ``test_scheduler`` with ``marble_frame``-long frames,
    current for the test (``cold()``, ``hot()`` and ``expect_observable()`` use it)."""
    kit = Marbles(test_scheduler, frame=marble_frame)
    kit.activate()
    try:
        yield kit
    finally:
        kit.deactivate()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """After a test using the ``marbles`` fixture returns, flush the kit: the
    ``to_be`` assertions it holds fail the test itself, not its teardown."""
    result = yield
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    kit = funcargs.get("marbles")
    if isinstance(kit, Marbles):
        kit.close()
    return result
