"""The built-in operator kinds: transforms, decoding, dedup and reorder, flow control, retries,
circuit breaking and windows."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any, ClassVar, Literal, cast

from pydantic import Field, model_validator

from ... import operators as ops
from ..registry import BuildContext, Kind, Registry
from .derive import derived
from .types import (
    Agg,
    BackoffParams,
    Duration,
    FieldOrExpr,
    ModelRef,
    PythonRef,
    StageParams,
    build_agg,
    compute,
    import_ref,
    is_field,
    key_arg,
)

__all__ = [
    "BufferParams",
    "CircuitParams",
    "CountWindowParams",
    "DecodeParams",
    "DedupParams",
    "EventTimeParams",
    "FilterParams",
    "FlatMapParams",
    "KeyByParams",
    "MapParams",
    "ReorderParams",
    "RetryParams",
    "SessionParams",
    "SlidingParams",
    "TapParams",
    "TimeWindowParams",
    "TumblingParams",
    "register",
]


class _ComputedParams(StageParams):
    """A stage computing something of each value: a field or expression in the
    kind's main parameter, or ``function``: a python reference called per value."""

    function: PythonRef | None = Field(
        None, description="instead: a python function of the value (package.module:function)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Any:
        main = type(self)._main_field
        if (getattr(self, main) is None) == (self.function is None):
            raise ValueError(f"give {main} (a field or an expression) or function, not both")
        return self

    _main_field: ClassVar[str] = ""

    def stage(
        self,
        plain: Callable[..., Any],
        expression: Callable[..., Any],
        *,
        kind: Literal["predicate", "value"] = "value",
    ) -> Any:
        """``plain(fn)`` with the python function or the field (a C ``itemgetter``),
        else ``expression(compiled)`` with the expression compiled once."""
        text: str | None = getattr(self, self._main_field)
        if text is None:
            return plain(import_ref(str(self.function)), name=self.name)
        if is_field(text):
            return plain(itemgetter(text), name=self.name)
        from ..expressions import compile_expression

        return expression(compile_expression(text, kind=kind), name=self.name)


class FilterParams(_ComputedParams):
    """Keep the events whose value satisfies ``predicate``."""

    _main_field: ClassVar[str] = "predicate"
    predicate: FieldOrExpr | None = Field(
        None, description="a field (truthy keeps) or an expression of the value"
    )


def _filter(p: FilterParams, ctx: BuildContext) -> Any:
    from ..expressions import expression_filter

    return p.stage(ops.filter, expression_filter, kind="predicate")


class MapParams(_ComputedParams):
    """Replace each value by an expression of it (a dict literal builds a record)."""

    _main_field: ClassVar[str] = "expr"
    expr: FieldOrExpr | None = Field(
        None, description="a field or an expression of the value giving the new value"
    )


def _map(p: MapParams, ctx: BuildContext) -> Any:
    from ..expressions import expression_map

    return p.stage(ops.map, expression_map)


class KeyByParams(_ComputedParams):
    """Set each event's key from its value."""

    _main_field: ClassVar[str] = "key"
    key: FieldOrExpr | None = Field(
        None, description="a field or an expression of the value giving the key"
    )


def _key_by(p: KeyByParams, ctx: BuildContext) -> Any:
    from ..expressions import expression_key_by

    return p.stage(ops.key_by, expression_key_by)


class EventTimeParams(StageParams):
    """Set each event's time (epoch seconds) from its value."""

    time: FieldOrExpr


def _event_time(p: EventTimeParams, ctx: BuildContext) -> Any:
    return ops.event_time(p.time if is_field(p.time) else compute(p.time), name=p.name)


class FlatMapParams(StageParams):
    """Replace each value by the items of a list (a field or an expression)."""

    items: FieldOrExpr


def _flat_map(p: FlatMapParams, ctx: BuildContext) -> Any:
    return ops.flat_map(compute(p.items), name=p.name)


class TapParams(StageParams):
    """Call a python function with each value (side effects; the value flows on)."""

    function: PythonRef


def _tap(p: TapParams, ctx: BuildContext) -> Any:
    return ops.tap(import_ref(p.function), name=p.name)


class DecodeParams(StageParams):
    """Decode text/bytes values (and validate with a pydantic model)."""

    format: Literal["json", "text", "bytes", "python"] = Field(
        "json", description="json, text (UTF-8), bytes, or python (values already decoded)"
    )
    model: ModelRef | None = Field(
        None, description="a pydantic model validating each decoded value"
    )


def _decode(p: DecodeParams, ctx: BuildContext) -> Any:
    return ops.decode(import_ref(p.model) if p.model else None, format=p.format, name=p.name)


class DedupParams(StageParams):
    """Drop events whose id was seen (within a horizon of ids or a ttl)."""

    id: FieldOrExpr | None = Field(None, description="the event's id (default: the value itself)")
    key: FieldOrExpr | None = Field(
        None, description="ids are unique per key (default: the event's key)"
    )
    horizon: int | None = Field(
        None, ge=1, description="remember the last this many ids (give horizon, ttl or both)"
    )
    ttl: Duration | None = Field(None, description="remember each id this long")


def _dedup(p: DedupParams, ctx: BuildContext) -> Any:
    return ops.dedup(
        None if p.id is None else key_arg(p.id),
        key=None if p.key is None else key_arg(p.key),
        horizon=p.horizon,
        ttl=p.ttl,
        scheduler=ctx.scheduler,
        name=p.name,
    )


class ReorderParams(StageParams):
    """Put events back in sequence order, waiting at most ``max_delay`` for a gap."""

    seq: FieldOrExpr = Field(description="the event's sequence number (an int)")
    max_delay: Duration = Field(
        description="how long an event waits for the numbers before it (then a gap)"
    )
    key: FieldOrExpr | None = Field(
        None, description="sequences are per key (default: the event's key)"
    )
    start: int | None = Field(
        None, description="every key's first number (default: its first event's)"
    )
    key_idle: Duration | None = Field(
        600.0, description="forget a key with nothing held after this long (null: never)"
    )
    max_keys: int | None = Field(
        100_000, ge=1, description="most keys remembered; the longest idle go first"
    )


def _reorder(p: ReorderParams, ctx: BuildContext) -> Any:
    seq = p.seq if is_field(p.seq) else cast("Callable[[Any], int]", compute(p.seq))
    return ops.reorder(
        seq,
        max_delay=p.max_delay,
        key=None if p.key is None else key_arg(p.key),
        start=p.start,
        key_idle=p.key_idle,
        max_keys=p.max_keys,
        scheduler=ctx.scheduler,
        name=p.name,
    )


class BufferParams(StageParams):
    """Decouple the source from slow stages: block (backpressure) or a lossy policy."""

    capacity: int = Field(ge=1, description="most events waiting (latest: most keys)")
    policy: Literal["block", "latest", "drop_oldest", "drop_newest"] = Field(
        "block", description="block (backpressure, no loss), or a lossy policy"
    )
    in_flight: int | None = Field(
        None, ge=1, description="most events downstream at once (default: capacity)"
    )
    key: FieldOrExpr | None = Field(
        None, description="groups events for latest (default: the event's key)"
    )


def _buffer(p: BufferParams, ctx: BuildContext) -> Any:
    return ops.buffer(
        p.capacity,
        p.policy,
        in_flight=p.in_flight,
        key=None if p.key is None else key_arg(p.key),
        scheduler=ctx.scheduler,
        name=p.name,
    )


class RetryParams(StageParams):
    """Resubscribe upstream after an error, with backoff."""

    backoff: BackoffParams = Field(
        BackoffParams(), description="delays between resubscriptions and when to give up"
    )
    reset_after: Duration | None = Field(
        None, description="this long without an error ends a run of failures"
    )


def _retry(p: RetryParams, ctx: BuildContext) -> Any:
    return ops.retry(
        p.backoff.build(), reset_after=p.reset_after, scheduler=ctx.scheduler, name=p.name
    )


class CircuitParams(StageParams):
    """Guard a python function (each value -> result) with a circuit breaker."""

    call: PythonRef = Field(description="a function of the value; its result replaces the value")
    failure_threshold: int = Field(5, ge=1, description="failures in a row that open the circuit")
    reset_timeout: Duration = Field(
        30.0, description="how long the circuit stays open before a trial call"
    )
    success_threshold: int = Field(
        1, ge=1, description="successful trial calls that close it again"
    )


def _circuit(p: CircuitParams, ctx: BuildContext) -> Any:
    return ops.circuit_breaker(
        import_ref(p.call),
        failure_threshold=p.failure_threshold,
        reset_timeout=p.reset_timeout,
        success_threshold=p.success_threshold,
        scheduler=ctx.scheduler,
        name=p.name,
    )


class CountWindowParams(StageParams):
    """Windows of ``size`` events per key, aggregated."""

    size: int = Field(ge=1, description="events per window")
    key: FieldOrExpr | None = Field(
        None, description="windows per this key (default: the event's key)"
    )
    agg: Agg = Field(None, description="what a window emits (default: the list of its values)")
    emit_partial: bool | Literal["auto"] = Field(
        "auto",
        description="open windows at the end of the input: emitted unless false; on a stop, "
        "auto: given up uncommitted if the source replays them (Kafka), else emitted with "
        "partial: true; true: always emitted (partial: true); false: never",
    )


def _count_window(p: CountWindowParams, ctx: BuildContext) -> Any:
    return ops.count_window(
        p.size,
        key=None if p.key is None else key_arg(p.key),
        agg=build_agg(p.agg),
        emit_partial=p.emit_partial,
        name=p.name,
    )


class TimeWindowParams(StageParams):
    """The parameters the time-window kinds (``tumbling_window``, ``sliding_window``,
    ``session_window``) share."""

    time: Literal["processing", "event"] = Field(
        "processing", description="processing time (arrival) or event time (event_time step)"
    )
    key: FieldOrExpr | None = Field(
        None, description="windows per this key (default: the event's key)"
    )
    agg: Agg = Field(None, description="what a window emits (default: the list of its values)")
    allowed_lateness: Duration = Field(
        0.0, description="event time: how far behind the largest time seen a window waits"
    )
    late: Literal["drop", "dead_letter", "stream"] | None = Field(
        None,
        description="event time: events for closed windows are dropped, dead letters or a stream",
    )
    idle_timeout: Duration | None = Field(
        None, description="close open windows after this long without events"
    )
    emit_partial: bool | Literal["auto"] = Field(
        "auto",
        description="open windows at the end of the input: emitted unless false; on a stop, "
        "auto: given up uncommitted if the source replays them (Kafka), else emitted with "
        "partial: true; true: always emitted (partial: true); false: never",
    )

    def common(self, ctx: BuildContext) -> dict[str, Any]:
        """The shared parameters as keyword arguments of the window operator functions, with the
        build context's scheduler."""
        return {
            "time": self.time,
            "key": None if self.key is None else key_arg(self.key),
            "agg": build_agg(self.agg),
            "allowed_lateness": self.allowed_lateness,
            "late": self.late,
            "idle_timeout": self.idle_timeout,
            "emit_partial": self.emit_partial,
            "scheduler": ctx.scheduler,
            "name": self.name,
        }


class TumblingParams(TimeWindowParams):
    """Back-to-back windows of ``size`` per key."""

    size: Duration = Field(description="each window's length")
    offset: Duration = Field(0.0, description="windows start at multiples of size plus this")


class SlidingParams(TimeWindowParams):
    """Windows of ``size`` starting every ``slide``."""

    size: Duration = Field(description="each window's length")
    slide: Duration = Field(description="a window starts this often")
    offset: Duration = Field(0.0, description="windows start at multiples of slide plus this")


class SessionParams(TimeWindowParams):
    """A window per burst of activity, closed after ``gap`` without events."""

    gap: Duration = Field(
        description="a session closes after this long without an event of its key"
    )


def _tumbling(p: TumblingParams, ctx: BuildContext) -> Any:
    return ops.tumbling_window(p.size, offset=p.offset, **p.common(ctx))


def _sliding(p: SlidingParams, ctx: BuildContext) -> Any:
    return ops.sliding_window(p.size, p.slide, offset=p.offset, **p.common(ctx))


def _session(p: SessionParams, ctx: BuildContext) -> Any:
    return ops.session_window(p.gap, **p.common(ctx))


def register(registry: Registry) -> None:
    """Add the built-in operator kinds to ``registry``."""
    add = registry.add
    add(Kind("operator", "filter", FilterParams, _filter, shorthand="predicate"))
    add(Kind("operator", "map", MapParams, _map, shorthand="expr"))
    add(Kind("operator", "key_by", KeyByParams, _key_by, shorthand="key"))
    add(Kind("operator", "event_time", EventTimeParams, _event_time, shorthand="time"))
    add(Kind("operator", "flat_map", FlatMapParams, _flat_map, shorthand="items"))
    add(Kind("operator", "tap", TapParams, _tap, shorthand="function"))
    add(Kind("operator", "decode", DecodeParams, _decode, shorthand="format"))
    add(Kind("operator", "dedup", DedupParams, _dedup, shorthand="id"))
    add(Kind("operator", "reorder", ReorderParams, _reorder))
    add(Kind("operator", "buffer", BufferParams, _buffer, shorthand="capacity"))
    # kinds derived from the operators' signatures and docstrings (derive.py)
    add(derived("operator", ops.throttle_first, shorthand="interval"))
    add(derived("operator", ops.throttle_last, shorthand="interval"))
    add(derived("operator", ops.throttle_latest, shorthand="interval"))
    add(derived("operator", ops.debounce, shorthand="interval"))
    add(derived("operator", ops.sample, shorthand="interval"))
    add(derived("operator", ops.rate_limit, n=Field(ge=1)))
    add(Kind("operator", "retry", RetryParams, _retry))
    add(Kind("operator", "circuit_breaker", CircuitParams, _circuit, shorthand="call"))
    add(Kind("operator", "count_window", CountWindowParams, _count_window, shorthand="size"))
    add(Kind("operator", "tumbling_window", TumblingParams, _tumbling, shorthand="size"))
    add(Kind("operator", "sliding_window", SlidingParams, _sliding))
    add(Kind("operator", "session_window", SessionParams, _session, shorthand="gap"))
