"""A pipeline for the crash test, run as a subprocess: Kafka source -> a sink that
appends each processed id to a file (written before the event ends), slowly enough
to be killed mid-stream.

Usage: python crash_worker.py BOOTSTRAP TOPIC GROUP OUT_FILE [--until-eof]
"""

from __future__ import annotations

import asyncio
import os
import sys

from rxagent import Pipeline
from rxagent.events import Batch
from rxagent.kafka import KafkaSource
from rxagent.sinks import Sink


class AppendIds(Sink):
    kind = "append"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def on_batch(self, batch: Batch) -> None:
        lines = "".join(f"{value['id']}\n" for value in batch.values)
        os.write(self.fd, lines.encode())
        events = batch.events(take=True)
        # processing "takes" a few milliseconds: events stay in flight meanwhile
        asyncio.get_running_loop().call_later(0.01, lambda: [e.end() for e in events])


async def main(bootstrap: str, topic: str, group: str, path: str, until_eof: bool) -> None:
    source = KafkaSource(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        assign=True,
        until_eof=until_eof,
        credit=64,
        batch_size=16,
        commit_interval=0.05,
    )
    await Pipeline("crash", source).to(AppendIds(path)).run()
    await source.wait_closed()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(*args[:4], until_eof="--until-eof" in args))
