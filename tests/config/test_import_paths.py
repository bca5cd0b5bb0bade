"""A pipeline file imports the user's own modules: the ones beside it, in the current
directory and in ``--path`` folders, from any working directory; a failed import is
one located error, with no follow-on errors that only follow from it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from rxagent.config import ConfigFileError, load

EXE = str(Path(sys.executable).with_name("rxagent"))


def _project(root: Path) -> tuple[str, Path]:
    """A user's package (a unique name: imports are cached per process) and a
    pipeline file beside it that uses its model, reducer and function."""
    package = f"mypkg_{uuid.uuid4().hex[:8]}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "trades.py").write_text(
        textwrap.dedent(
            """\
            from pydantic import BaseModel


            class Trade(BaseModel):
                sym: str
                px: float


            def notional(value):
                return value.px * 2


            def fold(old, event):
                return (old or 0) + event.value
            """
        )
    )
    pipeline = root / "trades.yaml"
    pipeline.write_text(
        textwrap.dedent(
            f"""\
            state:
              markets: {{}}
              watch: {{}}
            pipelines:
              feed:
                source:
                  memory:
                    items: ['{{"sym": "A", "px": 2.0}}', '{{"sym": "B", "px": 3.0}}']
                steps:
                  - decode: {{format: json, model: "{package}.trades:Trade"}}
                  - key_by: {{function: "{package}.trades:notional"}}
                  - map: {{function: "{package}.trades:notional"}}
                sinks:
                  - state: {{store: markets, reducer: "{package}.trades:fold"}}
              watch:
                source: {{state: markets}}
                sinks:
                  - state: watch
            """
        )
    )
    return package, pipeline


def test_modules_beside_the_file_import_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pipeline = _project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the CLI, started from another folder (a fresh process: nothing imported yet)
    done = subprocess.run(
        [EXE, "validate", str(pipeline)], cwd=elsewhere, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the Python API
    monkeypatch.chdir(elsewhere)
    config = load(pipeline)
    assert list(config.pipelines) == ["feed", "watch"]


def test_path_adds_folders_and_the_current_directory_is_searched(tmp_path: Path) -> None:
    package, pipeline = _project(tmp_path / "lib")
    files = tmp_path / "files"
    files.mkdir()
    moved = files / "trades.yaml"
    pipeline.rename(moved)
    # the package is neither beside the file nor in the working directory: not found
    done = subprocess.run([EXE, "validate", str(moved)], cwd=files, capture_output=True, text=True)
    assert done.returncode != 0
    assert f"cannot import module '{package}.trades'" in done.stdout + done.stderr
    assert "--path DIR" in done.stdout + done.stderr
    # --path finds it; so does running from the folder that holds it
    done = subprocess.run(
        [EXE, "validate", "--path", str(tmp_path / "lib"), str(moved)],
        cwd=files,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [EXE, "validate", str(moved)], cwd=tmp_path / "lib", capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_failed_import_is_one_error_without_follow_ons(tmp_path: Path) -> None:
    _, pipeline = _project(tmp_path)
    text = pipeline.read_text().replace(".trades:fold", ".missing:fold")
    pipeline.write_text(text)
    with pytest.raises(ConfigFileError) as info:
        load(pipeline)
    problems = [str(p) for p in info.value.problems]
    # the sink's reducer cannot be imported; that the watch pipeline reads a store no
    # pipeline writes only follows from it, and is not reported
    assert len(problems) == 1, problems
    assert ".missing'" in problems[0]
    assert "reducer" in problems[0]
