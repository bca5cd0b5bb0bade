"""Every public name has a docstring (issue 15): ``help()`` and the generated
references say what it does.

Public names are those in ``rxagent.__all__`` and in the ``__all__`` of every
module of the package that are classes or functions (constants and type aliases
cannot carry one), and the public methods and properties of those classes
(their own, not inherited from outside the package; dunder methods and
pydantic/dataclass machinery excepted).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from typing import Any

import rxagent


def _modules() -> Iterator[Any]:
    yield rxagent
    for info in pkgutil.walk_packages(rxagent.__path__, "rxagent."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue


def _own_members(cls: type) -> Iterator[tuple[str, Any]]:
    """The class's own public methods and properties, as looked up on the class
    (an override without a docstring of its own shows its base's, as ``help()``
    does)."""
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if isinstance(member, property) or inspect.isfunction(member):
            yield name, member


def _public() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for module in _modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not getattr(obj, "__module__", "").startswith("rxagent"):
                continue
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
            if inspect.isclass(obj):
                for attr, member in _own_members(obj):
                    found.setdefault(f"{obj.__module__}.{obj.__qualname__}.{attr}", member)
    return found


def _documented(obj: Any) -> bool:
    doc = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
    return bool(doc and doc.strip())


#: Known gaps in modules being reworked while this test was written (issue 15):
#: tolerated, not required; remove a name once it is documented.
KNOWN: set[str] = {
    "rxagent.sinks.tools.ToolResult.ok",
}


def test_every_public_name_has_a_docstring() -> None:
    public = _public()
    assert len(public) > 300
    missing = {name for name, obj in public.items() if not _documented(obj)}
    new = sorted(missing - KNOWN)
    assert not new, f"{len(new)} public names without a docstring:\n" + "\n".join(new)
