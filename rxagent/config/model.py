"""The pydantic models of a pipeline file (the parts that do not depend on kinds).

Sources, steps and sinks are *single-key mappings* ``{kind: parameters}``
checked against the registry by the loader, so a kind added by a plugin is
valid YAML without touching these models::

    version: 1
    settings: {dead_letters: dead.jsonl}
    state:
      prices: {description: last price per symbol}
    tools:
      alert: my_package.alerts:alert
    pipelines:
      feed:
        source: {websocket: {url: "ws://127.0.0.1:8765"}}
        steps:
          - filter: value.px > 0
          - key_by: sym
          - throttle_latest: 1s
        sinks:
          - state: prices
          - tool: {tool: alert, args: {symbol: sym}}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .kinds import Duration, Params, PythonRef

__all__ = [
    "DocumentModel",
    "HttpModel",
    "PipelineModel",
    "SettingsModel",
    "StateModel",
    "TestCaseModel",
    "ToolModel",
]


class HttpModel(Params):
    """The operations HTTP server of ``rxagent run`` (docs/operations.md): metrics,
    health, readiness and the dashboard, and MCP at ``/mcp`` when asked."""

    listen: str = Field(
        "127.0.0.1:8000", description="HOST:PORT to serve on (a loopback address by default)"
    )
    token: str | None = Field(
        None,
        description="bearer token every request must carry (use ${VAR}); none: no token",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values to accept; required when listen is not a loopback address",
    )
    allow_origins: list[str] = Field(
        default_factory=list, description="Origin header values to accept (browsers elsewhere)"
    )
    mcp: bool = Field(False, description="also serve MCP over HTTP at /mcp (needs token)")
    health_threshold: Duration = Field(
        5.0, description="/healthz fails when the event loop was blocked longer than this"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        from ..exceptions import ConfigurationError
        from ..observe.http import parse_listen

        try:
            parse_listen(value)
        except ConfigurationError as error:
            raise ValueError(str(error)) from None
        return value


class SettingsModel(Params):
    """Settings of every pipeline in the file."""

    dead_letters: str = Field(
        "memory",
        description='"memory" (kept in the process, shown in status) or a JSONL file path',
    )
    fail_fast: bool = Field(False, description="a failing user function fails the pipeline")
    drain_timeout: Duration = Field(10.0, description="how long stop waits for events in flight")
    state_dir: str | None = Field(
        None,
        description="where durable stores keep their files (relative: to this file); "
        "`rxagent run` defaults to .rxagent/state/<file name>",
    )
    checkpoint_interval: Duration = Field(
        1.0, description="how often durable stores write their changes (and offsets follow)"
    )
    max_dead_letter_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fail a pipeline whose stage dead-letters more than this share of what it "
        "receives (after 100 dead letters; null: only warn)",
    )
    http: HttpModel | None = Field(
        None,
        description="serve metrics, health, readiness and the dashboard over HTTP while "
        "`rxagent run` runs (docs/operations.md)",
    )


class StateModel(Params):
    """A state store pipelines write with the ``state`` sink and read with the
    ``state`` source (and agents read over MCP)."""

    description: str | None = None
    durable: bool | None = Field(
        None,
        description="keep entries in the state directory across restarts; default: when "
        "every pipeline writing the store reads Kafka (replayable, with stable offsets)",
    )
    codec: Literal["pickle", "json"] = Field(
        "pickle", description="how a durable store encodes keys and values"
    )


class ToolModel(Params):
    """A python function offered as a tool (to pipelines and to agents)."""

    function: PythonRef
    description: str | None = None
    max_concurrency: int | None = Field(None, ge=1)
    timeout: Duration | None = None


class PipelineModel(Params):
    """One source, steps applied in order, one or more sinks."""

    description: str | None = None
    source: dict[str, Any] = Field(description="{kind: parameters}, one kind")
    steps: list[Any] = Field(default_factory=list, description="[{kind: parameters}, ...]")
    sinks: list[Any] = Field(min_length=1, description="[{kind: parameters}, ...]")

    @model_validator(mode="before")
    @classmethod
    def _one_sink(cls, data: Any) -> Any:
        # ``sink: {...}`` is accepted for the common case of a single sink
        if isinstance(data, dict) and "sink" in data:
            if "sinks" in data:
                raise ValueError("give sink or sinks, not both")
            data = {**data, "sinks": [data["sink"]]}
            del data["sink"]
        return data


class TestCaseModel(Params):
    """A marble test of one pipeline in virtual time (``rxagent test``)."""

    name: str
    pipeline: str
    values: dict[str, Any] = Field(default_factory=dict, description="marble letter -> event value")
    input: str = Field(description="marbles of the pipeline's source, e.g. '-a-b--c|'")
    expect: dict[str, Any] = Field(
        description="per sink (by name or index): marbles of what it receives; "
        "per state store (state.NAME): the expected snapshot"
    )
    tick: Duration = Field(1.0, description="seconds per marble frame")
    keys: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="marble letter -> the event's key, as a Kafka message key travels beside "
        "its value (wins over the source's key: expression)",
    )
    times: dict[str, float] = Field(
        default_factory=dict,
        description="marble letter -> the event's time in epoch seconds, as a message "
        "timestamp (for event-time windows)",
    )


class DocumentModel(Params):
    """A pipeline file."""

    version: Literal[1] = 1
    settings: SettingsModel = SettingsModel()
    state: dict[str, StateModel | None] = Field(
        default_factory=dict, description="name -> {description: ...} of each state store"
    )
    tools: dict[str, ToolModel] = Field(
        default_factory=dict, description="name -> package.module:function, or {function: ...}"
    )
    pipelines: dict[str, PipelineModel] = Field(
        min_length=1, description="name -> {source: ..., steps: [...], sinks: [...]}"
    )
    tests: list[TestCaseModel] = Field(default_factory=list)

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_shorthand(cls, value: Any) -> Any:
        # ``name: package.module:function`` is short for ``name: {function: ...}``
        if isinstance(value, dict):
            return {k: {"function": v} if isinstance(v, str) else v for k, v in value.items()}
        return value
