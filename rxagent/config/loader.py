"""Load a pipeline file: parse, validate everything, report every problem located.

:func:`load` (a path) and :func:`loads` (text) return a :class:`Config`: the
validated file, nothing started. :meth:`Config.build` makes the state stores,
tools and pipelines (an :class:`~rxagent.App`), ready to run::

    config = load("pipelines/market.yaml")
    built = config.build()
    await built.app.run(duration=10)
    print(built.stores["prices"].context())

Every problem, whatever its stage (YAML syntax, an unknown kind, a wrong type,
a bad expression, an unknown tool, a state store read but never written), is a
:class:`~rxagent.config.document.Problem` with file, line, column and what was
expected; all of a file's problems are raised together as one
:class:`~rxagent.config.document.ConfigFileError`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .._secrets import redact
from ..exceptions import ConfigurationError
from .document import (
    MAX_FILE_BYTES,
    ConfigFileError,
    Locations,
    Problem,
    SourceDocument,
    parse,
    size_problem,
)
from .kinds import default_registry, import_ref
from .model import DocumentModel, PipelineModel, ToolModel
from .registry import BuildContext, Kind, Registry, Role
from .shapes import check_pipelines

if TYPE_CHECKING:
    from reactivex import abc

    from ..deadletters import DeadLetterSink
    from ..runtime import App, Pipeline
    from ..sources.base import Source
    from ..state import StateStore
    from ..tools.tool_registry import ToolRegistry

__all__ = [
    "BuiltApp",
    "Config",
    "PipelineSpec",
    "StageSpec",
    "add_import_paths",
    "load",
    "loads",
    "tool_from_declaration",
]

Path_ = tuple[str | int, ...]
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class StageSpec:
    """A validated source, step or sink: its kind, parameters and place in the file."""

    kind: Kind
    params: Any
    path: Path_

    @property
    def name(self) -> str | None:
        """The ``name:`` the file gave the stage, if any."""
        value = getattr(self.params, "name", None)
        return value if isinstance(value, str) else None

    @property
    def label(self) -> str:
        """The stage's name, else its kind's."""
        return self.name or self.kind.name


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    description: str | None
    source: StageSpec
    steps: list[StageSpec]
    sinks: list[StageSpec]


@dataclass
class BuiltApp:
    """What :meth:`Config.build` made: the app and its parts by name."""

    config: Config
    app: App
    pipelines: dict[str, Pipeline]
    stores: dict[str, StateStore]
    tools: ToolRegistry
    dead_letters: DeadLetterSink
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Config:
    """A validated pipeline file."""

    document: SourceDocument
    model: DocumentModel
    pipelines: dict[str, PipelineSpec]
    registry: Registry

    @property
    def file(self) -> str:
        """The file's name as errors show it."""
        return self.document.file

    def redact(self, text: str) -> str:
        """``text`` without the values that came from the environment."""
        return self.document.redact(text)

    def location(self, path: Path_) -> str:
        """``file:line:column`` of the value at ``path`` in the file."""
        return str(self.document.locations.of(path))

    def trial_build(self) -> list[Problem]:
        """Construct every tool and stage once (nothing connects or starts) and
        return the problems their constructors reported, located."""
        from ..deadletters import MemoryDeadLetters
        from ..state import StateStore

        problems: list[Problem] = []
        locations = self.document.locations
        tools: dict[str, Any] = {}
        for name, decl in self.model.tools.items():
            try:
                tools[name] = tool_from_declaration(name, decl)
            except (ConfigurationError, ValueError, TypeError) as error:
                problems.append(
                    locations.problem(("tools", name), f"not usable as a tool: {error}")
                )
        stores = {name: StateStore(name) for name in self.model.state}
        for spec in self.pipelines.values():
            for stage in (spec.source, *spec.steps, *spec.sinks):
                if (
                    stage.kind.uses_tool
                    and getattr(stage.params, stage.kind.uses_tool) not in tools
                ):
                    continue  # reported above
                ctx = BuildContext(
                    stores=stores,
                    tools=tools,
                    base_dir=self.document.base_dir,
                    registry=self.registry,
                    dead_letters=MemoryDeadLetters(),
                    pipeline=spec.name,
                    name=stage.name,
                )
                try:
                    stage.kind.build(stage.params, ctx)
                except (ConfigurationError, ValueError, TypeError) as error:
                    problems.append(
                        locations.problem((*stage.path, stage.kind.name), _first_line(error))
                    )
        return problems

    def state_dir(self) -> Path | None:
        """``settings.state_dir``, relative to the file (None: not set)."""
        setting = self.model.settings.state_dir
        if setting is None:
            return None
        path = Path(setting).expanduser()
        return path if path.is_absolute() else self.document.base_dir / path

    def durable_stores(self) -> dict[str, bool]:
        """Per store, whether it keeps its entries across restarts: ``durable:`` as
        declared, else True when every pipeline writing it reads Kafka. A replay
        is idempotent only with positions that stay the same across processes
        (Kafka offsets); a WebSocket feed's sequence restarts with its server, so
        such stores are durable only when the file says so."""
        sources: dict[str, set[str]] = {name: set() for name in self.model.state}
        for spec in self.pipelines.values():
            for sink in spec.sinks:
                attr = sink.kind.writes_store
                store = getattr(sink.params, attr) if attr else None
                if store in sources:
                    sources[store].add(spec.source.kind.name)
        durable: dict[str, bool] = {}
        for name, decl in self.model.state.items():
            declared = None if decl is None else decl.durable
            written = sources[name]
            durable[name] = declared if declared is not None else written == {"kafka"}
        return durable

    def make_stores(self, state_dir: str | Path | None = None) -> dict[str, StateStore]:
        """The file's state stores; durable ones in ``state_dir`` if given, else in
        ``settings.state_dir``."""
        from ..state import StateStore

        where = Path(state_dir) if state_dir is not None else self.state_dir()
        stores: dict[str, StateStore] = {}
        for name, durable in self.durable_stores().items():
            decl = self.model.state[name]
            if durable and where is None and decl is not None and decl.durable:
                raise ConfigFileError(
                    [
                        self.document.locations.problem(
                            ("state", name, "durable"),
                            f"state store {name!r} is durable but no state directory is set: "
                            "add settings.state_dir (rxagent run uses .rxagent/state/<file>)",
                        )
                    ]
                )
            codec = "pickle" if decl is None else decl.codec
            stores[name] = StateStore(name, state_dir=where if durable else None, codec=codec)
        return stores

    def build(
        self,
        *,
        pipelines: Iterable[str] | None = None,
        scheduler: abc.SchedulerBase | None = None,
        dead_letters: DeadLetterSink | None = None,
        sources: Mapping[str, Source] | None = None,
        state_dir: str | Path | None = None,
    ) -> BuiltApp:
        """Make the stores, tools and pipelines (all, or those named).

        ``state_dir`` is where durable stores keep their files (default: the file's
        ``settings.state_dir``; see :meth:`durable_stores`).
        ``scheduler`` is given to every time-based operator (virtual time in
        tests); ``dead_letters`` overrides the file's setting; ``sources`` maps
        pipeline names to sources used instead of the file's (``rxagent replay``
        plays a recording into a pipeline this way).
        """
        from ..deadletters import JsonlDeadLetters, MemoryDeadLetters
        from ..runtime import App, Pipeline
        from ..tools.tool import Tool
        from ..tools.tool_registry import ToolRegistry

        names = list(self.pipelines) if pipelines is None else list(pipelines)
        sources = dict(sources or {})
        for name in [*names, *(n for n in sources if n not in names)]:
            if name not in self.pipelines:
                raise ConfigurationError(
                    f"{self.file}: no pipeline named {name!r}; the file has "
                    f"{', '.join(sorted(self.pipelines))}"
                )
        settings = self.model.settings
        if dead_letters is None:
            if settings.dead_letters == "memory":
                dead_letters = MemoryDeadLetters()
            else:
                path = Path(settings.dead_letters)
                dead_letters = JsonlDeadLetters(
                    path if path.is_absolute() else self.document.base_dir / path
                )
        stores = self.make_stores(state_dir)
        where = Path(state_dir) if state_dir is not None else self.state_dir()
        registry = ToolRegistry()
        tools: dict[str, Tool] = {}
        for name, decl in self.model.tools.items():
            tools[name] = registry.register(tool_from_declaration(name, decl))
        app = App(name=Path(self.file).stem)
        built = BuiltApp(self, app, {}, stores, registry, dead_letters)
        for name in names:
            spec = self.pipelines[name]

            # a Kafka source replays after a restart: its tool sinks keep a record
            replayable = spec.source.kind.name == "kafka" and name not in sources
            record_dir = where if replayable else None

            def context(
                stage: StageSpec, pipeline: str = name, record_dir: Path | None = record_dir
            ) -> BuildContext:
                return BuildContext(
                    stores=stores,
                    tools=tools,
                    base_dir=self.document.base_dir,
                    registry=self.registry,
                    scheduler=scheduler,
                    dead_letters=dead_letters,
                    pipeline=pipeline,
                    name=stage.name,
                    state_dir=record_dir,
                )

            source = sources.get(name) or _build(spec.source, context(spec.source), self)
            pipeline = Pipeline(
                name,
                source,
                dead_letters=dead_letters,
                fail_fast=settings.fail_fast,
                checkpoint_interval=settings.checkpoint_interval,
                max_dead_letter_ratio=settings.max_dead_letter_ratio,
            )
            pipeline.pipe(*(_build(step, context(step), self) for step in spec.steps))
            sinks = [_build(sink, context(sink), self) for sink in spec.sinks]
            pipeline.to(*sinks)
            built.sinks[name] = {
                sink.name if hasattr(sink, "name") else str(i): sink for i, sink in enumerate(sinks)
            }
            app.add(pipeline)
            built.pipelines[name] = pipeline
        return built


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.split("\n")[0]


