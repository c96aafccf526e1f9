"""The whole path: datagen's CSV folders -> Client -> Orchestrator -> FileSink, read back.

Once in-process (the orchestrator in a thread, the client in the test) and
once as the real processes: ``python -m fastframe serve`` and ``python -m
fastframe send``, the server stopped with SIGTERM. The sink is checked
against the CSV files read with ``csv.DictReader`` by header name, apart
from the client's own reader: every row once, in order, its values under
its §8 keys; batch numbers 1..n per table; status EOF on the last batch of
each file; an EOF per table after its batches; one FINISHED, last.
"""
from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

import fastframe
from fastframe.client import CSV_COLUMNS, Client
from fastframe.datagen import generate
from fastframe.messages import DataBatch, EOFMessage, Finished
from fastframe.schema import MAX_BATCH_FRAME, TABLES, BatchStatus
from fastframe.sinks.file import FileSink, read_frames
from test_orchestrator import JOIN_TIMEOUT, SOCKET_TIMEOUT, Server, assert_header, csv_files, decode

TRANSACTIONS = 3000
AGENCY_ID = 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A few thousand transactions over 24 monthly files per monthly table."""
    folder = tmp_path_factory.mktemp("e2e") / "data"
    generate(folder, transactions=TRANSACTIONS, seed=2024)
    assert len(csv_files(folder, TABLES[3])) > 1
    return folder


def csv_projections(folder: Path) -> Dict[str, List[List[Tuple[str, ...]]]]:
    """Per table, per CSV file in send order, each row's §8 projection.

    Read by header name with ``csv.DictReader`` (the §9 renames applied),
    not with the client's reader, so a column the client maps wrongly shows.
    """
    out = {}
    for spec in TABLES:
        renames = CSV_COLUMNS.get(spec.name, {})
        files = []
        for path in csv_files(folder, spec):
            with open(path, newline="", encoding="utf-8") as f:
                rows = [{renames.get(k, k): v for k, v in row.items()}
                        for row in csv.DictReader(f)]
            files.append([tuple(row[k] for k in spec.kept_columns) for row in rows])
        out[spec.name] = files
    return out


def assert_sink_matches(batches: Sequence[DataBatch], folder: Path, agency_id: int,
                        compat: bool) -> None:
    """The sink of one client that sent ``folder`` without retries (see the module doc)."""
    expected = csv_projections(folder)
    at = 0
    for spec in TABLES:
        numbers, files, current = [], [], []
        while at < len(batches) and not isinstance(batches[at].batch_msg, (EOFMessage, Finished)):
            db, msg = batches[at], batches[at].batch_msg
            assert msg.table is spec, f"frame {at}: {msg.table.name} inside {spec.name}"
            assert_header(db, spec, compat)
            assert db.batch_number == msg.batch_number
            if msg.rows:
                assert msg.columns == spec.kept_columns
            current += [tuple(getattr(row, k) for k in spec.kept_columns) for row in msg.rows]
            assert msg.batch_status in (BatchStatus.CONTINUE, BatchStatus.EOF)
            if msg.batch_status == BatchStatus.EOF:   # the last batch of a file
                files.append(current)
                current = []
            numbers.append(msg.batch_number)
            at += 1
        assert current == [], f"{spec.name}: rows after the last file's EOF batch"
        assert files == expected[spec.name], f"{spec.name}: rows differ from the CSV files"
        assert numbers == list(range(1, len(numbers) + 1)), f"{spec.name}: batch numbers"
        eof = batches[at]
        assert eof.batch_msg == EOFMessage(len(numbers), spec.name)
        assert_header(eof, spec, compat)
        at += 1
    assert [db.batch_msg for db in batches[at:]] == [Finished(agency_id)]
    assert_header(batches[at], None, compat)


# -- in-process ------------------------------------------------------------------------

@pytest.mark.parametrize("batch_rows, max_batch_bytes, compat", [
    pytest.param(250, MAX_BATCH_FRAME, False, id="row-limited"),
    pytest.param(50_000, 16 * 1024, False, id="byte-limited"),
    pytest.param(50_000, MAX_BATCH_FRAME, True, id="whole-files-compat"),
])
def test_client_to_sink_in_process(dataset, tmp_path, batch_rows, max_batch_bytes, compat):
    sink_path = tmp_path / "sink.bin"
    server = Server(FileSink(sink_path, fsync="always"), compat=compat)
    try:
        summary = Client(server.address, AGENCY_ID, batch_rows=batch_rows,
                         max_batch_bytes=max_batch_bytes, window=8, timeout=SOCKET_TIMEOUT,
                         finished_ack=not compat).send_folder(dataset)
    finally:
        server.stop()
    assert summary.retries == 0 and summary.reconnects == 0
    expected = csv_projections(dataset)
    assert summary.rows == {name: sum(map(len, files)) for name, files in expected.items()}
    batches = decode(read_frames(sink_path))
    assert_sink_matches(batches, dataset, AGENCY_ID, compat)
    # Both limits cut files into several batches (whole files: one batch each).
    split = any(getattr(db.batch_msg, "batch_status", None) == BatchStatus.CONTINUE
                for db in batches)
    assert split == (batch_rows < 50_000 or max_batch_bytes < MAX_BATCH_FRAME)


# -- the real processes ----------------------------------------------------------------

def _env() -> Dict[str, str]:
    """The environment for ``python -m fastframe``: this test's fastframe, this codec choice."""
    env = dict(os.environ)
    package_root = str(Path(fastframe.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT).close()
        return True
    except OSError:
        return False


def _start_serve(sink_path: Path, log: Path) -> Tuple[subprocess.Popen, int]:
    """``fastframe serve`` on a free port, once it accepts connections.

    The port is picked by binding and releasing it, so another process may
    take it first: then serve exits, and a new port is tried.
    """
    for _ in range(5):
        port = _free_port()
        with open(log, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fastframe", "serve", "--port", str(port),
                 "--sink", f"file:{sink_path}", "--fsync", "always", "--log-level", "warning"],
                env=_env(), stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + JOIN_TIMEOUT
        while proc.poll() is None and not _accepts(port):
            assert time.monotonic() < deadline, "fastframe serve never accepted a connection"
            time.sleep(0.05)
        if proc.poll() is None:
            return proc, port
    pytest.fail(f"fastframe serve could not start:\n{log.read_text()}")


@pytest.mark.skipif(sys.platform == "win32",
                    reason="Windows cannot deliver SIGTERM to a process as a signal")
def test_serve_and_send_as_processes(dataset, tmp_path):
    sink_path = tmp_path / "sink.bin"
    serve_log = tmp_path / "serve.log"
    serve, port = _start_serve(sink_path, serve_log)
    try:
        send = subprocess.run(
            [sys.executable, "-m", "fastframe", "send", str(dataset),
             "--server", f"127.0.0.1:{port}", "--agency-id", str(AGENCY_ID),
             "--batch-rows", "400"],
            env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=JOIN_TIMEOUT * 5)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(JOIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(JOIN_TIMEOUT)
            raise
    assert send.returncode == 0, send.stderr
    rows = sum(map(len, (f for files in csv_projections(dataset).values() for f in files)))
    assert send.stdout.startswith(f"sent {rows:,} rows in "), send.stdout
    assert serve.returncode == 0, serve_log.read_text()
    assert_sink_matches(decode(read_frames(sink_path)), dataset, AGENCY_ID, compat=False)
