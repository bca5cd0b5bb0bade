"""The source of a store's changes, kept for old imports: it lives in
:mod:`rxagent.sources.store_changes`."""

from .store_changes import StateChangesSource, state_changes

__all__ = ["StateChangesSource", "state_changes"]
