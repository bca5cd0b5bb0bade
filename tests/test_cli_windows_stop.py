"""``rxagent run --duration`` stops a pipeline file: what its windows do (real CLI).

The feed is a recording replayed at its recorded pace (a source that cannot replay
what was not committed): three trades, then one 100 s later, so the stop comes
while the 60 s windows are open. They are flushed marked ``partial: true``, and
the change reaches the pipeline reading the store (``source: {state: ...}``)
before it stops: the writers are drained first (docs/operators.md, "Windows and
stops").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

EXE = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"

FEED = """\
{"format":"rxagent-recording","version":1,"created":1000.0,"source":"ticks"}
{"t":1000.0,"value":{"sym":"AAPL","px":1.0},"key":"AAPL","offset":0}
{"t":1000.1,"value":{"sym":"AAPL","px":2.0},"key":"AAPL","offset":1}
{"t":1000.2,"value":{"sym":"MSFT","px":5.0},"key":"MSFT","offset":2}
{"t":1100.0,"value":{"sym":"AAPL","px":3.0},"key":"AAPL","offset":3}
"""

FILE = """\
state:
  windows: {}
  seen: {}
pipelines:
  trades:
    source: {replay: {path: feed.jsonl, speed: 1.0}}
    steps:
      - tumbling_window: {size: 60s, agg: count}
    sink: {state: windows}
  watch:
    source: {state: windows}
    steps:
      - map: "{'trades': value.value, 'partial': value.partial}"
    sink: {state: seen}
"""


def test_a_stop_flushes_open_windows_marked_partial_and_the_reader_sees_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "feed.jsonl").write_text(FEED, encoding="utf-8")
    (tmp_path / "trades.yaml").write_text(textwrap.dedent(FILE), encoding="utf-8")
    proc = subprocess.run(
        [EXE, "run", "trades.yaml", "--duration", "1.5", "--no-live"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "pipeline trades: stopped, 3 events, 0 dropped, 0 dead-lettered" in lines
    at = lines.index("state windows (version 1, 2 keys):")
    aapl, msft = sorted(lines[at + 1 : at + 3])
    assert "value=2, count=2" in aapl
    assert "value=1, count=1" in msft
    assert "partial=True" in aapl
    assert "partial=True" in msft
    at = lines.index("state seen (version 1, 2 keys):")
    assert sorted(lines[at + 1 : at + 3]) == [
        '  AAPL: {"trades":2,"partial":true}',
        '  MSFT: {"trades":1,"partial":true}',
    ]
