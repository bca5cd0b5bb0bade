"""One registry of source, operator and sink kinds, for YAML and for plugins.

A :class:`Kind` is a name, a pydantic model of its parameters (what YAML may
write, and what ``rxagent schema`` publishes) and a ``build`` function that
turns validated parameters into the same objects the Python API returns
(``build`` calls ``rxagent.operators.throttle_latest(...)`` and so on), so the
two front ends cannot drift apart.

Third-party packages add kinds with an entry point in the group
``rxagent.kinds`` whose object is a function taking the :class:`Registry`::

    # pyproject.toml of the plugin
    [project.entry-points."rxagent.kinds"]
    mykinds = "my_package.rxagent_kinds:register"

    # my_package/rxagent_kinds.py
    def register(registry):
        registry.add(Kind("operator", "upper", UpperParams, build_upper))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from ..exceptions import ConfigurationError

if TYPE_CHECKING:
    from reactivex import abc

    from ..deadletters import DeadLetterSink
    from ..state import StateStore
    from ..tools.tool import Tool

__all__ = ["ENTRY_POINT_GROUP", "BuildContext", "Kind", "Registry", "Role"]

log = logging.getLogger(__name__)

Role = Literal["source", "operator", "sink"]
ROLES: tuple[Role, ...] = ("source", "operator", "sink")
ENTRY_POINT_GROUP = "rxagent.kinds"


@dataclass
class BuildContext:
    """What a kind's ``build`` may use besides its parameters: the file's state
    stores and tools by name, the directory relative paths resolve against, a
    scheduler (virtual time in ``rxagent test``), and the stage being built."""

    stores: Mapping[str, StateStore]
    tools: Mapping[str, Tool]
    base_dir: Path
    registry: Registry
    scheduler: abc.SchedulerBase | None = None
    dead_letters: DeadLetterSink | None = None
    pipeline: str = ""
    name: str | None = None  # the stage's name, if the file gave one
    #: Where a tool sink keeps its record of activations done (a pipeline reading
    #: Kafka, with a state directory): replays after a restart do not fire them again.
    state_dir: Path | None = None

    def path(self, value: str) -> Path:
        """``value`` resolved against the file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


@dataclass(frozen=True)
class Kind:
    """A source, operator or sink kind usable from YAML.

    ``shorthand`` names the parameter a scalar sets: with ``shorthand="predicate"``
    the step ``- filter: "value.px > 1"`` means ``- filter: {predicate: ...}``.
    ``reads``/``writes`` tell the loader which state stores (by parameter name)
    a kind reads or writes, for cross-checks.
    """

    role: Role
    name: str
    params: type[BaseModel]
    build: Callable[[Any, BuildContext], Any]
    shorthand: str | None = None
    summary: str = ""
    reads_store: str | None = None
    writes_store: str | None = None
    uses_tool: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigurationError(f"kind {self.name!r}: role must be one of {ROLES}")
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigurationError(
                f"kind name must be letters, digits and underscores, got {self.name!r}"
            )
        if self.shorthand is not None and self.shorthand not in self.params.model_fields:
            raise ConfigurationError(
                f"kind {self.name!r}: shorthand {self.shorthand!r} is not a parameter"
            )

    @property
    def doc(self) -> str:
        """The kind's summary: its first paragraph, on one line."""
        text = self.summary or (self.params.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(text.split())


@dataclass
class Registry:
    """Kinds by role and name."""

    _kinds: dict[Role, dict[str, Kind]] = field(
        default_factory=lambda: {role: {} for role in ROLES}
    )
    _plugins_loaded: bool = False

    def add(self, kind: Kind, *, replace: bool = False) -> Kind:
        """Register ``kind``; a name taken in its role is an error unless ``replace``."""
        table = self._kinds[kind.role]
        if kind.name in table and not replace:
            raise ConfigurationError(
                f"a {kind.role} kind named {kind.name!r} is already registered "
                f"(pass replace=True to override it)"
            )
        table[kind.name] = kind
        return kind

    def get(self, role: Role, name: str) -> Kind | None:
        """The kind named ``name`` in ``role`` (plugins' kinds included), or None when there is
        none."""
        self._load_plugins()
        return self._kinds[role].get(name)

    def names(self, role: Role) -> list[str]:
        """The names of ``role``'s kinds, sorted (what error messages suggest and the reference
        lists)."""
        self._load_plugins()
        return sorted(self._kinds[role])

    def kinds(self, role: Role) -> Iterator[Kind]:
        """``role``'s kinds in name order, plugins' kinds included (what the schema and the
        reference are made from)."""
        self._load_plugins()
        for name in sorted(self._kinds[role]):
            yield self._kinds[role][name]

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                register = ep.load()
                register(self)
            except Exception as error:
                raise ConfigurationError(
                    f"the rxagent plugin {ep.name!r} ({ep.value}) failed to register its "
                    f"kinds: {type(error).__name__}: {error}"
                ) from error
