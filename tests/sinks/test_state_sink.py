"""The state sink without a reducer (issue 16): of a key's rows in one batch only the
newest counts (and only its ``value(...)`` is computed), one-row batches go through
``StateStore.write_value``, and either way the store ends as ``apply`` of those rows."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rxagent import Position, StateStore
from rxagent.context import PipelineContext
from rxagent.events import Batch

#: one batch: rows of (key, value, offset or None)
ROWS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", 1, ("t", 2)]),
        st.integers(0, 99),
        st.one_of(st.none(), st.integers(0, 20)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.tuples(ROWS, st.sampled_from([0, 1])), max_size=12))
def test_the_sink_applies_each_keys_newest_row(
    batches: list[tuple[list[tuple[Any, int, int | None]], int]],
) -> None:
    ctx = PipelineContext("p", clock=lambda: 1000.0)
    plain, picked, want = (StateStore(n, clock=lambda: 1000.0) for n in ("a", "b", "c"))
    computed: list[int] = []

    def pick(value: dict[str, int]) -> int:
        computed.append(value["v"])
        return value["v"]

    sinks = [plain.sink(), picked.sink(value=pick)]
    for sink in sinks:
        sink.bind(ctx)
    for rows, partition in batches:
        keys = [k for k, _, _ in rows]
        offsets = [o for _, _, o in rows]
        times = [float(i) for i in range(len(rows))]
        newest = {k: i for i, k in enumerate(keys)}  # each key's last row
        computed.clear()
        for sink, values in zip(
            sinks, ([v for _, v, _ in rows], [{"v": v} for _, v, _ in rows]), strict=True
        ):
            sink.on_batch(
                Batch(
                    values,
                    ctx=ctx,
                    source="src",
                    time=0.0,
                    keys=keys,
                    times=times,
                    positions=offsets,
                    partition=partition,
                )
            )
        assert sorted(computed) == sorted(rows[i][1] for i in newest.values())
        want.apply(
            [
                (
                    k,
                    rows[i][1],
                    times[i],
                    None if offsets[i] is None else Position("src", partition, offsets[i]),
                )
                for k, i in newest.items()
            ]
        )
    for store in (plain, picked):
        assert store.version == want.version
        assert store.ignored == want.ignored
        snap, expected = store.snapshot, want.snapshot
        assert snap.to_dict() == expected.to_dict()
        assert {k: snap.entry(k) for k in snap} == {k: expected.entry(k) for k in expected}
    stage = ctx.stage(sinks[0].name)
    assert stage.events_in == sum(len(rows) for rows, _ in batches)
