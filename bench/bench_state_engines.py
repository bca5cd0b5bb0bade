"""Embedded durable key-value engines for state-store checkpoints: SQLite, RocksDB, LMDB.

Workload (a state store's checkpoints): keys ``user-NNNNNN`` (arriving in random
order) -> ~85-byte blobs, ``pickle.dumps((value, version, updates, event_time,
wall_time, (source, partition, offset)), protocol=5)`` with ``value`` a small dict.
125 checkpoints, each committing ``keys / 100`` dirty keys (10,000 at the default
1M: 80% new keys, 20% overwrites of keys already stored, uniformly picked) plus a
``__checkpoint__`` row of source offsets (JSON) in the same batch/transaction, to
``keys`` distinct keys. A checkpoint's time covers pickling its dirty entries,
the batch and the durable commit. Then restore: open the store fresh and read
every entry back into a ``dict`` of key -> tuple (unpickled), checked against
the expected state; the best of 2 restores is reported. Restore reads a warm OS
page cache unless ``--cold`` (Linux: ``posix_fadvise(DONTNEED)`` on the store's
files first, best effort). Timed parts run with the cyclic garbage collector off
(``--gc`` leaves it on): with it on, building 1M restored tuples costs about 2x
in collections, the same for every engine, which would hide their differences.

Engines: stdlib ``sqlite3`` (WAL; ``synchronous=NORMAL`` and ``FULL``), RocksDB
via ``rocksdict`` (one ``WriteBatch`` per checkpoint; ``sync=True`` and
``sync=False``, WAL on in both), LMDB via ``lmdb`` (one write transaction;
``sync=True``, the default, and ``sync=False``). Engines not installed are skipped.

Baseline (same run): the final state as one pickled dict written to a file
(write, ``os.fsync``, ``os.replace``) and read back with ``pickle.load``. Ratios
are keys/s against it (higher is better): for checkpoints, the engine's
incremental keys/s against the baseline's keys/s for one full dump.

``python -m bench.bench_state_engines [--keys N] [--cold] [--gc] [--dir DIR]``
(default 1,000,000 keys), or ``python bench/bench_state_engines.py``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import pickle
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

KEYS = 1_000_000
CHECKPOINTS = 125
RESTORES = 2  # best of
OVERWRITE = 0.2  # share of a checkpoint's dirty keys that are already stored
PARTITIONS = 8
SOURCE = "orders"
META = "__checkpoint__"
META_B = META.encode()
LMDB_MAP_SIZE = 4 << 30
SQLITE_CACHE_KIB = 65_536  # PRAGMA cache_size (default is 2 MiB)

Entry = tuple[Any, ...]
Batch = list[tuple[str, Entry]]
Items = list[tuple[str, bytes]]


def make_workload(keys: int) -> tuple[list[tuple[Batch, bytes]], dict[str, Entry]]:
    """The checkpoints (dirty entries, metadata blob) and the final state they leave."""
    rnd = random.Random(42)
    ids = list(range(keys))
    rnd.shuffle(ids)
    names = [f"user-{i:06d}" for i in ids]
    new_per = keys // CHECKPOINTS
    old_per = round(new_per * OVERWRITE / (1 - OVERWRITE))
    state: dict[str, Entry] = {}
    offsets = [0] * PARTITIONS
    checkpoints: list[tuple[Batch, bytes]] = []
    written = 0
    t = 1_718_000_000.0
    for c in range(CHECKPOINTS):
        end = keys if c == CHECKPOINTS - 1 else written + new_per
        dirty = names[written:end] + [
            names[i] for i in rnd.sample(range(written), min(old_per, written))
        ]
        written = end
        batch: Batch = []
        for name in dirty:
            prev = state.get(name)
            updates = (prev[2] if prev else 0) + rnd.randint(1, 5)
            partition = rnd.randrange(PARTITIONS)
            offsets[partition] += rnd.randint(1, 50)
            t += 0.001
            value = {"count": updates, "sum": updates * 1.5}
            entry = (value, c + 1, updates, t, t + 0.25, (SOURCE, partition, offsets[partition]))
            state[name] = entry
            batch.append((name, entry))
        meta = json.dumps({"checkpoint": c + 1, "offsets": {SOURCE: offsets}}).encode()
        checkpoints.append((batch, meta))
    return checkpoints, state


def disk_bytes(path: str) -> int:
    """Allocated bytes under ``path`` (``st_blocks``; apparent size where there is none)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            blocks = getattr(st, "st_blocks", None)
            total += blocks * 512 if blocks is not None else st.st_size
    return total


def evict(path: str) -> None:
    """Drop ``path``'s files from the OS page cache, where the OS lets us (clean pages)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for root, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class Engine:
    """One store: ``open`` a fresh one, ``commit`` checkpoints, ``close``, ``restore``."""

    label = ""
    requires: str | None = None  # the importable module the engine needs

    def open(self, path: str) -> None:
        raise NotImplementedError

    def commit(self, items: Items, meta: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def restore(self, path: str) -> dict[str, Any]:
        """Every entry unpickled, and the last checkpoint's metadata under ``META``."""
        raise NotImplementedError


