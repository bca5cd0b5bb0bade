"""State: keyed stores folded from events and read by agents and code.

:class:`StateStore` keeps immutable snapshots (readers never see half an
update), streams its changes, renders compact prompt text, and can keep its
entries durable on local disk, checkpointed together with the source offsets
(see docs/state.md).
"""

from .render import context_header, context_line, fit, omitted_line, recent_entries
from .store import DELETE, ChangeSet, Entry, Reducer, Snapshot, StateChange, StateStore

__all__ = [
    "DELETE",
    "ChangeSet",
    "Entry",
    "Reducer",
    "Snapshot",
    "StateChange",
    "StateStore",
    "context_header",
    "context_line",
    "fit",
    "omitted_line",
    "recent_entries",
]
