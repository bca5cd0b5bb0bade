"""A tool: one typed function that both an LLM and the data can call.

A :class:`Tool` pairs a function with a pydantic argument model. The LLM sees
the model as a JSON schema (:meth:`Tool.openai_tool`) and calls the tool with a
dict or a JSON string; a pipeline activates it from events through
:class:`rxagent.sinks.ToolSink`. Both go through :meth:`Tool.validate`, the one
validation path, and :meth:`Tool.call`, the one calling path, so a tool cannot
accept from data what it would refuse from the LLM, and the tool's counters
(:attr:`Tool.stats`) audit both callers.

A synchronous function runs in a worker thread (``asyncio.to_thread``) so a
blocking client never stalls the event loop. A thread cannot be interrupted:
when a call times out or is cancelled, the caller stops waiting at once, but
the thread finishes its call in the background.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, get_args, get_origin, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo

from .._secrets import redact
from ..docstrings import parse_docstring
from ..exceptions import ConfigurationError, ToolArgumentsError, ToolTimeoutError

__all__ = ["Tool", "ToolStats", "register_sink", "tool"]

#: What :meth:`Tool.sink` builds: :mod:`rxagent.sinks.tools` registers ``ToolSink``
#: here when it is imported (``import rxagent`` does), so the tool, which its sink
#: uses, never imports the sink back (no import loop).
_sink_factory: Callable[..., Any] | None = None


def register_sink(factory: Callable[..., Any]) -> None:
    """Make ``factory(tool, **options)`` what :meth:`Tool.sink` returns."""
    global _sink_factory
    _sink_factory = factory


#: What OpenAI, Anthropic and most other clients accept as a tool name.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: How many validation errors a message names before summarising the rest.
_MAX_ERRORS_SHOWN = 10


@dataclass(slots=True)
class ToolStats:
    """Counters of one tool, whoever called it: the audit of both callers.

    ``invalid`` counts arguments refused by validation; ``calls`` the calls
    started; ``ok`` and ``failed`` how they ended (a cancelled call is neither).
    """

    calls: int = 0
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    running: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict (status, MCP, the dashboard)."""
        return {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "invalid": self.invalid,
            "running": self.running,
        }


