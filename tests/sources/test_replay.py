"""ReplaySource: a recording plays back the same events, at the recorded pace or in virtual time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
from _helpers import until
from reactivex.testing import TestScheduler

from rxagent import ConfigurationError, Pipeline, PipelineError, StateStore, sources
from rxagent import operators as ops
from rxagent.events import Batch, Event
from rxagent.recording import RecordingError, encode_event, encode_header
from rxagent.sinks import MemoryDeadLetters, Sink, Snapshot
from rxagent.sinks.record import RecordSink
from rxagent.sources.replay import ReplaySource, replay


class Probe(Sink):
    """Notes each event with the pipeline clock at arrival, and each batch's size."""

    kind = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, Event]] = []
        self.batches: list[int] = []

    def on_batch(self, batch: Batch) -> None:
        now = batch.ctx.now()
        self.batches.append(len(batch))
        self.arrivals.extend((now, event) for event in batch.events())
        batch.end_all()

    @property
    def values(self) -> list[Any]:
        return [event.value for _, event in self.arrivals]


def write_recording(path: Path, events: list[dict[str, Any]], *, source: str = "feed") -> Path:
    """A recording with one session; each event is the keyword arguments of encode_event."""
    lines = [encode_header(created=0.0, source=source)]
    lines += [encode_event(**event) for event in events]
    path.write_bytes(b"".join(lines))
    return path


def _state(snapshot: Snapshot) -> dict[Hashable, tuple[Any, Any, Any]]:
    """What a replay must reproduce: value, event time and source position of each key."""
    return {e.key: (e.value, e.event_time, e.position) for e in snapshot.entries()}


# -- same events, same state -------------------------------------------------------------


async def test_replay_reproduces_the_final_state_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "ticks.jsonl"
    ticks = [
        {"sym": sym, "px": 100.0 + i, "ts": 1_700_000_000.0 + i}
        for i, sym in enumerate(["AAPL", "MSFT", "AAPL", "NVDA", "MSFT", "AAPL"] * 50)
    ]

    def operators() -> list[ops.Operator]:
        return [
            ops.filter(lambda v: v["px"] % 7 != 0),
            ops.key_by("sym"),
            ops.event_time("ts"),
        ]

    live = StateStore("live")
    source = sources.memory(ticks, name="ticks", batch_size=16)
    await Pipeline("live", source).pipe(*operators()).to(live.sink(), RecordSink(path)).run()
    assert len(live) == 3

    replayed = StateStore("replayed")
    await Pipeline("replay", replay(path)).pipe(*operators()).to(replayed.sink()).run()
    assert replayed.snapshot.to_dict() == live.snapshot.to_dict()
    assert _state(replayed.snapshot) == _state(live.snapshot)

    # a second replay into the same store changes nothing: positions are not newer
    version, ignored = replayed.version, replayed.ignored
    await Pipeline("again", replay(path)).pipe(*operators()).to(replayed.sink()).run()
    assert replayed.version == version
    # every update was ignored as a replay (one per key and batch: the newest row of
    # a key in a batch stands for the others)
    assert replayed.ignored > ignored
    assert _state(replayed.snapshot) == _state(live.snapshot)

    # nor does replaying into the store the live feed built: the replay takes the
    # recorded source's name, so its positions are the live run's
    version = live.version
    await Pipeline("over-live", replay(path)).pipe(*operators()).to(live.sink()).run()
    assert live.version == version


async def test_emits_values_keys_times_headers_and_recorded_positions(tmp_path: Path) -> None:
    path = write_recording(
        tmp_path / "r.jsonl",
        [
            {"t": 1.0, "value": {"a": 1}, "key": ("x", 1), "time": 5.0, "offset": 10},
            {"t": 1.0, "value": b"\x00raw", "key": b"k", "offset": 11, "headers": {"h": b"v"}},
            {"t": 2.0, "value": [1, 2]},  # no offset: its line number is its position
        ],
        source="kafka",
    )
    src = replay(path)
    assert src.name == "kafka"
    probe = Probe()
    await Pipeline("p", src).to(probe).run()
    events = [event for _, event in probe.arrivals]
    assert [e.value for e in events] == [{"a": 1}, b"\x00raw", [1, 2]]
    assert [e.key for e in events] == [("x", 1), b"k", None]
    assert [e.time for e in events] == [5.0, None, None]
    assert [e.headers for e in events] == [None, {"h": b"v"}, None]
    assert [str(e.position) for e in events] == ["kafka@10", "kafka@11", "kafka@4"]


