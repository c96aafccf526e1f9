"""The data every benchmark runs on: generated rows cut into 1 MiB client batches.

The rows come from ``fastframe gen DIR --transactions N --seed SEED`` (run once
and cached in the temporary directory, keyed by the generator's source), read
back with the client's own CSV reader, so they are the rows the client sends.
Until ``fastframe.datagen`` exists the golden conformance frames stand in
(see ``_fallback_folder``).

A *batch* is the longest prefix of a table's rows whose frame stays within
the protocol's 1 MiB limit (PROTOCOL.md §4), encoded by the pure-Python codec
with the keys in spec order: the same logical content the competitors encode.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import fastframe
from fastframe import _codec_py
from fastframe.client import read_table_csv
from fastframe.schema import (
    FRAME_HEADER_SIZE, MAX_BATCH_FRAME, TABLE_HEADER_SIZE, TABLES_BY_NAME, BatchStatus, TableSpec,
)

SEED = 20240601
TRANSACTIONS = 40_000
BENCH_TABLES = ("transactions", "transaction_items")
SRC = Path(fastframe.__file__).resolve().parents[1]
# The original system's bytes (tests/data/README.md), as the tests find them.
CONFORMANCE = Path(os.environ.get("FASTFRAME_CONFORMANCE",
                                  Path(__file__).resolve().parents[1] / "tests" / "data"))
GOLDEN = CONFORMANCE / "golden"
SAMPLE_DATA = CONFORMANCE / "sample_data"
CACHE = Path(tempfile.gettempdir()) / "fastframe-bench"


@dataclass
class Batch:
    """One just-under-1 MiB client batch of a table."""

    spec: TableSpec
    rows: List[Dict[str, str]]       # dicts, keys in spec order
    frame: bytes                     # the whole wire frame, headers included

    @property
    def opcode(self) -> int:
        return self.spec.opcode

    @property
    def body(self) -> memoryview:
        """The frame's body, as ``FrameReader`` hands it to the codec."""
        return memoryview(self.frame)[FRAME_HEADER_SIZE:]

    @property
    def n_rows(self) -> int:
        return len(self.rows)


@dataclass
class Workload:
    source: str                                   # how the rows were made
    folder: Path                                  # a client data folder (PROTOCOL.md §9)
    batches: Dict[str, Batch]                     # table name -> its first 1 MiB batch
    replay: List[bytes] = field(default_factory=list)  # distinct 1 MiB client frames
    replay_rows: List[int] = field(default_factory=list)

    @property
    def csv_bytes(self) -> int:
        return sum(p.stat().st_size for p in _table_csvs(self.folder))

    @functools.cached_property
    def csv_rows(self) -> int:
        """Rows in the tables' CSV files, as the client reads them."""
        return sum(1 for name in TABLES_BY_NAME for path in (self.folder / name).glob("*.csv")
                   for _ in read_table_csv(path, TABLES_BY_NAME[name]))


def _table_csvs(folder: Path) -> List[Path]:
    return sorted(p for name in TABLES_BY_NAME for p in (folder / name).glob("*.csv"))


def datagen_available() -> bool:
    return importlib.util.find_spec("fastframe.datagen") is not None


def row_size(spec: TableSpec, values: Sequence[str]) -> int:
    """Bytes one row takes in a table body: pair count, then each key and value string."""
    return 4 + sum(8 + len(k.encode()) + len(v.encode())
                   for k, v in zip(spec.required_keys, values))


def cut_batches(spec: TableSpec, rows: Sequence[Dict[str, str]],
                limit: int = MAX_BATCH_FRAME) -> List[List[Dict[str, str]]]:
    """Greedy cut of ``rows`` into batches whose frames are at most ``limit`` bytes."""
    out: List[List[Dict[str, str]]] = []
    current: List[Dict[str, str]] = []
    size = FRAME_HEADER_SIZE + TABLE_HEADER_SIZE
    for row in rows:
        n = row_size(spec, row.values())
        if current and size + n > limit:
            out.append(current)
            current, size = [], FRAME_HEADER_SIZE + TABLE_HEADER_SIZE
        current.append(row)
        size += n
    if current:
        out.append(current)
    return out


def encode(spec: TableSpec, rows: Sequence[Dict[str, str]], number: int = 1) -> bytes:
    return _codec_py.encode_table_frame(spec.opcode, number, BatchStatus.CONTINUE, rows)