class Tool:
    """A named, described function with a pydantic argument model.

    Build one with the :func:`tool` decorator, or directly::

        class Quote(BaseModel):
            symbol: str
            qty: int = Field(gt=0)

        async def place_order(args: Quote) -> str: ...

        order = Tool(place_order, args_model=Quote, description="Place an order.")

    ``max_concurrency`` and ``timeout`` bound every call, whoever makes it: an
    LLM through :meth:`invoke` and a pipeline through a tool sink share them
    (a sink may add tighter limits of its own).

    With ``args_model`` given, a function whose only parameter is annotated with
    that model receives the validated model instance; any other function receives
    the model's fields as keyword arguments. Without ``args_model`` the model is
    built from the function's signature.

    NaN and infinity are refused wherever they appear in the arguments (a float
    field, a list or dict of numbers, a nested model), since JSON from a model
    or from data can carry them (``1e999`` parses as infinity) and most tools
    would act on them; a tool that wants them passes ``allow_inf_nan=True``, or
    its ``args_model`` sets ``model_config = ConfigDict(allow_inf_nan=True)``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        args_model: type[BaseModel] | None = None,
        max_concurrency: int | None = None,
        timeout: float | None = None,
        allow_inf_nan: bool | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"a tool needs a callable, got {fn!r}")
        tool_name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(tool_name, str) or not _NAME.match(tool_name):
            raise ConfigurationError(
                f"tool name {tool_name!r} is not usable by LLM clients: use 1-64 letters, "
                "digits, '_' or '-' (pass name=...)"
            )
        self.name: str = tool_name
        self.fn = fn
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        self.description: str = description if description is not None else summary
        self._signature = _signature(fn, tool_name)
        # per argument model class: its fields by position and by keyword (_bind)
        self._bind_plans: dict[type[BaseModel], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        if allow_inf_nan is None and args_model is not None:
            allow_inf_nan = args_model.model_config.get("allow_inf_nan") is True
        #: Whether NaN and infinity are accepted in the arguments (refused by default).
        self.allow_inf_nan: bool = bool(allow_inf_nan)
        if args_model is None:
            self.args_model: type[BaseModel] = _model_from_signature(
                fn, tool_name, self._signature, arg_docs, allow_inf_nan=self.allow_inf_nan
            )
            self._pass_model = False
        else:
            if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
                raise ConfigurationError(
                    f"tool {tool_name!r}: args_model must be a pydantic BaseModel class, "
                    f"got {args_model!r}"
                )
            self.args_model = args_model
            self._pass_model = _takes_model(fn, tool_name, self._signature, args_model)
            if not self._pass_model:
                _check_fields_match(tool_name, self._signature, args_model)
        self.is_async = _is_async(fn)
        self.stats = ToolStats()
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ConfigurationError(
                f"tool {tool_name!r}: max_concurrency must be an int >= 1, got {max_concurrency!r}"
            )
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"tool {tool_name!r}: timeout must be > 0, got {timeout!r}")
        #: Limits every caller shares, the LLM and the pipeline alike.
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    # -- describing ----------------------------------------------------------------

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments (a fresh dict each call)."""
        return self.args_model.model_json_schema()

    def openai_tool(self) -> dict[str, Any]:
        """The tool as OpenAI's chat-completions ``tools`` entry expects it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.json_schema(),
            },
        }

    def describe(self) -> dict[str, Any]:
        """A plain dict for status pages: name, description, async or threaded, counters."""
        return {
            "name": self.name,
            "description": self.description,
            "async": self.is_async,
            **self.stats.as_dict(),
        }

    # -- validating and calling ------------------------------------------------------

    def validate(self, args: Mapping[str, Any] | BaseModel | str | bytes | None) -> BaseModel:
        """Check ``args`` against the argument model: the one path for every caller.

        ``args`` is a mapping, a model instance, a JSON object as text, or ``None``
        (no arguments). Raises :class:`ToolArgumentsError` naming each bad field.
        """
        model = self.args_model
        try:
            if args is None:
                validated = model.model_validate({})
            elif isinstance(args, str | bytes | bytearray):
                validated = model.model_validate_json(args)
            elif isinstance(args, model):
                # re-validated when the model asks for it (``revalidate_instances``)
                validated = model.model_validate(args)
            elif isinstance(args, BaseModel):
                # another model with the same fields (an LLM client's own class, say)
                validated = model.model_validate(args.model_dump())
            else:
                validated = model.model_validate(args)
        except ValidationError as error:
            self.stats.invalid += 1
            raise _arguments_error(self.name, error) from None
        if not self.allow_inf_nan:
            found: list[tuple[tuple[Any, ...], Any]] = []
            _non_finite(validated, (), found, 0)
            if found:
                self.stats.invalid += 1
                raise _non_finite_error(self.name, found)
        return validated

    async def call(self, args: BaseModel) -> Any:
        """Run the function with arguments already validated by :meth:`validate`.

        A synchronous function runs in a worker thread.
        """
        if not isinstance(args, self.args_model):
            raise ToolArgumentsError(
                f"tool {self.name!r}: call() takes a validated {self.args_model.__name__}, "
                f"got {type(args).__name__}; use invoke() to validate first",
                tool=self.name,
            )
        positional, keywords = self._bind(args)
        slots = self._semaphore()
        if slots is None:
            return await self._run(positional, keywords)
        async with slots:
            return await self._run(positional, keywords)

    def _semaphore(self) -> asyncio.Semaphore | None:
        if self.max_concurrency is None:
            return None
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_concurrency))
        return self._slots[1]

    async def _run(self, positional: list[Any], keywords: dict[str, Any]) -> Any:
        stats = self.stats
        stats.calls += 1
        stats.running += 1
        if self.timeout is None and self.is_async:  # the common call: no timeout scope
            try:
                result = await self.fn(*positional, **keywords)
            except asyncio.CancelledError:
                raise
            except BaseException:
                stats.failed += 1
                raise
            else:
                stats.ok += 1
                return result
            finally:
                stats.running -= 1
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                if self.is_async:
                    result = await self.fn(*positional, **keywords)
                else:
                    result = await asyncio.to_thread(self.fn, *positional, **keywords)
                    if inspect.isawaitable(result):  # a sync wrapper around a coroutine
                        result = await result
        except asyncio.CancelledError:
            raise
        except TimeoutError as error:
            stats.failed += 1
            if deadline.expired():
                raise ToolTimeoutError(
                    f"tool {self.name!r} ran past its timeout of {self.timeout}s", tool=self.name
                ) from error
            raise
        except BaseException:
            stats.failed += 1
            raise
        else:
            stats.ok += 1
            return result
        finally:
            stats.running -= 1

    async def invoke(
        self, args: Mapping[str, Any] | BaseModel | str | bytes | None = None, **kwargs: Any
    ) -> Any:
        """Validate, then call: what an LLM's tool call does.

        ``await weather.invoke({"city": "Oslo"})``, ``await weather.invoke('{"city": "Oslo"}')``
        and ``await weather.invoke(city="Oslo")`` are the same call.
        """
        if kwargs:
            if args is not None:
                raise ToolArgumentsError(
                    f"tool {self.name!r}: pass the arguments as one mapping or as keywords, "
                    "not both",
                    tool=self.name,
                )
            args = kwargs
        return await self.call(self.validate(args))

    def sink(self, **options: Any) -> Any:
        """A :class:`rxagent.sinks.ToolSink` that activates this tool from events
        (typed as such: ``rxagent.sinks.activate(tool, **options)``)."""
        if _sink_factory is None:  # only if rxagent.sinks was never imported
            raise RuntimeError("Tool.sink() needs rxagent.sinks: import rxagent first")
        return _sink_factory(self, **options)

    def _bind(self, args: BaseModel) -> tuple[list[Any], dict[str, Any]]:
        if self._pass_model:
            return [args], {}
        cls = type(args)
        plan = self._bind_plans.get(cls)
        if plan is None:
            plan = self._bind_plans[cls] = self._bind_plan(cls)
        positional_names, keyword_names = plan
        return (
            [getattr(args, name) for name in positional_names],
            {name: getattr(args, name) for name in keyword_names},
        )

    def _bind_plan(self, cls: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Which of the model's fields go in by position and which by keyword, in the
        signature's order: worked out once per model class, not per call."""
        positional: list[str] = []
        keywords: list[str] = []
        for param in self._signature.parameters.values():
            if param.name not in cls.model_fields:
                continue  # a parameter with a default that the model leaves out
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                positional.append(param.name)
            else:
                keywords.append(param.name)
        return tuple(positional), tuple(keywords)

    def __repr__(self) -> str:
        return f"<Tool {getattr(self, 'name', '?')!r}>"


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    args_model: type[BaseModel] | None = None,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    allow_inf_nan: bool | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    args_model: type[BaseModel] | None = None,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    allow_inf_nan: bool | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a :class:`Tool`: ``@tool`` or ``@tool(name=..., args_model=...)``.

    The docstring's text before any ``Args:`` section becomes the description; the
    ``Args:`` entries describe the parameters in the schema. The original function
    stays available as ``.fn``::

        @tool
        async def weather(city: str, units: Literal["c", "f"] = "c") -> dict:
            '''Current weather in a city.

            Args:
                city: City name, e.g. "Oslo".
                units: Celsius or Fahrenheit.
            '''
    """

    def build(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            description=description,
            args_model=args_model,
            max_concurrency=max_concurrency,
            timeout=timeout,
            allow_inf_nan=allow_inf_nan,
        )

    return build if fn is None else build(fn)


# -- building the model ------------------------------------------------------------------


def _signature(fn: Callable[..., Any], tool_name: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(
            f"tool {tool_name!r}: cannot read the signature of {fn!r}: {error}"
        ) from error


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with ``async def __call__``
    return call is not None and inspect.iscoroutinefunction(call)


def _hints(fn: Callable[..., Any], tool_name: str) -> dict[str, Any]:
    target = fn if inspect.isroutine(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    try:
        return get_type_hints(target, include_extras=True)
    except Exception as error:  # an annotation names something not importable
        raise ConfigurationError(
            f"tool {tool_name!r}: cannot resolve the type annotations of {fn!r}: {error}"
        ) from error


def _model_from_signature(
    fn: Callable[..., Any],
    tool_name: str,
    signature: inspect.Signature,
    arg_docs: dict[str, str],
    *,
    allow_inf_nan: bool = False,
) -> type[BaseModel]:
    hints = _hints(fn, tool_name)
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        where = f"tool {tool_name!r}, parameter {param.name!r}"
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"{where}: *args and **kwargs cannot be described to an LLM; "
                "name every parameter or pass args_model="
            )
        if param.name.startswith("_"):
            raise ConfigurationError(
                f"{where}: names starting with '_' cannot be model fields; rename it"
            )
        if hasattr(BaseModel, param.name):
            raise ConfigurationError(
                f"{where}: the name shadows a pydantic BaseModel attribute; rename it or pass "
                "args_model= with an aliased field"
            )
        annotation = hints.get(param.name, Any)
        doc = arg_docs.get(param.name)
        default = param.default
        field: Any
        if isinstance(default, FieldInfo):
            field = copy.copy(default)
            if field.description is None and doc and not _has_description(annotation):
                field.description = doc
        elif doc and not _has_description(annotation):
            field = FieldInfo(
                default=... if default is inspect.Parameter.empty else default, description=doc
            )
        else:
            field = ... if default is inspect.Parameter.empty else default
        fields[param.name] = (annotation, field)
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]+", tool_name)) + "Args"
    try:
        return create_model(
            model_name,
            # an LLM's invented argument is an error; so is NaN / infinity unless opted in
            __config__=ConfigDict(extra="forbid", allow_inf_nan=allow_inf_nan),
            **fields,
        )
    except Exception as error:
        raise ConfigurationError(
            f"tool {tool_name!r}: cannot build an argument model from the signature of "
            f"{fn!r}: {error}; pass args_model= instead"
        ) from error


def _has_description(annotation: Any) -> bool:
    if get_origin(annotation) is not Annotated:
        return False
    return any(
        isinstance(meta, FieldInfo) and meta.description is not None
        for meta in get_args(annotation)[1:]
    )


def _takes_model(
    fn: Callable[..., Any],
    tool_name: str,
    signature: inspect.Signature,
    args_model: type[BaseModel],
) -> bool:
    """Whether ``fn`` wants the model instance itself (one parameter annotated with it)."""
    params = list(signature.parameters.values())
    if len(params) != 1:
        return False
    annotation = _hints(fn, tool_name).get(params[0].name, params[0].annotation)
    return isinstance(annotation, type) and issubclass(args_model, annotation)


def _check_fields_match(
    tool_name: str, signature: inspect.Signature, args_model: type[BaseModel]
) -> None:
    """A function called with the model's fields as keywords must accept them all."""
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [f for f in args_model.model_fields if f not in params]
    if missing:
        raise ConfigurationError(
            f"tool {tool_name!r}: the function has no parameter for field(s) "
            f"{', '.join(map(repr, missing))} of {args_model.__name__}; annotate its only "
            f"parameter as {args_model.__name__} to receive the model instead"
        )
    required = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and p.name not in args_model.model_fields
    ]
    if required:
        raise ConfigurationError(
            f"tool {tool_name!r}: required parameter(s) {', '.join(map(repr, required))} "
            f"are not fields of {args_model.__name__}"
        )


