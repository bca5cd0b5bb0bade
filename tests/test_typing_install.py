"""A user's type checker sees rxagent as this environment installed it.

The README's commands install rxagent editable (``pip install -e '.[dev]'``). With
setuptools' default for a flat layout that install is an import hook which Python
runs and type checkers do not, so ``mypy --strict`` in a user's project failed with
``Cannot find implementation or library stub for module named "rxagent"``.
pyproject.toml's ``[tool.setuptools] package-dir`` makes it a plain path entry
instead. This test runs mypy, as a user would, on a file in a folder outside the
project (so the project's folder and mypy configuration play no part) against the
environment running the tests, and checks that rxagent resolves with its types.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

USER_CODE = """\
import rxagent
from rxagent.tools import ToolRegistry

reveal_type(rxagent.App)
reveal_type(rxagent.StateStore("prices").snapshot)
registry: ToolRegistry = rxagent.StateStore("prices")
"""


def test_mypy_strict_in_a_user_project_resolves_rxagent(tmp_path: Path) -> None:
    project = tmp_path / "userproj"
    project.mkdir()
    (project / "app.py").write_text(USER_CODE)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file=",
            "--cache-dir",
            str(tmp_path / "mypy_cache"),
            "app.py",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert "import-not-found" not in out, f"mypy cannot find rxagent in this environment:\n{out}"
    assert "import-untyped" not in out, f"rxagent is installed without py.typed:\n{out}"
    assert 'Revealed type is "def (pipelines:' in out, out
    assert "-> rxagent.runtime.App" in out, out
    assert 'Revealed type is "rxagent.state.snapshot.Snapshot"' in out, out
    # real types, not Any: the wrong assignment is the only error
    assert 'expression has type "StateStore", variable has type "ToolRegistry"' in out, out
    assert "Found 1 error in 1 file" in out, out
    assert done.returncode == 1, out