def map_order_frame(batch: "Batch", seed: int = 1) -> bytes:
    """``batch``'s frame with each row's keys in its own random order, as the
    original Go client writes a map (same rows, same size)."""
    rng = random.Random(seed)
    w = _codec_py.Writer()
    w.write_i32(batch.n_rows)
    w.write_i64(1)
    w.write_u8(BatchStatus.CONTINUE)
    for row in batch.rows:
        pairs = list(row.items())
        rng.shuffle(pairs)
        w.write_i32(len(pairs))
        for key, value in pairs:
            w.write_string(key)
            w.write_string(value)
    body = w.getvalue()
    return bytes([batch.opcode]) + len(body).to_bytes(4, "little") + body


def read_rows(folder: Path, table: str) -> List[Dict[str, str]]:
    """Every row of a table folder, as the client reads it, as dicts in spec order."""
    spec = TABLES_BY_NAME[table]
    keys = spec.required_keys
    rows: List[Dict[str, str]] = []
    for path in sorted((folder / table).glob("*.csv")):
        rows.extend(dict(zip(keys, values)) for _, values in read_table_csv(path, spec))
    return rows


# -- where the data comes from ---------------------------------------------

def _generated_folder(transactions: int, seed: int) -> Path:
    """Run ``fastframe gen`` once per (generator source, size, seed); reuse its output."""
    import fastframe.datagen

    digest = hashlib.sha256(Path(fastframe.datagen.__file__).read_bytes()).hexdigest()[:12]
    folder = CACHE / f"gen-{transactions}-{seed}-{digest}"
    if (folder / ".complete").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SRC)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    subprocess.run([sys.executable, "-m", "fastframe", "gen", str(partial),
                    "--transactions", str(transactions), "--seed", str(seed)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    (partial / ".complete").touch()
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _golden_rows(table: str) -> List[Dict[str, str]]:
    spec = TABLES_BY_NAME[table]
    frame = (GOLDEN / f"input_{table}.bin").read_bytes()
    _, _, _, rows = _codec_py.decode_table_body(spec.opcode, memoryview(frame)[5:], "tuple")
    return [dict(zip(spec.required_keys, r)) for r in rows]


def _fallback_folder(transactions: int, seed: int) -> Path:
    """Until ``fastframe gen`` exists: the golden 1 MiB frames' rows, repeated with fresh
    transaction ids up to ``transactions`` rows, written as CSV next to the sample data's
    small tables."""
    folder = CACHE / f"golden-{transactions}-{seed}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rnd = random.Random(seed)
    for table in ("menu_items", "stores", "users"):
        (folder / table).mkdir(parents=True)
        for src in (SAMPLE_DATA / table).glob("*.csv"):
            shutil.copy(src, folder / table / src.name)
    items_per_tx = 2
    for table, count in (("transactions", transactions),
                         ("transaction_items", transactions * items_per_tx)):
        spec = TABLES_BY_NAME[table]
        header = list(spec.required_keys)
        if table == "transactions":
            header.insert(header.index("user_id"), "voucher_id")
        (folder / table).mkdir(parents=True)
        with open(folder / table / f"{table}_golden.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in itertools.islice(itertools.cycle(_golden_rows(table)), count):
                row = dict(row, transaction_id=str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                           voucher_id="")
                writer.writerow([row[k] for k in header])
    (folder / ".complete").touch()
    return folder


def prepare(transactions: int = TRANSACTIONS, seed: int = SEED,
            replay_frames: int = 24) -> Workload:
    """The data folder, one 1 MiB batch per benchmarked table, and up to
    ``replay_frames`` distinct client frames (both tables, alternating)."""
    if datagen_available():
        folder = _generated_folder(transactions, seed)
        source = f"fastframe gen --transactions {transactions} --seed {seed}"
    else:
        folder = _fallback_folder(transactions, seed)
        source = f"golden conformance rows (fastframe.datagen missing), seed {seed}"
    batches: Dict[str, Batch] = {}
    cut: Dict[str, List[List[Dict[str, str]]]] = {}
    for table in BENCH_TABLES:
        spec = TABLES_BY_NAME[table]
        cut[table] = cut_batches(spec, read_rows(folder, table))
        if len(cut[table]) < 2:
            raise RuntimeError(f"{folder}: too few {table} rows for a full 1 MiB batch; "
                               f"generate more transactions")
        batches[table] = Batch(spec, cut[table][0], encode(spec, cut[table][0]))
    # Full batches only (the last one of each table is partial).
    pairs = list(zip(*(cut[t][:-1] for t in BENCH_TABLES)))
    replay: List[bytes] = []
    replay_rows: List[int] = []
    for number, pair in enumerate(pairs, 1):
        for table, rows in zip(BENCH_TABLES, pair):
            replay.append(encode(TABLES_BY_NAME[table], rows, number))
            replay_rows.append(len(rows))
        if len(replay) >= replay_frames:
            break
    return Workload(source, folder, batches, replay[:replay_frames], replay_rows[:replay_frames])