def tool_from_declaration(name: str, decl: ToolModel) -> Any:
    """The :class:`~rxagent.tools.Tool` a file's ``tools:`` entry declares (its
    function imported, its options applied); MCP serves a file's tools with it too."""
    from ..tools.tool import Tool

    obj = import_ref(decl.function)
    fn = obj.fn if isinstance(obj, Tool) else obj
    base = obj if isinstance(obj, Tool) else None
    return Tool(
        fn,
        name=name,
        description=decl.description
        if decl.description is not None
        else (base.description if base else None),
        args_model=base.args_model if base is not None and base._pass_model else None,
        max_concurrency=decl.max_concurrency
        if decl.max_concurrency is not None
        else (base.max_concurrency if base else None),
        timeout=decl.timeout if decl.timeout is not None else (base.timeout if base else None),
    )


def _build(stage: StageSpec, ctx: BuildContext, config: Config) -> Any:
    try:
        built = stage.kind.build(stage.params, ctx)
        if hasattr(stage.params, "credit_bytes") and hasattr(built, "credit_bytes"):
            # every source takes it: set once here rather than in each kind's build
            built.credit_bytes = stage.params.credit_bytes
        return built
    except ConfigurationError as error:
        where = config.document.locations.of(stage.path)
        raise ConfigFileError([Problem(where, stage.path, config.redact(str(error)))]) from None


