"""Load: 64 agencies streaming at once into one orchestrator (PROTOCOL.md §7–§8).

64 ``fastframe.client.Client`` threads, each with its own generated data set
(``datagen``, its own seed, a few hundred transactions, batches small enough
that most CSV files take several), send to one in-process ``Orchestrator``
whose sink is a ``FileSink(fsync="never")``. Afterwards the sink file must
hold every CSV row of every agency exactly once (the rows read back with the
client's ``read_table_csv`` and projected to the §8 columns, compared as
multisets), one EOF per table per agency, the 64 FINISHED frames with the
right agency ids, and no client may have been refused, reset, failed or
retried along the way. Bounded everywhere: socket timeouts, joined threads.
"""
from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Dict, List

import pytest

from fastframe.client import Client
from fastframe.datagen import generate
from fastframe.messages import EOFMessage, Finished
from fastframe.schema import TABLES
from fastframe.sinks.file import FileSink, read_frames
from test_orchestrator import (
    JOIN_TIMEOUT, SOCKET_TIMEOUT, Server, as_multisets, decode, expected_rows, run_threads,
    stored_rows,
)

N_CLIENTS = 64
TRANSACTIONS = 300          # per agency: ~750 transaction items, 30 users, 8 items, 10 stores
BATCH_ROWS = 16             # several batches per monthly file, CONTINUE and EOF statuses
WINDOW = 4
FIRST_AGENCY = 500


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> List[Path]:
    """One generated data set per agency, each from its own seed."""
    root = tmp_path_factory.mktemp("load")
    folders = []
    for i in range(N_CLIENTS):
        folder = root / f"agency{i}"
        generate(folder, transactions=TRANSACTIONS, seed=1000 + i)
        folders.append(folder)
    return folders


def test_64_concurrent_clients_every_row_stored_exactly_once(tmp_path, datasets):
    sink_path = tmp_path / "sink.bin"
    server = Server(FileSink(sink_path, fsync="never"))
    agency_ids = [FIRST_AGENCY + i for i in range(N_CLIENTS)]
    clients = [Client(server.address, agency_id, batch_rows=BATCH_ROWS, window=WINDOW,
                      timeout=SOCKET_TIMEOUT, backoff=0.01) for agency_id in agency_ids]
    start = threading.Barrier(N_CLIENTS)

    def send(client: Client, folder: Path):
        start.wait(JOIN_TIMEOUT)   # all 64 connect together, not one after another
        return client.send_folder(folder)

    try:
        summaries = run_threads([lambda c=c, f=f: send(c, f) for c, f in zip(clients, datasets)])
    finally:
        server.stop()

    # No client was refused or reset, none had a batch failed.
    assert [s.reconnects for s in summaries] == [0] * N_CLIENTS
    assert [s.retries for s in summaries] == [0] * N_CLIENTS
    counters = server.orchestrator.counters
    assert counters.connections == N_CLIENTS
    assert counters.failed == 0

    batches = decode(read_frames(sink_path))   # every frame whole and a DataBatch

    # Every row of every agency, exactly once.
    expected: Dict[str, collections.Counter] = {spec.name: collections.Counter()
                                                for spec in TABLES}
    for folder in datasets:
        for table, rows in expected_rows(folder).items():
            expected[table].update(rows)
    stored = as_multisets(stored_rows(batches))
    for spec in TABLES:
        assert stored[spec.name] == expected[spec.name], spec.name
    assert sum(map(sum, (c.values() for c in stored.values()))) == \
        sum(sum(s.rows.values()) for s in summaries)

    # Each table batch once: as many in the sink as the clients had ACKed.
    table_batches = [db for db in batches if not isinstance(db.batch_msg, (EOFMessage, Finished))]
    assert len(table_batches) == sum(sum(s.batches.values()) for s in summaries)
    # Batch numbers run 1..n per table and agency: each (table, number) once per agency that had it.
    keys = collections.Counter((db.batch_msg.table.name, db.batch_number) for db in table_batches)
    assert keys == collections.Counter((table, number) for s in summaries
                                       for table, n in s.batches.items()
                                       for number in range(1, n + 1))

    eofs = collections.Counter(db.batch_msg.table_type for db in batches
                               if isinstance(db.batch_msg, EOFMessage))
    assert eofs == {spec.name: N_CLIENTS for spec in TABLES}
    finished = [db.batch_msg.agency_id for db in batches if isinstance(db.batch_msg, Finished)]
    assert sorted(finished) == agency_ids