class SQLite(Engine):
    requires = None

    def __init__(self, synchronous: str) -> None:
        self.synchronous = synchronous
        self.label = f"sqlite WAL sync={synchronous}"

    def _connect(self, path: str) -> sqlite3.Connection:
        con = sqlite3.connect(os.path.join(path, "state.db"), isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={self.synchronous}")
        con.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        return con

    def open(self, path: str) -> None:
        self.con = self._connect(path)
        self.con.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def commit(self, items: Items, meta: bytes) -> None:
        con = self.con
        con.execute("BEGIN")
        con.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
        con.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (META, meta))
        con.execute("COMMIT")

    def close(self) -> None:
        self.con.close()

    def restore(self, path: str) -> dict[str, Any]:
        con = self._connect(path)
        loads = pickle.loads
        try:
            rows = con.execute("SELECT k, v FROM kv")
            state: dict[str, Any] = {k: loads(v) for k, v in rows if k != META}
            state[META] = con.execute("SELECT v FROM kv WHERE k = ?", (META,)).fetchone()[0]
        finally:
            con.close()
        return state


class RocksDB(Engine):
    requires = "rocksdict"

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.label = f"rocksdb batch sync={sync}"

    def open(self, path: str) -> None:
        from rocksdict import Options, Rdict, WriteOptions

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(os.path.join(path, "rocks"), opts)
        self.wopts = WriteOptions()
        self.wopts.sync = self.sync

    def commit(self, items: Items, meta: bytes) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        put = batch.put
        for k, v in items:
            put(k.encode(), v)
        put(META_B, meta)
        self.db.write(batch, self.wopts)

    def close(self) -> None:
        self.db.close()

    def restore(self, path: str) -> dict[str, Any]:
        from rocksdict import Options, Rdict

        db: Any = Rdict(os.path.join(path, "rocks"), Options(raw_mode=True))  # raw: bytes keys
        loads = pickle.loads
        try:
            state: dict[str, Any] = {k.decode(): loads(v) for k, v in db.items() if k != META_B}
            state[META] = db[META_B]
        finally:
            db.close()
        return state


class LMDB(Engine):
    requires = "lmdb"

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.label = f"lmdb txn sync={sync}"

    def open(self, path: str) -> None:
        import lmdb

        self.env = lmdb.open(os.path.join(path, "lmdb"), map_size=LMDB_MAP_SIZE, sync=self.sync)

    def commit(self, items: Items, meta: bytes) -> None:
        with self.env.begin(write=True) as txn:
            pairs = [(k.encode(), v) for k, v in items]
            pairs.append((META_B, meta))
            txn.cursor().putmulti(pairs)

    def close(self) -> None:
        self.env.close()

    def restore(self, path: str) -> dict[str, Any]:
        import lmdb

        env = lmdb.open(os.path.join(path, "lmdb"), map_size=LMDB_MAP_SIZE, readonly=True)
        loads = pickle.loads
        try:
            with env.begin() as txn:
                state: dict[str, Any] = {
                    k.decode(): loads(v) for k, v in txn.cursor() if k != META_B
                }
                state[META] = txn.get(META_B)
        finally:
            env.close()
        return state


ENGINES: list[Callable[[], Engine]] = [
    lambda: SQLite("NORMAL"),
    lambda: SQLite("FULL"),
    lambda: RocksDB(sync=True),
    lambda: RocksDB(sync=False),
    lambda: LMDB(sync=True),
    lambda: LMDB(sync=False),
]


def serialize(batch: Batch) -> Items:
    dumps = pickle.dumps
    return [(k, dumps(v, protocol=5)) for k, v in batch]


def run_baseline(
    state: dict[str, Entry], base: str, cold: bool
) -> tuple[float, float, int, dict[str, Entry]]:
    """Seconds to write the whole state durably as one pickled dict, seconds to read it."""
    path = tempfile.mkdtemp(prefix="file-", dir=base)
    target = os.path.join(path, "state.pickle")
    gc.collect()
    start = time.perf_counter()
    with open(target + ".tmp", "wb") as f:
        pickle.dump(state, f, protocol=5)
        f.flush()
        os.fsync(f.fileno())
    os.replace(target + ".tmp", target)
    write = time.perf_counter() - start
    size = disk_bytes(path)

    def load() -> dict[str, Entry]:
        with open(target, "rb") as f:
            return pickle.load(f)  # type: ignore[no-any-return]

    read, restored = best_restore(load, path, cold)
    shutil.rmtree(path)
    return write, read, size, restored