# -- error messages ---------------------------------------------------------------------


def _arguments_error(tool_name: str, error: ValidationError) -> ToolArgumentsError:
    """One message naming each bad field, what was wrong, and what was given."""
    details = error.errors(include_url=False)
    parts: list[str] = []
    for item in details[:_MAX_ERRORS_SHOWN]:
        loc = ".".join(str(p) for p in item.get("loc", ())) or "(arguments)"
        text = f"{loc}: {item.get('msg', 'invalid')}"
        if item.get("type") not in ("missing", "extra_forbidden") and "input" in item:
            text += f" (got {_short(item['input'])})"
        parts.append(text)
    if len(details) > _MAX_ERRORS_SHOWN:
        parts.append(f"... and {len(details) - _MAX_ERRORS_SHOWN} more")
    message = f"invalid arguments for tool {tool_name!r}: " + "; ".join(parts)
    return ToolArgumentsError(message, tool=tool_name, errors=list(details))


#: How deep :func:`_non_finite` looks into nested arguments (pydantic bounds nesting too).
_MAX_DEPTH = 64


@functools.lru_cache(maxsize=1024)
def _field_names(cls: type[BaseModel]) -> tuple[str, ...]:
    """A model class's field names (``model_fields`` is a costly property to read per value)."""
    return tuple(cls.model_fields)


