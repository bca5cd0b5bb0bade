"""Pipelines declared in YAML: the file format, the registry of kinds, the loader.

::

    from rxagent.config import load

    config = load("pipelines/market.yaml")   # validates everything, starts nothing
    built = config.build()                    # stores, tools, pipelines -> an App
    await built.app.run(duration=10)

The format is documented in docs/yaml.md and published as JSON Schema by
``rxagent schema``; kinds come from :func:`default_registry` (built-ins plus
plugins' entry points in the group ``rxagent.kinds``).
"""

from .document import ConfigFileError, Location, Problem
from .kinds import default_registry
from .loader import BuiltApp, Config, PipelineSpec, StageSpec, load, loads
from .registry import ENTRY_POINT_GROUP, BuildContext, Kind, Registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "BuildContext",
    "BuiltApp",
    "Config",
    "ConfigFileError",
    "Kind",
    "Location",
    "PipelineSpec",
    "Problem",
    "Registry",
    "StageSpec",
    "default_registry",
    "load",
    "loads",
]
