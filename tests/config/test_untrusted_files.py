"""Pipeline files as untrusted input: alias bombs, deep nesting, huge files, replay
files that are not files, a record sink emptying what is replayed, bad urls and
models. Every one is a located error (file:line:col), fast, never "unexpected"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from rxagent.config import ConfigFileError, load, loads
from rxagent.config.document import MAX_ALIAS_VALUES, MAX_DEPTH, MAX_FILE_BYTES

EXE = str(Path(sys.executable).with_name("rxagent"))
LOCATED = re.compile(r"^\S+:\d+:\d+: ")


def _problems(text: str, *, file: str = "u.yaml", **options: object) -> list[str]:
    with pytest.raises(ConfigFileError) as info:
        loads(text, file=file, **options)  # type: ignore[arg-type]
    out = [str(p) for p in info.value.problems]
    assert all(LOCATED.match(p) for p in out), out
    return out


def _bomb(levels: int = 9, width: int = 10) -> str:
    """The classic billion laughs: each anchor a list of ``width`` aliases of the last."""
    lines = ["a0: &a0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly_where_it_explodes(time_scale: float) -> None:
    text = _bomb()  # 10**10 values once expanded, from ~400 bytes
    assert len(text) < 707
    started = time.perf_counter()
    problems = _problems(text)
    assert time.perf_counter() - started < 5 * time_scale
    assert len(problems) == 1
    assert f"more than {MAX_ALIAS_VALUES} values" in problems[0]
    # located at an alias written in the file (line 2 or later, where the aliases are)
    line = int(problems[0].split(":")[1])
    assert line >= 2


def test_a_million_value_bomb_is_refused_and_small_aliases_still_work(time_scale: float) -> None:
    started = time.perf_counter()
    assert "alias bomb" in _problems(_bomb(levels=5))[0]  # 10**6 values
    assert time.perf_counter() - started < 5 * time_scale
    config = loads(
        """\
version: 1
state: {s: {}}
pipelines:
  p:
    source: {memory: {items: &items [{px: 1}, {px: 2}]}}
    sink: {state: s}
  q:
    source: {memory: {items: *items}}
    sink: {state: s}
""",
        file="ok.yaml",
    )
    assert config.model.pipelines["q"].source == {"memory": {"items": [{"px": 1}, {"px": 2}]}}


def test_a_self_referencing_alias_is_a_located_error_not_a_recursion_error() -> None:
    assert _problems("a: &a [1, *a]\n") == [
        "u.yaml:1:11: alias *a refers to the collection it is in (a structure containing itself)"
    ]
    assert _problems("a: &m {x: *m}\n")[0].startswith("u.yaml:1:11: alias *m refers")
    assert "names no anchor" in _problems("a: *nowhere\n")[0]


def test_deep_nesting_is_a_located_error() -> None:
    for text in ("[" * 493, "x: " + "[" * 300 + "]" * 300, "x: " + "{a: " * 200 + "1" + "}" * 200):
        (problem,) = _problems(text)
        assert f"nested more than {MAX_DEPTH} levels deep" in problem
    # through aliases: each anchor one level deeper than the last, each written shallow
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 150))
    (problem,) = _problems(chain)
    assert "levels deep through aliases" in problem
    assert problem.startswith("u.yaml:100:")


def test_a_file_past_the_size_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    (problem,) = _problems("x: '" + "a" * MAX_FILE_BYTES + "'\n")
    assert problem == (
        f"u.yaml:1:{MAX_FILE_BYTES + 1}: the file is larger than {MAX_FILE_BYTES} bytes "
        "(MAX_FILE_BYTES): refused"
    )
    with pytest.raises(ConfigFileError, match=r"^/dev/zero:1:\d+: the file is larger"):
        load("/dev/zero")  # reads at most MAX_FILE_BYTES + 1 bytes, then stops


def test_a_large_file_parses_fast(tmp_path: Path, time_scale: float) -> None:
    lines = [
        "version: 1",
        "state: {s: {}}",
        "pipelines:",
        "  p:",
        "    sink: {state: s}",
        "    source:",
        "      memory:",
        "        items:",
    ]
    lines += [
        f'          - {{sym: S{i}, px: {i}.5, seq: {i}, note: "some text here {i}"}}'
        for i in range(30_000)
    ]
    path = tmp_path / "large.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size > 2_000_000
    # timed in a fresh process, as `rxagent run` parses: in this one the collector's full
    # collections walk whatever the test session keeps alive (9.6 s once, 3 s alone)
    timed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from rxagent.config import load\n"
            "started = time.perf_counter()\n"
            "load(sys.argv[1])\n"
            "print(time.perf_counter() - started)",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    # 11 s here with the pure-Python parser and a loader per scalar (30+ s reported)
    assert float(timed.stdout) < 8 * time_scale
    config = load(path)
    items = config.model.pipelines["p"].source["memory"]["items"]
    assert items[29_999] == {
        "sym": "S29999",
        "px": 29999.5,
        "seq": 29999,
        "note": "some text here 29999",
    }
    assert config.location(("pipelines", "p", "source", "memory", "items", 2, "px")) == (
        f"{path}:11:27"
    )


def test_validate_gives_located_errors_for_bombs_and_nesting(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(_bomb(), encoding="utf-8")
    (tmp_path / "self.yaml").write_text("a: &a [*a]\n", encoding="utf-8")
    (tmp_path / "deep.yaml").write_text("[" * 493, encoding="utf-8")
    proc = subprocess.run(
        [EXE, "validate", "bomb.yaml", "self.yaml", "deep.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for word in ("unexpected", "RecursionError", "Traceback"):
        assert word not in out
    assert re.search(r"bomb.yaml:\d+:\d+: aliases expand to more than", out)
    assert "self.yaml:1:8: alias *a refers to the collection it is in" in out
    assert "deep.yaml:1:101: nested more than" in out


# -- replay files ------------------------------------------------------------------------

REPLAY = """\
version: 1
state: {{s: {{}}}}
pipelines:
  p:
    source: {{replay: {{path: {path}}}}}
    sink: {{state: s}}
