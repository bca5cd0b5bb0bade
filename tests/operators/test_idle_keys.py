"""Per-key operators forget keys that come and go (issue 12): the keys held follow
the live keys, not every key ever seen, and each eviction is counted."""

from __future__ import annotations

from typing import Any

import pytest
from reactivex.scheduler import VirtualTimeScheduler

from rxagent import ConfigurationError
from rxagent import operators as ops
from rxagent.operators.reorder import reorder
from rxagent.testing import run


def rotating(keys: int, per_key: int) -> list[dict[str, Any]]:
    """Each key seen ``per_key`` times in sequence order, then never again."""
    return [{"k": f"order-{k}", "n": n} for k in range(keys) for n in range(per_key)]


async def test_reorder_keys_held_stay_under_max_keys_under_rotating_keys() -> None:
    op = reorder("n", key="k", max_delay=0.01, max_keys=100, key_idle=None, name="ro")
    items = rotating(5000, 3)
    result = await run(items, op, batch_size=64, credit=256)
    assert result.values == items  # in order: passed on as they came
    stage = result.status.stages["ro"]
    # 100 keys, plus the new keys of one batch before the next sweep
    assert stage["keys"] <= 100 + 64
    assert stage["keys_evicted"] >= 5000 - 100 - 64


async def test_reorder_forgets_keys_idle_for_key_idle_in_virtual_time() -> None:
    clock = VirtualTimeScheduler()

    def tick(_value: Any) -> None:  # 1 ms of virtual time per event
        clock.advance_by(0.001)

    op = reorder(
        "n", key="k", max_delay=0.005, key_idle=0.5, max_keys=None, scheduler=clock, name="ro"
    )
    items = rotating(4000, 3)  # 12 s of virtual time, a new key every 3 ms
    result = await run(items, ops.tap(tick), op, batch_size=16, credit=64)
    assert result.values == items
    stage = result.status.stages["ro"]
    # keys idle for 0.5-1 s are gone: at 3 ms per key, at most ~340 remain, not 4,000
    assert stage["keys"] <= 400
    assert stage["keys_evicted"] >= 4000 - 400


def test_reorder_refuses_bad_bounds() -> None:
    with pytest.raises(ConfigurationError, match="key_idle must be a number of seconds > 0"):
        reorder("n", max_delay=1, key_idle=0)
    with pytest.raises(ConfigurationError, match="max_keys must be an int >= 1"):
        reorder("n", max_delay=1, max_keys=0)


async def test_count_window_forgets_a_key_once_its_window_closed() -> None:
    # 3,000 keys, each seen exactly twice in a row: every window closes, none stays open
    items = [{"k": f"k{i // 2}", "n": i} for i in range(6_000)]
    result = await run(items, ops.count_window(2, key="k"), batch_size=64)
    assert len(result.values) == 3_000
    assert all(w.count == 2 for w in result.values)
    assert result.status.stages["count_window"]["open_windows"] == 0, "closed keys kept"


@pytest.mark.parametrize(
    "make",
    [
        lambda: ops.throttle_first(0.001, key="k"),
        lambda: ops.rate_limit(1, 0.001, key="k"),
    ],
    ids=["throttle_first", "rate_limit"],  # throttle_last drops a key when it fires
)
async def test_throttles_forget_keys_that_come_and_go_and_count_it(make: Any) -> None:
    items = [{"k": f"k{i}"} for i in range(20_000)]  # every key seen once
    result = await run(items, make(), batch_size=256, credit=1024)
    (stage,) = result.status.stages.values()
    assert stage.get("keys_evicted", 0) > 10_000, {k: v for k, v in stage.items() if "key" in k}
    assert stage["keys"] < 5_000, "keys held follow the live keys, not every key seen"
