"""One metrics model of a running app, read by every exporter at read time.

:class:`Observer` reads what the app already counts (pipeline status, stage
counters, flow credit, source health and lag, tool stats, state stores) when it is
asked: by :meth:`Observer.snapshot` (the dashboard's data), :meth:`Observer.ready`
(``/ready``) and the Prometheus :class:`Collector` (``/metrics``), which builds its
metric families at scrape time. Nothing here runs per event; the only things it
adds while the app runs are per activation (a tool call's duration in a fixed
histogram and a ring of recent activations) and per dead letter (the pipeline
context's ring).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as _CollectorBase
from reactivex.abc import DisposableBase

from .._secrets import redact, redact_data
from ..context import json_key
from ..histogram import Histogram
from ..operators.base import Operator
from ..plain import plain
from ..runtime import App, Pipeline, PipelineState
from ..sinks.tools import ToolResult, ToolSink, ToolStatus
from ..state import StateStore
from ..state.snapshot import key_text
from ..tools.tool import Tool

__all__ = [
    "MAX_ACTIVATIONS",
    "MAX_DEAD_LETTERS",
    "MAX_STATE_LIMIT",
    "Collector",
    "Observer",
    "Readiness",
    "ToolActivity",
]

#: Recent tool activations kept (newest first in :meth:`Observer.snapshot`).
MAX_ACTIVATIONS = 100
#: Recent dead letters shown.
MAX_DEAD_LETTERS = 50
#: Most entries one state query returns.
MAX_STATE_LIMIT = 1000
#: Characters a dead letter's value or an activation's error keeps in the snapshot.
_VALUE_CHARS = 200
#: Tool durations kept for the p50 / p99 of the snapshot.
_RECENT_DURATIONS = 1000


def _short(value: Any, limit: int = _VALUE_CHARS) -> str:
    text = value if isinstance(value, str) else _json(value)
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json(value: Any) -> str:
    try:
        return json.dumps(plain(value), default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


class ToolActivity:
    """What the observer counts of one tool's activations (once per activation):
    retries, a duration histogram with fixed buckets, the recent durations."""

    __slots__ = ("activations", "durations", "histogram", "retries")

    def __init__(self) -> None:
        self.histogram = Histogram()
        self.durations: deque[float] = deque(maxlen=_RECENT_DURATIONS)
        self.retries = 0
        self.activations = 0

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the recent call durations in seconds, or None
        before the first call."""
        recent = sorted(self.durations)
        if not recent:
            return None
        return round(recent[min(len(recent) - 1, int(q * len(recent)))], 6)


@dataclass(frozen=True)
class Readiness:
    """``ready``, or not and what each pipeline or store ``waiting`` waits for."""

    ready: bool
    waiting: dict[str, Any]


