"""The python side of the example pipeline files in ``pipelines/``.

YAML says what a pipeline is; a few things only code can say: the tools agents
and pipelines activate, reducers folding events into state, a worker's call.
The files reference them as ``rxagent.examples:NAME``. This module also serves
the simulated feeds the files read, so each example runs on one machine::

    python -m rxagent.examples market --port 8765     # for pipelines/market_feed.yaml
    python -m rxagent.examples sensors --port 8766    # for pipelines/sensor_sessions.yaml

Everything here is deterministic and talks to nothing but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .events import Event
from .state import DELETE

__all__ = [
    "SensorFeedServer",
    "apply_account_event",
    "apply_change",
    "handle_command",
    "main",
    "sensor_quiet",
    "ship_order",
    "track_move",
]

# -- reducers (state sink ``reducer: rxagent.examples:NAME``) ----------------------------


def track_move(old: dict[str, Any] | None, event: Event) -> dict[str, Any]:
    """Fold a window ``{n, avg, last, ...}`` of one symbol into its state row.

    The row keeps the first window's average, so it can say how far the price
    moved since (``move_pct``, in percent); the file's alert rule is an
    expression of it (``abs(value.move_pct) >= 0.2``).
    """
    window = event.value
    agg: dict[str, Any] = dict(window.value)
    avg = float(agg["avg"])
    first = avg if old is None else float(old["first_avg"])
    move = 100.0 * (avg - first) / first if first else 0.0
    return {
        **agg,
        "sym": window.key,
        "first_avg": first,
        "move_pct": round(move, 4),
        "windows": 1 if old is None else int(old["windows"]) + 1,
    }


def apply_change(old: dict[str, Any] | None, event: Event) -> Any:
    """Apply a Debezium-style change to the read model's row.

    The value is the change (the envelope's ``payload``): ``op`` is ``c``
    (create), ``r`` (snapshot read), ``u`` (update) or ``d`` (delete), ``after``
    the row after it. A delete removes the key; any other operation replaces
    the row by ``after``, with the operation and the source position (``lsn``),
    so a reader can tell how current the row is. Anything else raises: the
    change goes to dead letters with the reason.
    """
    change: Mapping[str, Any] = event.value
    op = change.get("op")
    if op == "d":
        return DELETE
    if op not in ("c", "r", "u"):
        raise ValueError(f"unknown change operation {op!r} (expected c, r, u or d)")
    after = change.get("after")
    if not isinstance(after, Mapping):
        raise ValueError(f"a {op!r} change needs an 'after' row, got {after!r}")
    source: Mapping[str, Any] = change.get("source") or {}
    return {**after, "_op": op, "_lsn": source.get("lsn")}


def apply_account_event(old: dict[str, Any] | None, event: Event) -> Any:
    """Event sourcing: the account state is the fold of its events.

    Events: ``opened`` (``owner``), ``deposited`` / ``withdrawn`` (``amount``),
    ``closed``. A withdrawal larger than the balance, or any event for an
    account not open, raises: the event goes to dead letters with the reason
    and the state stays as it was.
    """
    e: Mapping[str, Any] = event.value
    kind = e.get("type")
    if kind == "opened":
        if old is not None:
            raise ValueError(f"account {event.key!r} is already open")
        return {"owner": e["owner"], "balance": 0, "events": 1}
    if old is None:
        raise ValueError(f"account {event.key!r} is not open ({kind!r} refused)")
    if kind == "closed":
        return DELETE
    amount = int(e["amount"])
    if kind == "deposited":
        balance = int(old["balance"]) + amount
    elif kind == "withdrawn":
        if amount > int(old["balance"]):
            raise ValueError(
                f"account {event.key!r}: cannot withdraw {amount} from {old['balance']}"
            )
        balance = int(old["balance"]) - amount
    else:
        raise ValueError(f"unknown account event {kind!r}")
    return {**old, "balance": balance, "events": int(old["events"]) + 1}


# -- tools (``tools: NAME: rxagent.examples:NAME``) ----------------------------------------


def ship_order(order_id: str, sku: str, qty: int) -> str:
    """Ship ``qty`` of ``sku`` for order ``order_id``; returns the shipment id."""
    return f"SHIP-{order_id}-{sku}x{qty}"


def sensor_quiet(sensor: str, readings: int) -> str:
    """A sensor went quiet after a session of ``readings`` readings: raise a maintenance alert."""
    return f"QUIET {sensor} after {readings} readings"


# -- the worker's call (``circuit_breaker: rxagent.examples:handle_command``) ---------------


def handle_command(command: Mapping[str, Any]) -> dict[str, Any]:
    """The worker's job: run one command ``{job, op, args}`` and return its result.

    ``op`` is ``sum`` or ``max`` of ``args`` (a list of numbers); anything else
    raises, which dead-letters the command (and counts against the breaker).
    """
    job = command["job"]
    op = command["op"]
    args: Sequence[float] = command["args"]
    if op == "sum":
        result: float = sum(args)
    elif op == "max":
        result = max(args)
    else:
        raise ValueError(f"job {job!r}: unknown operation {op!r}")
    return {"job": job, "op": op, "result": result, "status": "done"}


# -- a simulated sensor feed ------------------------------------------------------------


class SensorFeedServer:
    """Sensor readings ``{"sensor", "value", "ts"}`` over WebSocket on 127.0.0.1.

    ``sensors`` maps each sensor to how many seconds it reports before going
    quiet (``None``: it never does); every sensor reports every ``interval``
    seconds. Each client gets the feed from its connection on.
    """

    def __init__(
        self,
        sensors: Mapping[str, float | None] | None = None,
        *,
        interval: float = 0.05,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.sensors = dict(sensors or {"boiler": None, "pump": 0.4, "fan": None})
        self.interval = interval
        self.host = host
        self.port = port
        self.url = ""
        self.sent = 0
        self._server: Any = None

    async def __aenter__(self) -> SensorFeedServer:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://{self.host}:{self.port}/sensors"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        start = time.monotonic()
        tick = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                elapsed = time.monotonic() - start
                for sensor, until in self.sensors.items():
                    if until is None or elapsed < until:
                        value = round(20.0 + len(sensor) + (tick % 5) * 0.1, 2)
                        reading = {"sensor": sensor, "value": value, "ts": time.time()}
                        await ws.send(json.dumps(reading))
                        self.sent += 1
                tick += 1
                await asyncio.sleep(self.interval)


async def _serve_market(port: int) -> None:
    from websockets.asyncio.server import serve

    from .demo import MarketFeedServer

    async with MarketFeedServer(rate=500) as feed, serve(feed._handle, "127.0.0.1", port):
        print(f"market feed on ws://127.0.0.1:{port}/ticks (Ctrl-C stops)", flush=True)
        await asyncio.Future()


async def _serve_sensors(port: int) -> None:
    async with SensorFeedServer(port=port) as feed:
        print(f"sensor feed on {feed.url} (Ctrl-C stops)", flush=True)
        await asyncio.Future()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rxagent.examples market|sensors [--port N]``: serve a simulated feed."""
    parser = argparse.ArgumentParser(prog="python -m rxagent.examples", description=main.__doc__)
    parser.add_argument("feed", choices=["market", "sensors"])
    parser.add_argument("--port", type=int, default=None, help="default: 8765 / 8766")
    options = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if options.feed == "market":
            asyncio.run(_serve_market(options.port or 8765))
        else:
            asyncio.run(_serve_sensors(options.port or 8766))


if __name__ == "__main__":
    main()
