"""Per-key activation policies: what to do with an event whose key may be busy.

Pure decision logic, apart from the sink that awaits the calls: given whether
the key has a call in progress, the time now and when the key was last
activated, :func:`decide` says start, queue, replace or drop. The policies:

- ``"queue"``: one call per key at a time, in arrival order (nothing lost);
- ``"latest"``: a new event cancels the key's call and runs instead (only the
  newest matters, e.g. "re-plan on the latest price");
- ``"drop_while_busy"``: events for a busy key are dropped, counted;
- ``"parallel"``: no per-key limit (only the sink's global concurrency).

``cooldown`` applies on top of any policy: after a key was activated, its
events are dropped for that many seconds of the pipeline's clock.
"""

from __future__ import annotations

import enum
from typing import Literal, TypeAlias

__all__ = ["POLICIES", "ActivationPolicy", "Decision", "decide"]

ActivationPolicy: TypeAlias = Literal["queue", "latest", "drop_while_busy", "parallel"]

POLICIES: frozenset[str] = frozenset({"queue", "latest", "drop_while_busy", "parallel"})


class Decision(enum.Enum):
    """What the sink does with one event."""

    START = "start"  # run now, or as soon as a global slot frees
    QUEUE = "queue"  # wait behind the key's call
    REPLACE = "replace"  # cancel the key's call, run this one
    DROP_BUSY = "drop_busy"  # the key is busy and the policy drops
    DROP_COOLDOWN = "drop_cooldown"  # the key was activated less than cooldown ago


def decide(
    policy: ActivationPolicy,
    *,
    busy: bool,
    now: float,
    last_activation: float | None = None,
    cooldown: float | None = None,
) -> Decision:
    """The decision for an event of a key: ``busy`` if the key has a call running
    or waiting; ``last_activation`` the clock time the key was last activated."""
    if cooldown and last_activation is not None and now < last_activation + cooldown:
        return Decision.DROP_COOLDOWN
    if not busy or policy == "parallel":
        return Decision.START
    if policy == "queue":
        return Decision.QUEUE
    if policy == "latest":
        return Decision.REPLACE
    return Decision.DROP_BUSY