class Observer:
    """The metrics model of ``app``: its pipelines, ``stores`` and ``tools``.

    Stores written by a pipeline's state sink and tools called by its tool sinks
    are found on their own; ``stores`` and ``tools`` add others (an MCP server's).
    :meth:`start` follows the tool sinks' results (call it on the loop that runs
    the app, before or after it starts); :meth:`close` stops.
    """

    def __init__(
        self,
        app: App,
        *,
        stores: Mapping[str, StateStore] | Iterable[StateStore] | None = None,
        tools: Iterable[Tool] | None = None,
    ) -> None:
        self.app = app
        if isinstance(stores, Mapping):
            self._stores: dict[str, StateStore] = dict(stores)
        else:
            self._stores = {s.name: s for s in stores or ()}
        self._tools: dict[str, Tool] = {t.name: t for t in tools or ()}
        self.activity: dict[str, ToolActivity] = {}
        #: Recent activations (dicts as the snapshot shows them), newest last.
        self.activations: deque[dict[str, Any]] = deque(maxlen=MAX_ACTIVATIONS)
        self._subscriptions: list[DisposableBase] = []
        self._followed: set[int] = set()

    # -- what is observed ------------------------------------------------------------

    @property
    def stores(self) -> dict[str, StateStore]:
        """Every store: those given and those the pipelines' sinks write."""
        found = dict(self._stores)
        for pipeline in self.app.pipelines.values():
            for sink in pipeline.sinks:
                store = getattr(sink, "store", None)
                if isinstance(store, StateStore) and store.name not in found:
                    found[store.name] = store
        return found

    @property
    def tools(self) -> dict[str, Tool]:
        """Every tool: those given and those the pipelines' tool sinks call."""
        found = dict(self._tools)
        for sink in self._tool_sinks():
            found.setdefault(sink.tool.name, sink.tool)
        return found

    def _tool_sinks(self) -> Iterator[ToolSink]:
        for pipeline in self.app.pipelines.values():
            for sink in pipeline.sinks:
                if isinstance(sink, ToolSink):
                    yield sink

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Follow every tool sink's results (one record per activation)."""
        for sink in self._tool_sinks():
            if id(sink) in self._followed:
                continue
            self._followed.add(id(sink))
            self._subscriptions.append(sink.results.subscribe(on_next=self._on_result))

    def close(self) -> None:
        """Stop following the tool sinks' results."""
        for subscription in self._subscriptions:
            subscription.dispose()
        self._subscriptions.clear()
        self._followed.clear()

    def _on_result(self, result: ToolResult) -> None:
        if result.attempts == 0 and result.status is not ToolStatus.OK:
            return  # never called (dropped, skipped, cancelled waiting): a suppression
        activity = self.activity.get(result.tool)
        if activity is None:
            activity = self.activity[result.tool] = ToolActivity()
        activity.activations += 1
        activity.retries += max(0, result.attempts - 1)
        activity.histogram.observe(result.duration)
        activity.durations.append(result.duration)
        error = None
        if result.error is not None:
            error = _short(f"{type(result.error).__name__}: {result.error}")
        elif result.reason and not result.ok:
            error = result.reason
        self.activations.append(
            {
                "tool": result.tool,
                "key": _key(result.key),
                "started": round(time.time() - result.duration, 3),
                "duration": round(result.duration, 6),
                "ok": result.ok,
                "error": error,
                "status": str(result.status),
                "attempts": result.attempts,
            }
        )

    # -- reading ---------------------------------------------------------------------

    def graph(self, pipeline: Pipeline) -> dict[str, list[dict[str, str]]]:
        """The pipeline's stages as nodes (ids as in its status) and edges."""
        source = pipeline.source
        nodes = [{"id": source.name, "role": "source", "kind": source.kind}]
        edges: list[dict[str, str]] = []
        previous = source.name
        for i, op in enumerate(pipeline.operators):
            if isinstance(op, Operator):
                node = {"id": op.name or op.kind, "role": "operator", "kind": op.kind}
            else:
                name = getattr(op, "__name__", "rx")
                node = {"id": f"{name}#{i + 1}", "role": "operator", "kind": "rx"}
            nodes.append(node)
            edges.append({"from": previous, "to": node["id"]})
            previous = node["id"]
        for sink in pipeline.sinks:
            nodes.append({"id": sink.name, "role": "sink", "kind": sink.kind})
            edges.append({"from": previous, "to": sink.name})
        return {"nodes": nodes, "edges": edges}

    def snapshot(self) -> dict[str, Any]:
        """The dashboard's data (``GET /api/snapshot``), redacted."""
        now = time.time()
        pipelines: dict[str, Any] = {}
        letters: list[tuple[float, dict[str, Any]]] = []
        for name, pipeline in self.app.pipelines.items():
            status = pipeline.status().as_dict()
            status["graph"] = self.graph(pipeline)
            status["latency"] = {
                sink: {
                    "count": h.count,
                    "p50": h.quantile(0.5),
                    "p99": h.quantile(0.99),
                }
                for sink, h in pipeline.latency.items()
            }
            status["ready"] = _source_waiting(pipeline) is None
            pipelines[name] = status
            ctx = pipeline.ctx
            if ctx is not None:
                for letter in list(ctx.recent_dead_letters):
                    letters.append(
                        (
                            letter.time,
                            {
                                "pipeline": letter.pipeline or name,
                                "stage": letter.stage,
                                "reason": f"{letter.error_type}: {letter.message}",
                                "value": _short(letter.event.value),
                                "time": letter.time,
                            },
                        )
                    )
        letters.sort(key=lambda item: item[0], reverse=True)
        stores = {}
        for name, store in self.stores.items():
            snap = store.snapshot
            stores[name] = {
                "entries": len(snap),
                "version": snap.version,
                "staleness": _round(snap.staleness()),
                "checkpoint_age": _checkpoint_age(store, now),
            }
        tools = {}
        suppressed = self._tool_suppressions()
        for name, tool in self.tools.items():
            stats = tool.stats
            activity = self.activity.get(name)
            held = suppressed.get(name, {})
            tools[name] = {
                "calls": stats.calls,
                "failures": stats.failed,
                "invalid": stats.invalid,
                "running": stats.running,
                "retries": 0 if activity is None else activity.retries,
                "busy": held.get("busy", 0),
                "cooldown": held.get("cooldown", 0),
                "p50": None if activity is None else activity.quantile(0.5),
                "p99": None if activity is None else activity.quantile(0.99),
            }
        data = {
            "app": self.app.name,
            "time": now,
            "pipelines": pipelines,
            "stores": stores,
            "tools": tools,
            "dead_letters": [entry for _, entry in letters[:MAX_DEAD_LETTERS]],
            "activations": list(reversed(self.activations)),
        }
        cleaned: dict[str, Any] = redact_data(data)
        return cleaned

    def _tool_suppressions(self) -> dict[str, dict[str, int]]:
        """Per tool: suppressed activations per reason, over its sinks."""
        found: dict[str, dict[str, int]] = {}
        for sink in self._tool_sinks():
            ctx = sink.ctx
            if ctx is None:
                continue
            mine = found.setdefault(sink.tool.name, {})
            for reason, n in ctx.suppressions.totals(sink.name).items():
                mine[reason] = mine.get(reason, 0) + n
        return found

    def ready(self) -> Readiness:
        """Whether every pipeline's source is connected (assigned, restored) and every
        durable store restored; otherwise what each waits for."""
        waiting: dict[str, Any] = {}
        for name, pipeline in self.app.pipelines.items():
            why = _source_waiting(pipeline)
            if why is not None:
                waiting[f"pipeline {name}"] = why
        for name, store in self.stores.items():
            info = store.durability()
            if info.get("restoring"):
                waiting[f"state {name}"] = f"restoring {info['restoring']}"
        return Readiness(not waiting, redact_data(waiting))

    def state(self, store: str, *, q: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Entries of ``store`` (``KeyError`` when there is none): those whose key or
        value contains ``q`` (case-insensitive), at most ``limit``. Reads stop once
        ``limit`` entries are found: without ``q`` the cost follows ``limit``."""
        found = self.stores[store]
        snap = found.snapshot
        now = found.now()
        needle = q.lower() if q else None
        entries: list[dict[str, Any]] = []
        for entry in snap.iter_entries():
            key = key_text(entry.key)
            value = plain(entry.value)
            if (
                needle is not None
                and needle not in key.lower()
                and needle not in _json(value).lower()
            ):
                continue
            entries.append(
                {
                    "key": key,
                    "value": value,
                    "version": entry.version,
                    "updated_at": entry.wall_time,
                    "staleness": _round(now - entry.wall_time),
                }
            )
            if len(entries) >= limit:
                break
        data = {"store": store, "version": snap.version, "total": len(snap), "entries": entries}
        cleaned: dict[str, Any] = redact_data(data)
        return cleaned


def _key(key: Hashable) -> Any:
    found = json_key(key)
    return redact(found) if isinstance(found, str) else found


def _round(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 3)


def _checkpoint_age(store: StateStore, now: float) -> float | None:
    last = store.durability().get("last_checkpoint")
    return None if not isinstance(last, int | float) else round(max(0.0, now - last), 3)


def _source_waiting(pipeline: Pipeline) -> Any:
    """What ``pipeline``'s source waits for before it is ready (``None``: ready)."""
    state = pipeline.state
    if state is PipelineState.FAILED:
        return f"failed: {pipeline.status().last_error}"
    if state in (PipelineState.CREATED, PipelineState.STARTING):
        return f"pipeline {state}"
    if state is PipelineState.STOPPED:
        return None if pipeline.status().completed else "stopped"
    info = pipeline.source.describe()
    health = info.get("health")
    if not isinstance(health, dict):
        return None  # a source without a connection (memory, replay): ready once running
    if health.get("state") != "connected":
        return {
            "source": pipeline.source.name,
            "state": health.get("state"),
            "last_error": health.get("last_error"),
        }
    waiting = info.get("waiting")
    if waiting or info.get("restoring"):
        return {"source": pipeline.source.name, "state": "connected", "waiting": waiting}
    return None


class Collector(_CollectorBase):
    """A Prometheus collector building every family from an :class:`Observer` at
    scrape time (docs/operations.md lists the names)."""

    def __init__(self, observer: Observer, loop_lag: Any = None) -> None:
        self.observer = observer
        #: something with ``lag`` and ``max_lag`` (seconds), or None
        self.loop_lag = loop_lag

    def describe(self) -> list[Metric]:
        """No fixed families: they follow the pipelines (see :meth:`collect`)."""
        return []  # families are dynamic: registration must not call collect()

    def collect(self) -> Iterator[Metric]:
        observer = self.observer
        yield from _pipeline_families(observer.app)
        yield from _store_families(observer.stores)
        yield from _tool_families(observer)
        lag = self.loop_lag
        if lag is not None:
            gauge = GaugeMetricFamily(
                "rxagent_loop_lag_seconds", "How late the event loop's heartbeat last ran."
            )
            gauge.add_metric([], lag.lag)
            yield gauge
            worst = GaugeMetricFamily(
                "rxagent_loop_lag_max_seconds",
                "The longest the event loop was blocked in the health window.",
            )
            worst.add_metric([], lag.max_lag)
            yield worst


def _pipeline_families(app: App) -> Iterator[Metric]:
    pl = ["pipeline"]
    ps = ["pipeline", "stage"]
    up = GaugeMetricFamily(
        "rxagent_pipeline_running", "1 while the pipeline runs, else 0.", labels=pl
    )
    events = CounterMetricFamily(
        "rxagent_stage_events",
        "Events into (direction=in) and out of (direction=out) each stage.",
        labels=[*ps, "direction"],
    )
    dropped = CounterMetricFamily(
        "rxagent_stage_dropped", "Events a stage ended on purpose.", labels=ps
    )
    dead = CounterMetricFamily(
        "rxagent_stage_dead_letters", "Events a stage gave up on (dead letters).", labels=ps
    )
    errors = CounterMetricFamily("rxagent_stage_errors", "Errors recorded by a stage.", labels=ps)
    slow = CounterMetricFamily(
        "rxagent_stage_slow_batches", "Batches that held the event loop over 0.5 s.", labels=ps
    )
    suppressed = CounterMetricFamily(
        "rxagent_suppressions",
        "Events a stage held back, per reason (throttled, cooldown, busy, ...).",
        labels=[*ps, "reason"],
    )
    in_flight = GaugeMetricFamily(
        "rxagent_flow_in_flight", "Events emitted whose processing has not ended.", labels=pl
    )
    credit = GaugeMetricFamily(
        "rxagent_flow_credit", "Credit free now: events the source may still emit.", labels=pl
    )
    capacity = GaugeMetricFamily(
        "rxagent_flow_capacity", "Credit in all: at most this many events in flight.", labels=pl
    )
    bytes_in_flight = GaugeMetricFamily(
        "rxagent_flow_bytes_in_flight", "Payload bytes charged to credit now.", labels=pl
    )
    emitted = CounterMetricFamily("rxagent_flow_emitted", "Events the source emitted.", labels=pl)
    waits = CounterMetricFamily(
        "rxagent_flow_waits", "Times the source waited for credit.", labels=pl
    )
    sl = ["pipeline", "source"]
    connected = GaugeMetricFamily(
        "rxagent_source_connected", "1 when the source is connected (Kafka: assigned).", labels=sl
    )
    ready = GaugeMetricFamily(
        "rxagent_source_ready", "1 when the pipeline's source is ready (see /ready).", labels=sl
    )
    reconnects = CounterMetricFamily(
        "rxagent_source_reconnects", "Reconnections (Kafka: rejoins) of the source.", labels=sl
    )
    outages = CounterMetricFamily(
        "rxagent_source_outages", "Outages (every broker unreachable) of the source.", labels=sl
    )
    lag = GaugeMetricFamily(
        "rxagent_kafka_lag",
        "Messages behind the high watermark per assigned partition.",
        labels=["pipeline", "topic", "partition"],
    )
    latency = HistogramMetricFamily(
        "rxagent_source_to_sink_seconds",
        "Seconds from a batch's making to the end of its sink's on_batch, per event.",
        labels=["pipeline", "sink"],
    )
    for name, pipeline in app.pipelines.items():
        status = pipeline.status()
        up.add_metric([name], 1.0 if status.state is PipelineState.RUNNING else 0.0)
        for stage, m in status.stages.items():
            labels = [name, stage]
            events.add_metric([*labels, "in"], m.get("in", 0))
            events.add_metric([*labels, "out"], m.get("out", 0))
            dropped.add_metric(labels, m.get("dropped", 0))
            dead.add_metric(labels, m.get("dead_lettered", 0))
            errors.add_metric(labels, m.get("errors", 0))
            if m.get("slow_batches"):
                slow.add_metric(labels, m["slow_batches"])
        for stage, table in status.suppressions.items():
            for reason, n in table.get("totals", {}).items():
                suppressed.add_metric([name, stage, reason], n)
        flow = status.flow
        if flow:
            in_flight.add_metric([name], flow.get("in_flight", 0))
            credit.add_metric([name], flow.get("capacity", 0) - flow.get("in_flight", 0))
            capacity.add_metric([name], flow.get("capacity", 0))
            bytes_in_flight.add_metric([name], flow.get("bytes_in_flight", 0))
            emitted.add_metric([name], flow.get("emitted", 0))
            waits.add_metric([name], flow.get("waits", 0))
        source = status.source
        src = [name, str(source.get("name", pipeline.source.name))]
        health = source.get("health")
        if isinstance(health, dict):
            connected.add_metric(src, 1.0 if health.get("state") == "connected" else 0.0)
        ready.add_metric(src, 1.0 if _source_waiting(pipeline) is None else 0.0)
        n = source.get("reconnects", source.get("rejoins"))
        if isinstance(n, int):
            reconnects.add_metric(src, n)
        if isinstance(source.get("outages"), int):
            outages.add_metric(src, source["outages"])
        for topic, partition, behind in _partition_lags(pipeline):
            lag.add_metric([name, topic, partition], behind)
        for sink, histogram in pipeline.latency.items():
            cumulative = histogram.cumulative()
            latency.add_metric(
                [name, sink],
                [(_le(bound), float(seen)) for bound, seen in cumulative],
                histogram.sum,
            )
    yield from (up, events, dropped, dead, errors, slow, suppressed)
    yield from (in_flight, credit, capacity, bytes_in_flight, emitted, waits)
    yield from (connected, ready, reconnects, outages, lag, latency)


def _partition_lags(pipeline: Pipeline) -> Iterator[tuple[str, str, int]]:
    """``(topic, partition, lag)`` of each partition the source holds, when it says."""
    lags = getattr(pipeline.source, "lag", None)
    if not isinstance(lags, Mapping):
        return
    for part, behind in list(lags.items()):
        topic = getattr(part, "topic", None)
        number = getattr(part, "partition", None)
        if topic is None or number is None:
            topic, number = "", part
        if isinstance(behind, int):
            yield str(topic), str(number), behind


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _store_families(stores: Mapping[str, StateStore]) -> Iterator[Metric]:
    entries = GaugeMetricFamily("rxagent_state_entries", "Keys in the store.", labels=["store"])
    version = GaugeMetricFamily(
        "rxagent_state_version", "The store's version (one per change).", labels=["store"]
    )
    staleness = GaugeMetricFamily(
        "rxagent_state_staleness_seconds", "Seconds since the store last changed.", labels=["store"]
    )
    checkpoint = GaugeMetricFamily(
        "rxagent_state_checkpoint_age_seconds",
        "Seconds since a durable store's last checkpoint.",
        labels=["store"],
    )
    now = time.time()
    for name, store in stores.items():
        snap = store.snapshot
        entries.add_metric([name], len(snap))
        version.add_metric([name], snap.version)
        stale = snap.staleness()
        if stale is not None:
            staleness.add_metric([name], max(0.0, stale))
        age = _checkpoint_age(store, now)
        if age is not None:
            checkpoint.add_metric([name], age)
    yield from (entries, version, staleness, checkpoint)


def _tool_families(observer: Observer) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "rxagent_tool_calls",
        "Tool calls by outcome: ok, failed, invalid (arguments refused).",
        labels=["tool", "outcome"],
    )
    running = GaugeMetricFamily("rxagent_tool_running", "Tool calls in progress.", labels=["tool"])
    retries = CounterMetricFamily(
        "rxagent_tool_retries", "Retried attempts of tool activations.", labels=["tool"]
    )
    duration = HistogramMetricFamily(
        "rxagent_tool_duration_seconds",
        "Seconds from an activation's first call to its end.",
        labels=["tool"],
    )
    for name, tool in observer.tools.items():
        stats = tool.stats
        calls.add_metric([name, "ok"], stats.ok)
        calls.add_metric([name, "failed"], stats.failed)
        calls.add_metric([name, "invalid"], stats.invalid)
        running.add_metric([name], stats.running)
        activity = observer.activity.get(name)
        if activity is not None:
            retries.add_metric([name], activity.retries)
            histogram = activity.histogram
            duration.add_metric(
                [name],
                [(_le(bound), float(seen)) for bound, seen in histogram.cumulative()],
                histogram.sum,
            )
    yield from (calls, running, retries, duration)
