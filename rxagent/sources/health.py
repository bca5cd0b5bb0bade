"""One model of a connected source's health, shown the same way everywhere.

A source that talks to a server (WebSocket, Kafka) keeps a :class:`SourceHealth`
and puts :meth:`SourceHealth.as_dict` under ``"health"`` in its ``describe()``;
``status()``, the MCP status resource, the live view and the key=value lines of
``rxagent run`` read it from there.

States:

* ``connecting``: before the first connection (or assignment) succeeded;
* ``connected``: connected (a Kafka source: brokers answer and partitions are held);
* ``reconnecting``: the connection failed or closed; ``attempt`` counts the
  attempts since the last stable connection, ``last_error`` says why;
* ``outage``: every broker is unreachable (Kafka), since ``since``;
* ``auth_refused``: the server refused the credentials (HTTP 401/403, SASL);
  retried at most ``auth_retries`` times, then the source fails;
* ``lost_assignment``: the group or the topic's partitions vanished; the source
  resubscribes and waits for a new assignment;
* ``stopped``: the source ended (or failed: ``last_error``).
"""

from __future__ import annotations

import time
from typing import Any, Literal

__all__ = ["HealthState", "SourceHealth"]

HealthState = Literal[
    "connecting",
    "connected",
    "reconnecting",
    "outage",
    "auth_refused",
    "lost_assignment",
    "stopped",
]


class SourceHealth:
    """The health of one source (see the module docstring)."""

    __slots__ = ("attempt", "last_error", "since", "state")

    def __init__(self) -> None:
        self.state: HealthState = "connecting"
        #: failed attempts since the last stable connection
        self.attempt = 0
        self.last_error: str | None = None
        #: when the current state began (wall clock, epoch seconds)
        self.since = time.time()

    def set(
        self, state: HealthState, *, attempt: int | None = None, error: str | None = None
    ) -> None:
        """Enter ``state`` (``since`` moves only when the state changes)."""
        if state != self.state:
            self.state = state
            self.since = time.time()
        if attempt is not None:
            self.attempt = attempt
        if error is not None:
            self.last_error = error

    def as_dict(self) -> dict[str, Any]:
        """The health as status shows it: state, reconnect attempt, last error and since when."""
        return {
            "state": self.state,
            "attempt": self.attempt,
            "last_error": self.last_error,
            "since": self.since,
        }