async def test_partitions_are_kept_and_batched_apart(tmp_path: Path) -> None:
    path = write_recording(
        tmp_path / "r.jsonl",
        [{"t": 0.0, "value": i, "partition": i // 2, "offset": i} for i in range(6)],
    )
    probe = Probe()
    pipeline = Pipeline("p", replay(path))
    await pipeline.to(probe).run()
    assert probe.batches == [2, 2, 2]
    assert [e.position.partition for _, e in probe.arrivals if e.position] == [0, 0, 1, 1, 2, 2]
    assert pipeline.flow is not None
    assert pipeline.flow.watermarks() == {0: 2, 1: 4, 2: 6}


async def test_fast_replay_respects_credit(tmp_path: Path) -> None:
    path = write_recording(
        tmp_path / "r.jsonl", [{"t": 0.0, "value": i, "offset": i} for i in range(200)]
    )
    probe = Probe()
    status = await Pipeline("p", replay(path, credit=8)).to(probe).run()
    assert probe.values == list(range(200))
    assert status.flow["peak_in_flight"] <= 8
    assert max(probe.batches) <= 8


async def test_other_sources_are_skipped_unless_asked_for(tmp_path: Path) -> None:
    path = write_recording(
        tmp_path / "r.jsonl",
        [
            {"t": 0.0, "value": "a0", "source": "a", "offset": 0},
            {"t": 0.0, "value": "b0", "source": "b", "offset": 0},
            {"t": 0.0, "value": "a1", "source": "a", "offset": 1},
        ],
        source="a",
    )
    default, only_b, every = Probe(), Probe(), Probe()
    src = replay(path)
    await Pipeline("d", src).to(default).run()
    await Pipeline("b", replay(path, source="b")).to(only_b).run()
    await Pipeline("all", replay(path, source="*", name="mixed")).to(every).run()
    assert default.values == ["a0", "a1"]
    assert src.skipped == 1
    assert only_b.values == ["b0"]
    assert every.values == ["a0", "b0", "a1"]


# -- bad lines -----------------------------------------------------------------------------


def _with_bad_lines(path: Path) -> Path:
    lines = [
        encode_header(created=0.0, source="feed"),
        encode_event(0.0, "first", offset=0),
        b"{broken\n",
        encode_event(0.0, "second", offset=1),
        b'{"t": 0.0, "value": "cut',  # the recorder died here
    ]
    path.write_bytes(b"".join(lines))
    return path


async def test_a_bad_line_fails_the_replay_naming_file_and_line(tmp_path: Path) -> None:
    path = _with_bad_lines(tmp_path / "bad.jsonl")
    probe = Probe()
    with pytest.raises(PipelineError, match=r"bad\.jsonl:3: not valid JSON") as caught:
        await Pipeline("p", replay(path)).to(probe).run()
    assert isinstance(caught.value.__cause__, RecordingError)
    assert caught.value.__cause__.line == 3
    assert probe.values == ["first"], "the events before the bad line went out"


async def test_bad_lines_can_go_to_dead_letters_instead(tmp_path: Path) -> None:
    path = _with_bad_lines(tmp_path / "bad.jsonl")
    probe = Probe()
    letters = MemoryDeadLetters()
    src = replay(path, on_error="dead_letter")
    status = await Pipeline("p", src, dead_letters=letters).to(probe).run()
    assert status.completed
    assert probe.values == ["first", "second"]
    assert [(dl.stage, dl.error_type) for dl in letters] == [
        ("feed", "RecordingError"),
        ("feed", "RecordingError"),
    ]
    broken, cut = letters.letters
    assert broken.event.value == "{broken"
    assert broken.message.startswith(f"{path}:3: not valid JSON")
    assert cut.event.position is not None
    assert cut.event.position.offset == 5
    assert "cut short" in cut.message
    assert src.bad_lines == 2


def test_missing_file_and_bad_options_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot open recording"):
        ReplaySource(tmp_path / "nope.jsonl")
    path = write_recording(tmp_path / "r.jsonl", [])
    with pytest.raises(ConfigurationError, match="speed must be a positive number"):
        ReplaySource(path, speed=0)
    with pytest.raises(ConfigurationError, match="on_error must be one of"):
        ReplaySource(path, on_error="ignore")  # type: ignore[arg-type]


async def test_an_empty_recording_completes(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "r.jsonl", [])
    probe = Probe()
    status = await Pipeline("p", replay(path, speed=1.0)).to(probe).run()
    assert status.completed
    assert probe.values == []


# -- real-time pacing --------------------------------------------------------------------------


async def test_paced_replay_follows_the_recorded_gaps_divided_by_speed(
    tmp_path: Path, time_scale: float
) -> None:
    # 0.4 s of recording; at speed 2 it should take about 0.2 s
    times = [0.0, 0.1, 0.1, 0.1, 0.25, 0.4]
    path = write_recording(
        tmp_path / "r.jsonl",
        [{"t": 1000.0 + t, "value": i, "offset": i} for i, t in enumerate(times)],
    )
    probe = Probe()
    started = time.perf_counter()
    await Pipeline("p", replay(path, speed=2.0)).to(probe).run()
    took = time.perf_counter() - started
    assert 0.18 <= took < 0.6 * time_scale
    assert probe.values == list(range(6))
    # the three events recorded together leave together, in one batch
    assert probe.batches == [1, 3, 1, 1]
    arrived = [at - probe.arrivals[0][0] for at, _ in probe.arrivals]
    for at, expected in zip(arrived, times, strict=True):
        assert expected / 2 - 0.005 <= at <= expected / 2 + 0.1 * time_scale


async def test_a_late_pipeline_catches_up_in_batches(tmp_path: Path, time_scale: float) -> None:
    path = write_recording(
        tmp_path / "r.jsonl",
        [{"t": i * 0.001, "value": i, "offset": i} for i in range(300)],
    )
    probe = Probe()
    started = time.perf_counter()
    await Pipeline("p", replay(path, speed=1.0)).to(probe).run()
    assert time.perf_counter() - started < 1.5 * time_scale
    assert probe.values == list(range(300))
    # 300 events 1 ms apart: the loop's timer cannot wake 300 times on time, so
    # events already due leave together rather than one sleep each
    assert len(probe.batches) < 300


async def test_draining_a_paced_replay_stops_it_promptly(tmp_path: Path, time_scale: float) -> None:
    path = write_recording(tmp_path / "r.jsonl", [{"t": 0.0, "value": 0}, {"t": 60.0, "value": 1}])
    probe = Probe()
    pipeline = Pipeline("p", replay(path, speed=1.0)).to(probe)
    await pipeline.start()
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    status = await pipeline.drain(timeout=1.0)
    assert time.perf_counter() - started < 0.5 * time_scale
    assert str(status.state) == "stopped"
    assert probe.values == [0]


async def test_sessions_are_replayed_without_the_pause_between_them(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b"".join(
            [
                encode_header(created=0.0, source="feed"),
                encode_event(100.0, "a", offset=0),
                encode_event(100.1, "b", offset=1),
                # the recorder was down for an hour, then appended a new session
                encode_header(created=3700.0, source="feed"),
                encode_event(3700.0, "c", offset=2),
                encode_event(3699.0, "d", offset=3),  # its clock stepped back
            ]
        )
    )
    sched = TestScheduler()
    probe = Probe()
    pipeline = Pipeline("p", replay(path, virtual=True)).to(probe)
    await pipeline.start(scheduler=sched)
    await pipeline.wait()
    offsets = [at for at, _ in probe.arrivals]
    assert probe.values == ["a", "b", "c", "d"]
    assert offsets == pytest.approx([0.0, 0.1, 0.1, 0.1], abs=1e-5)


# -- virtual time ---------------------------------------------------------------------------------


async def test_an_hour_replays_in_virtual_time_at_the_recorded_times(
    tmp_path: Path, time_scale: float
) -> None:
    # one event every 3 s for an hour, and a burst of three at the half hour
    recorded = [i * 3.0 for i in range(1200)] + [1800.0, 1800.0]
    recorded.sort()
    path = write_recording(
        tmp_path / "hour.jsonl",
        [{"t": 1_700_000_000.0 + t, "value": i, "offset": i} for i, t in enumerate(recorded)],
    )
    sched = TestScheduler()
    probe = Probe()
    pipeline = Pipeline("p", replay(path, virtual=True, batch_size=64)).to(probe)
    started = time.perf_counter()
    await pipeline.start(scheduler=sched)
    status = await pipeline.wait()
    assert time.perf_counter() - started < 3.0 * time_scale
    assert status.completed
    assert probe.values == list(range(len(recorded)))
    assert [at for at, _ in probe.arrivals] == pytest.approx(recorded, abs=1e-5)
    assert sched.clock == pytest.approx(3597.0, abs=1e-5)
    # the burst recorded at one instant arrives as one batch
    assert 3 in probe.batches


async def test_virtual_replay_driven_by_the_test_emits_at_the_recorded_times(
    tmp_path: Path,
) -> None:
    recorded = [0.0, 2.0, 2.0, 5.5]
    path = write_recording(
        tmp_path / "r.jsonl",
        [{"t": 50.0 + t, "value": i, "offset": i} for i, t in enumerate(recorded)],
    )
    sched = TestScheduler()
    sched.advance_to(10.0)  # the replay starts wherever the clock is
    src = replay(path, virtual=True, drive=False, speed=0.5)  # half speed: gaps doubled
    probe = Probe()
    pipeline = Pipeline("p", src).to(probe)
    await pipeline.start(scheduler=sched)
    await until(lambda: src.scheduled == len(recorded))
    assert probe.values == [], "nothing is emitted before its time"

    expected = [10.0 + 2 * t for t in recorded]  # 10, 14, 14, 21
    sched.advance_to(13.999)
    assert probe.values == [0]
    sched.advance_to(14.0)
    assert probe.values == [0, 1, 2]
    sched.advance_to(20.999)
    assert probe.values == [0, 1, 2]
    sched.advance_to(21.0)
    status = await asyncio.wait_for(pipeline.wait(), 2.0)
    assert status.completed
    assert [at for at, _ in probe.arrivals] == pytest.approx(expected, abs=1e-5)


async def test_stopping_a_virtual_replay_gives_scheduled_credit_back(tmp_path: Path) -> None:
    path = write_recording(
        tmp_path / "r.jsonl", [{"t": float(i), "value": i, "offset": i} for i in range(10)]
    )
    sched = TestScheduler()
    src = replay(path, virtual=True, drive=False)
    probe = Probe()
    pipeline = Pipeline("p", src).to(probe)
    await pipeline.start(scheduler=sched)
    await until(lambda: src.scheduled == 10)
    sched.advance_to(3.0)
    assert probe.values == [0, 1, 2, 3]
    assert pipeline.flow is not None
    assert pipeline.flow.in_flight == 6
    await pipeline.stop()
    assert pipeline.flow.in_flight == 0
    sched.advance_to(100.0)
    assert probe.values == [0, 1, 2, 3], "cancelled emissions never fire"


async def test_virtual_replay_on_the_asyncio_scheduler_runs_in_real_time(
    tmp_path: Path, time_scale: float
) -> None:
    path = write_recording(tmp_path / "r.jsonl", [{"t": 0.0, "value": 0}, {"t": 0.05, "value": 1}])
    probe = Probe()
    started = time.perf_counter()
    await Pipeline("p", replay(path, virtual=True)).to(probe).run()
    assert 0.04 <= time.perf_counter() - started < 1.0 * time_scale
    assert probe.values == [0, 1]


async def test_a_driven_virtual_replay_does_not_deadlock_when_a_timer_holds_the_credit(
    tmp_path: Path,
) -> None:
    """The replay waits for credit held by a delay's timer: it must let virtual
    time pass (as a live feed would), not wait for a clock only it can move."""
    from reactivex import operators as rxops

    from rxagent.sinks import ListSink

    path = tmp_path / "r.jsonl"
    await Pipeline("rec", sources.memory(range(20))).to(RecordSink(path)).run()
    sink = ListSink()
    scheduler = TestScheduler()
    pipeline = (
        Pipeline("rp", replay(path, virtual=True, credit=2, batch_size=1))
        .pipe(rxops.delay(0.01))
        .to(sink)
    )
    await pipeline.start(scheduler=scheduler)
    for _ in range(500):  # the file is read in a worker thread: wait in real time
        await asyncio.sleep(0.01)
        if len(sink.values) >= 18:
            break
    assert len(sink.values) >= 18, f"stuck after {len(sink.values)} of 20 with credit 2"
    # after the source ends, the last delays fire once the test moves the clock
    for _ in range(500):
        scheduler.advance_by(0.01)
        await asyncio.sleep(0.01)
        if pipeline.status().state.value == "stopped":
            break
    assert sink.values == list(range(20))
    assert pipeline.status().completed