"""


def test_a_replay_of_a_fifo_or_a_device_is_refused_at_load(tmp_path: Path) -> None:
    fifo = tmp_path / "rec.jsonl"
    os.mkfifo(fifo)
    result: list[list[str]] = []
    # a FIFO with no writer would block the open forever: run it in a thread, bounded
    thread = threading.Thread(
        target=lambda: result.append(_problems(REPLAY.format(path=fifo), base_dir=tmp_path)),
        daemon=True,
    )
    thread.start()
    thread.join(10)
    assert result, "loading a pipeline that replays a FIFO blocked"
    (problem,) = result[0]
    assert problem.startswith("u.yaml:5:22: pipelines.p.source.replay: ")
    assert "is a FIFO; a recording must be a regular file" in problem
    (problem,) = _problems(REPLAY.format(path="/dev/zero"))
    assert "is a device; a recording must be a regular file" in problem
    (problem,) = _problems(REPLAY.format(path=tmp_path))
    assert "is a directory" in problem


def test_a_replay_reads_a_bounded_header(tmp_path: Path) -> None:
    recording = tmp_path / "huge.jsonl"
    with recording.open("wb") as f:  # a first line of 64 MiB, no newline: never read whole
        f.truncate(64 << 20)
    tracemalloc.start()
    try:
        config = loads(REPLAY.format(path=recording), file="u.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert config.pipelines["p"].source.kind.name == "replay"
    assert peak < 16 << 20  # the whole first line was 64 MiB


def test_a_record_sink_that_would_empty_the_replayed_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rec.jsonl").write_text("", encoding="utf-8")
    text = """\
version: 1
pipelines:
  p:
    source: {replay: rec.jsonl}
    sinks:
      - record: {path: ./rec.jsonl, append: false}
"""
    (problem,) = _problems(text, base_dir=tmp_path)
    assert problem == (
        "u.yaml:6:24: pipelines.p.sinks[0].record.path: record sink with append: false would "
        "empty './rec.jsonl' before the replay source at u.yaml:4:13 reads it "
        "(record to another file, or set append: true)"
    )
    # another pipeline of the file counts too (they run together); appending does not empty
    other = text.replace(
        "    sinks:\n", "    sink: {log: {}}\n  q:\n    source: {memory: [1]}\n    sinks:\n"
    )
    assert "would empty" in _problems(other, base_dir=tmp_path)[0]
    loads(text.replace("append: false", "append: true"), file="u.yaml", base_dir=tmp_path)
    loads(text.replace("./rec.jsonl", "other.jsonl"), file="u.yaml", base_dir=tmp_path)


# -- parameters --------------------------------------------------------------------------

WS = """\
version: 1
state: {{s: {{}}}}
pipelines:
  p:
    source:
      websocket: {{url: '{url}'{more}}}
    sink: {{state: s}}
"""


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://", "url ws:// has no host (expected ws://host[:port]/path)"),
        ("ws://:8080/feed", "url ws://:8080/feed has no host"),
        ("ws://127.0.0.1:99999/feed", "url port must be a number in 1-65535, got '99999'"),
        ("wss://127.0.0.1:0/", "url port must be a number in 1-65535, got '0'"),
        ("ws://h:12ab/", "got '12ab'"),
    ],
)
def test_a_websocket_url_without_host_or_with_a_bad_port_is_refused(url: str, message: str) -> None:
    (problem,) = _problems(WS.format(url=url, more=""))
    assert problem.startswith("u.yaml:6:24: pipelines.p.source.websocket.url: ")
    assert message in problem
    sink = (
        "version: 1\npipelines:\n  p:\n    source: {memory: [1]}\n"
        f"    sink: {{websocket: '{url}'}}\n"
    )
    (problem,) = _problems(sink)
    assert problem.startswith("u.yaml:5:23: pipelines.p.sink.websocket.url: ")
    assert message in problem


def test_a_url_problem_never_shows_the_query_or_user_info() -> None:
    (problem,) = _problems(WS.format(url="ws://user:pw@h:70000/x?token=s3cr3t", more=""))
    assert "s3cr3t" not in problem
    assert "pw" not in problem


def test_a_model_that_is_not_a_type_is_a_located_error() -> None:
    (problem,) = _problems(WS.format(url="ws://127.0.0.1:1/", more=", model: 'os:getcwd'"))
    assert problem == (
        "u.yaml:6:52: pipelines.p.source.websocket.model: os:getcwd: model must be a pydantic "
        "model or a type, got builtin_function_or_method 'getcwd'"
    )
    decode = (
        "version: 1\npipelines:\n  p:\n    source: {memory: ['1']}\n"
        "    steps: [{decode: {model: 'os:sep'}}]\n    sink: {log: {}}\n"
    )
    (problem,) = _problems(decode)
    assert problem.startswith("u.yaml:5:30: pipelines.p.steps[0].decode.model: os:sep: ")
    assert "got a str value" in problem
    loads(decode.replace("os:sep", "pathlib:Path"), file="u.yaml")  # any type pydantic knows
