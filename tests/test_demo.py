"""The demo, through the real console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rxagent import PipelineState
from rxagent.demo import run_demo


async def test_run_demo_updates_live_state_from_the_local_websocket_feed() -> None:
    status = await run_demo(duration=2.0, rate=3000, seed=1, live=False, window=0.2)
    assert status.state is PipelineState.STOPPED
    assert status.flow["emitted"] > 1000
    assert status.flow["pending"] == 0
    assert status.stages["state:prices"]["out"] > 0
    assert status.stages["feed"]["dead_lettered"] >= 1  # the feed's garbage frames
    assert status.stages["dedup"]["dropped"] >= 1  # the feed's duplicates
    assert status.source["connects"] >= 2  # the feed drops connections now and then


def test_rxagent_demo_console_script() -> None:
    exe = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"
    proc = subprocess.run(
        [exe, "demo", "--duration", "2", "--window", "0.5", "--no-live"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "state 'prices'" in proc.stdout
    assert "AAPL" in proc.stdout


def test_rxagent_demo_stops_cleanly_on_sigint() -> None:
    import signal
    import time

    exe = shutil.which("rxagent", path=str(Path(sys.executable).parent)) or "rxagent"
    proc = subprocess.Popen(
        [exe, "demo", "--duration", "60", "--no-live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "LLM context:" in out
    assert "Traceback" not in err