def run_engine(
    engine: Engine, checkpoints: list[tuple[Batch, bytes]], base: str, cold: bool
) -> tuple[list[float], float, int, dict[str, Any]]:
    """Per-checkpoint seconds, restore seconds, disk bytes, the restored state."""
    path = tempfile.mkdtemp(prefix="engine-", dir=base)
    engine.open(path)
    times: list[float] = []
    gc.collect()
    for batch, meta in checkpoints:
        start = time.perf_counter()
        engine.commit(serialize(batch), meta)
        times.append(time.perf_counter() - start)
    engine.close()
    size = disk_bytes(path)
    read, restored = best_restore(lambda: engine.restore(path), path, cold)
    shutil.rmtree(path)  # keep the temp directory's peak to one store
    return times, read, size, restored


def best_restore(restore: Callable[[], dict[str, Any]], path: str, cold: bool) -> tuple[float, Any]:
    """The best of ``RESTORES`` restores' seconds (this machine is shared and noisy), the state."""
    best = float("inf")
    restored: Any = None
    for _ in range(RESTORES):
        restored = None
        if cold:
            evict(path)
        gc.collect()
        start = time.perf_counter()
        restored = restore()
        best = min(best, time.perf_counter() - start)
    return best, restored


def check(label: str, restored: dict[str, Any], state: dict[str, Entry], meta: bytes) -> None:
    got_meta = restored.pop(META, meta)  # the plain file has no metadata row
    if got_meta != meta:
        raise SystemExit(f"{label}: last checkpoint's metadata differs: benchmark invalid")
    if restored != state:
        raise SystemExit(f"{label}: restored state differs from the written: benchmark invalid")


def main(
    keys: int = KEYS, cold: bool = False, base_dir: str | None = None, keep_gc: bool = False
) -> None:
    was_enabled = gc.isenabled()
    if not keep_gc:
        gc.disable()  # explicit gc.collect() between the timed parts still runs
    try:
        run(keys, cold, base_dir, keep_gc)
    finally:
        if was_enabled:
            gc.enable()


def run(keys: int, cold: bool, base_dir: str | None, keep_gc: bool) -> None:
    t0 = time.perf_counter()
    checkpoints, state = make_workload(keys)
    gc.freeze()  # the workload's tuples are not garbage; keep the collector off them
    writes = sum(len(batch) for batch, _ in checkpoints)
    blob = statistics.mean(len(pickle.dumps(e, protocol=5)) for e in list(state.values())[:1000])
    print(
        f"keys: {keys:,}  checkpoints: {CHECKPOINTS} x ~{writes // CHECKPOINTS:,} dirty keys "
        f"({OVERWRITE:.0%} overwrites; {writes:,} writes)  blob ~{blob:.0f} B  "
        f"restore: {'cold (fadvise)' if cold else 'warm page cache'}  "
        f"gc {'on' if keep_gc else 'off'} while timed  "
        f"(workload built in {time.perf_counter() - t0:.1f}s)"
    )
    last_meta = checkpoints[-1][1]
    with tempfile.TemporaryDirectory(prefix="rxagent-bench-state-", dir=base_dir) as base:
        b_write, b_read, b_size, restored = run_baseline(state, base, cold)
        check("plain file", restored, state, last_meta)
        del restored
        b_wrate, b_rrate = keys / b_write, keys / b_read
        head = (
            f"{'engine':26s} {'ckpt keys/s':>12s} {'x file':>7s} {'ms/ckpt med':>11s} "
            f"{'max':>7s} {'restore keys/s':>14s} {'x file':>7s} {'disk MiB':>9s}"
        )
        print(head)
        print(
            f"{'plain file pickle+fsync':26s} {b_wrate:12,.0f} {1.0:7.2f} {b_write * 1e3:11.1f} "
            f"{b_write * 1e3:7.1f} {b_rrate:14,.0f} {1.0:7.2f} {b_size / 2**20:9.1f}"
            "  (baseline; ms = one full dump)"
        )
        for make in ENGINES:
            engine = make()
            if engine.requires and importlib.util.find_spec(engine.requires) is None:
                print(f"{engine.label:26s} not installed (pip install {engine.requires})")
                continue
            times, read, size, restored = run_engine(engine, checkpoints, base, cold)
            check(engine.label, restored, state, last_meta)
            del restored
            wrate, rrate = writes / sum(times), keys / read
            print(
                f"{engine.label:26s} {wrate:12,.0f} {wrate / b_wrate:7.2f} "
                f"{statistics.median(times) * 1e3:11.1f} {max(times) * 1e3:7.1f} "
                f"{rrate:14,.0f} {rrate / b_rrate:7.2f} {size / 2**20:9.1f}"
            )
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.bench_state_engines")
    parser.add_argument("--keys", type=int, default=KEYS, help="distinct keys (default 1M)")
    parser.add_argument(
        "--cold", action="store_true", help="evict the store from the page cache before restore"
    )
    parser.add_argument("--gc", action="store_true", help="leave the garbage collector on")
    parser.add_argument("--dir", help="where to put the stores (default: the temp directory)")
    args = parser.parse_args()
    main(args.keys, args.cold, args.dir, args.gc)