# -- loading ---------------------------------------------------------------------------


def add_import_paths(paths: Iterable[str | Path]) -> None:
    """Let python references import modules from ``paths`` (a pipeline file's
    folder, the current directory, ``--path``): each is appended to ``sys.path``
    once, after the installed packages, so a file beside the pipeline cannot shadow
    the standard library or an installed package of the same name."""
    for path in paths:
        entry = str(Path(path).expanduser().resolve())
        if entry not in sys.path:
            sys.path.append(entry)


def load(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    python_path: Iterable[str | Path] = (),
) -> Config:
    """Read, parse and validate the pipeline file at ``path``.

    Python references in the file (``package.module:attribute``) import from the
    installed packages, then the file's folder, the current directory and each
    of ``python_path`` (``rxagent run --path DIR``): see :func:`add_import_paths`.
    """
    p = Path(path)
    try:
        with p.open("rb") as file:  # bounded: /dev/zero is not a pipeline file
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigurationError(
            f"cannot read pipeline file {str(p)!r}: {error.strerror}"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        head = raw[:MAX_FILE_BYTES].decode("utf-8", "ignore")
        raise ConfigFileError([size_problem(str(path), head)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"{p}: not UTF-8 text ({error.reason})") from None
    return loads(
        text,
        file=str(path),
        base_dir=p.parent.resolve(),
        environ=environ,
        registry=registry,
        python_path=python_path,
    )


def loads(
    text: str,
    *,
    file: str = "<string>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    python_path: Iterable[str | Path] = (),
) -> Config:
    """Parse and validate pipeline file ``text`` (``file`` names it in errors).

    Python references import from the installed packages, then ``base_dir`` (the
    file's folder), the current directory and ``python_path``."""
    registry = registry or default_registry()
    add_import_paths([*(() if base_dir is None else (base_dir,)), Path.cwd(), *python_path])
    doc = parse(text, file=file, environ=environ, base_dir=base_dir)
    locations = doc.locations
    problems: list[Problem] = []
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigFileError(
            [locations.problem((), f"expected a mapping with pipelines:, got {_describe(data)}")]
        )
    model: DocumentModel | None = None
    try:
        model = DocumentModel.model_validate(data)
    except ValidationError as error:
        problems.extend(_pydantic_problems(error, (), locations, DocumentModel, data))
    for section in ("state", "tools", "pipelines"):
        names = data.get(section)
        for name in names if isinstance(names, dict) else ():
            if not _is_ident(name):
                problems.append(
                    locations.problem(
                        (section, name),
                        f"name {name!r} must be letters, digits, '_' or '-'",
                        key=True,
                    )
                )
    pipelines: dict[str, PipelineSpec] = {}
    stages: list[StageSpec] = []  # every stage that validated, for the cross-checks
    unverified: set[str] = set()  # stores named by writers that failed to validate
    raw_pipelines = data.get("pipelines")
    for name, raw in raw_pipelines.items() if isinstance(raw_pipelines, dict) else ():
        try:  # its own errors, if any, are among the document's already
            pipeline = PipelineModel.model_validate(raw)
        except ValidationError:
            continue
        spec = _pipeline(name, pipeline, raw, registry, locations, problems, stages, unverified)
        if spec is not None:
            pipelines[name] = spec
    state, tools = data.get("state"), data.get("tools")
    _cross_check(
        set(state) if isinstance(state, dict) else set(),
        set(tools) if isinstance(tools, dict) else set(),
        stages,
        locations,
        problems,
        unverified,
    )
    _replayed_and_truncated(stages, doc.base_dir, locations, problems)
    # types flow through each pipeline: expressions and tool arguments against the
    # shapes the stages before them emit (docs/yaml.md, "Types flow through the file")
    problems.extend(
        check_pipelines(
            pipelines,
            locations,
            text=text,
            tool_model=lambda name: _tool_args_model(model, name),
        )
    )
    if model is None:
        raise ConfigFileError(_redacted(problems, doc))
    if not problems:
        config = Config(doc, model, pipelines, registry)
        problems.extend(config.trial_build())
    if problems:
        raise ConfigFileError(_redacted(problems, doc))
    return Config(doc, model, pipelines, registry)


def _tool_args_model(model: DocumentModel | None, name: str) -> type[BaseModel] | None:
    """The argument model of the file's tool ``name`` (None: not declared, or it
    cannot be made, which the trial build reports)."""
    decl = None if model is None else model.tools.get(name)
    if decl is None:
        return None
    try:
        args_model: type[BaseModel] = tool_from_declaration(name, decl).args_model
    except Exception:
        return None
    return args_model


def _redacted(problems: list[Problem], doc: SourceDocument) -> list[Problem]:
    return [Problem(p.location, p.path, doc.redact(p.message)) for p in problems]


def _is_ident(name: str) -> bool:
    return bool(_IDENT.match(name))


def _pipeline(
    name: str,
    model: PipelineModel,
    raw: dict[str, Any],
    registry: Registry,
    locations: Locations,
    problems: list[Problem],
    stages: list[StageSpec],
    unverified: set[str],
) -> PipelineSpec | None:
    base: Path_ = ("pipelines", name)
    before = len(problems)
    source = _stage("source", model.source, (*base, "source"), registry, locations, problems)
    steps = [
        _stage("operator", step, (*base, "steps", i), registry, locations, problems)
        for i, step in enumerate(model.steps)
    ]
    sinks_key = "sinks" if "sinks" in raw else "sink"
    sink_specs = [
        _stage(
            "sink",
            sink,
            (*base, sinks_key, i) if sinks_key == "sinks" else (*base, "sink"),
            registry,
            locations,
            problems,
            unverified,
        )
        for i, sink in enumerate(model.sinks)
    ]
    stages.extend(s for s in (source, *steps, *sink_specs) if s is not None)
    if len(problems) > before or source is None:
        return None
    return PipelineSpec(
        name,
        model.description,
        source,
        [s for s in steps if s is not None],
        [s for s in sink_specs if s is not None],
    )


_ROLE_WORD = {"source": "source", "operator": "step", "sink": "sink"}


def _stage(
    role: Role,
    raw: Any,
    path: Path_,
    registry: Registry,
    locations: Locations,
    problems: list[Problem],
    unverified: set[str] | None = None,
) -> StageSpec | None:
    """The validated stage, or None with its problems reported. A stage writing a
    store that fails to validate adds the store to ``unverified``: the cross-check
    then does not report the store as never written (a follow-on error)."""
    names = registry.names(role)
    shape = f"{{kind: parameters}} with one kind of: {', '.join(names)}"
    if isinstance(raw, str) and registry.get(role, raw) is not None:
        raw = {raw: None}  # a kind without parameters: ``- count_window`` style
    if not isinstance(raw, dict) or len(raw) != 1:
        got = (
            f"a mapping with {len(raw)} key{'' if len(raw) == 1 else 's'} "
            f"({', '.join(map(str, raw))})"
            if isinstance(raw, dict)
            else _describe(raw)
        )
        problems.append(locations.problem(path, f"a {_ROLE_WORD[role]} must be {shape}; got {got}"))
        return None
    kind_name, params = next(iter(raw.items()))
    kind = registry.get(role, kind_name)
    if kind is None:
        close = difflib.get_close_matches(kind_name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(
            locations.problem(
                (*path, kind_name),
                f"unknown {_ROLE_WORD[role]} kind {kind_name!r}{hint} (known: {', '.join(names)})",
                key=True,
            )
        )
        return None
    kpath: Path_ = (*path, kind_name)
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        if kind.shorthand is None:
            problems.append(
                locations.problem(
                    kpath,
                    f"{kind_name} takes a mapping of parameters ({_signature(kind.params)}), "
                    f"got {_describe(params)}",
                )
            )
            return None
        params = {kind.shorthand: params}
        # the scalar is the shorthand parameter's value: errors point at it
        locations.add_alias((*kpath, kind.shorthand), kpath)
    try:
        value = kind.params.model_validate(params)
    except ValidationError as error:
        problems.extend(_pydantic_problems(error, kpath, locations, kind.params, params, kind=kind))
        store = params.get(kind.writes_store) if kind.writes_store else None
        if unverified is not None and isinstance(store, str):
            unverified.add(store)
        return None
    return StageSpec(kind, value, path)


def _cross_check(
    declared: set[str],
    tools: set[str],
    stages: list[StageSpec],
    locations: Locations,
    problems: list[Problem],
    unverified: Iterable[str] = (),
) -> None:
    written: set[str] = set(unverified)
    reads: list[tuple[str, Path_]] = []
    for stage in stages:
        kind = stage.kind
        kpath: Path_ = (*stage.path, kind.name)
        for attr, used in ((kind.writes_store, "writes"), (kind.reads_store, "reads")):
            if attr is None:
                continue
            store = getattr(stage.params, attr)
            if store not in declared:
                known = ", ".join(sorted(declared)) or "none declared"
                problems.append(
                    locations.problem(
                        (*kpath, attr),
                        f"unknown state store {store!r} (declare it under state:; "
                        f"declared: {known})",
                    )
                )
            elif used == "writes":
                written.add(store)
            else:
                reads.append((store, (*kpath, attr)))
        if kind.uses_tool is not None:
            tool = getattr(stage.params, kind.uses_tool)
            if tool not in tools:
                known = ", ".join(sorted(tools)) or "none declared"
                problems.append(
                    locations.problem(
                        (*kpath, kind.uses_tool),
                        f"unknown tool {tool!r} (declare it under tools: as "
                        f"name: package.module:function; declared: {known})",
                    )
                )
    for store, path in reads:
        if store not in written:
            problems.append(
                locations.problem(
                    path,
                    f"pipeline reads state store {store!r} but no pipeline writes it "
                    f"(add a sink - state: {store})",
                )
            )


def _replayed_and_truncated(
    stages: list[StageSpec], base_dir: Path, locations: Locations, problems: list[Problem]
) -> None:
    """Refuse a ``record`` sink with ``append: false`` on a file that a ``replay``
    source of the same file reads: the sink empties the file when the pipelines
    start, before the replay has read it."""

    def resolved(value: str) -> str:
        path = Path(value).expanduser()
        return os.path.realpath(path if path.is_absolute() else base_dir / path)

    replayed: dict[str, Path_] = {}
    for stage in stages:
        if stage.kind.role == "source" and stage.kind.name == "replay":
            replayed.setdefault(resolved(stage.params.path), stage.path)
    for stage in stages:
        if stage.kind.role != "sink" or stage.kind.name != "record" or stage.params.append:
            continue
        replay = replayed.get(resolved(stage.params.path))
        if replay is not None:
            problems.append(
                locations.problem(
                    (*stage.path, stage.kind.name, "path"),
                    f"record sink with append: false would empty {stage.params.path!r} "
                    f"before the replay source at {locations.of(replay)} reads it "
                    "(record to another file, or set append: true)",
                )
            )


# -- turning pydantic's errors into located, readable problems -------------------------


def _pydantic_problems(
    error: ValidationError,
    base: Path_,
    locations: Locations,
    model: type[BaseModel],
    data: Any,
    *,
    kind: Kind | None = None,
) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[Path_, str]] = set()
    for err in error.errors(include_url=False):
        loc = _document_path(err["loc"], data)
        path = (*base, *loc)
        message = _message(err, model, loc, kind)
        if (path, message) in seen:
            continue
        seen.add((path, message))
        out.append(locations.problem(path, message, key=err["type"] == "extra_forbidden"))
    return out


def _document_path(loc: tuple[int | str, ...], data: Any) -> Path_:
    """pydantic's ``loc`` without its union/validator tags: only the parts that
    are keys or indexes of the data."""
    out: list[str | int] = []
    node = data
    for part in loc:
        child = _child(node, part)
        if child is not _MISSING:
            out.append(part)
            node = child
        elif isinstance(node, dict) and isinstance(part, str) and _IDENT.match(part):
            # a missing field (or a validator's tag): name it, then stop walking
            if not part[:1].isupper():
                out.append(part)
            node = None
    return tuple(out)


_MISSING = object()


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _MISSING


def _message(err: Any, model: type[BaseModel], loc: Path_, kind: Kind | None) -> str:
    kind_type = err["type"]
    got = err.get("input")
    owner = _model_at(model, loc[:-1]) if loc else model
    where = f" of {kind.name}" if kind is not None else ""
    if kind_type == "missing":
        field_name = loc[-1] if loc else "?"
        expected = _field_shape(owner, str(field_name)) if owner else ""
        return f"missing required parameter{where} {field_name!r}" + (
            f" ({expected})" if expected else ""
        )
    if kind_type == "extra_forbidden":
        field_name = str(loc[-1]) if loc else "?"
        fields = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(field_name, fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown parameter{where} {field_name!r}{hint} (expected: {', '.join(fields)})"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind_type.startswith("value_error") or kind_type == "assertion_error":
        return msg
    if kind_type == "too_short" and isinstance(got, list | dict) and not got:
        return f"must not be empty ({_field_shape(owner, str(loc[-1])) if owner and loc else msg})"
    return f"{msg}; got {_describe(got)}"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = redact(repr(value))  # before truncating: a secret's prefix must not show
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _model_at(model: type[BaseModel] | None, loc: Path_) -> type[BaseModel] | None:
    """The pydantic model describing the mapping at ``loc`` under ``model``."""
    current: Any = model
    for part in loc:
        if current is None:
            return None
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        else:
            current = _element(current)
        current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
        return annotation
    return annotation


def _element(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        return _unwrap(args[1])
    if origin in (list, tuple) and args:
        return _unwrap(args[0])
    return None


def _field_shape(model: type[BaseModel], name: str) -> str:
    info = model.model_fields.get(name)
    if info is None:
        return ""
    if info.description:
        return info.description
    for meta in info.metadata:
        described = getattr(meta, "json_schema", None)
        if isinstance(described, dict) and "description" in described:
            return str(described["description"])
    return _type_name(info.annotation)


def _type_name(annotation: Any) -> str:
    annotation = (
        typing.get_args(annotation)[0]
        if typing.get_origin(annotation) is typing.Annotated
        else annotation
    )
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _signature(model: type[BaseModel]) -> str:
    return ", ".join(
        f"{name}{'' if info.is_required() else '?'}" for name, info in model.model_fields.items()
    )