def _non_finite(
    value: Any, loc: tuple[Any, ...], found: list[tuple[tuple[Any, ...], Any]], depth: int
) -> None:
    """Collect (location, value) of every NaN or infinity in validated arguments."""
    if isinstance(value, float):
        if not math.isfinite(value):
            found.append((loc, value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            found.append((loc, value))
    elif isinstance(value, complex):
        if not (math.isfinite(value.real) and math.isfinite(value.imag)):
            found.append((loc, value))
    elif depth >= _MAX_DEPTH or isinstance(value, str | bytes | bytearray | int):
        return
    elif isinstance(value, BaseModel):
        for name in _field_names(type(value)):
            _non_finite(getattr(value, name, None), (*loc, name), found, depth + 1)
        for name, item in (value.__pydantic_extra__ or {}).items():
            _non_finite(item, (*loc, name), found, depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _non_finite(item, (*loc, key), found, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            _non_finite(item, (*loc, index), found, depth + 1)


def _non_finite_error(
    tool_name: str, found: list[tuple[tuple[Any, ...], Any]]
) -> ToolArgumentsError:
    parts = [
        f"{'.'.join(map(str, loc)) or '(arguments)'}: a finite number is required, got {value!r}"
        for loc, value in found[:_MAX_ERRORS_SHOWN]
    ]
    if len(found) > _MAX_ERRORS_SHOWN:
        parts.append(f"... and {len(found) - _MAX_ERRORS_SHOWN} more")
    message = (
        f"invalid arguments for tool {tool_name!r}: "
        + "; ".join(parts)
        + " (NaN and infinity are refused unless the tool is made with allow_inf_nan=True)"
    )
    errors: list[Any] = [
        {"type": "finite_number", "loc": loc, "msg": "Input should be a finite number", "input": v}
        for loc, v in found
    ]
    return ToolArgumentsError(message, tool=tool_name, errors=errors)


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = redact(text)  # before truncating: a secret's prefix must not show
    return text if len(text) <= limit else text[: limit - 1] + "…"
