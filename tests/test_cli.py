"""The ``fastframe`` command line: inspect, gen, demo, send, serve, --version."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import List

import pytest

import fastframe
import fastframe.client as client_module
from fastframe import cli, codec
from fastframe.client import Client
from fastframe.messages import decode_frame
from fastframe.orchestrator import Orchestrator
from fastframe.schema import TABLE_OPCODES, BatchStatus, Opcodes
from fastframe.sinks.file import FileSink, read_frames
from helpers_system import TIMEOUT, FakeServer, csv_table_rows, free_port, running, write_dataset

SAMPLE_TYPES = ["NewMenuItems", "EOFMessage", "NewStores", "EOFMessage", "NewTransactionItems",
                "EOFMessage", "NewTransactions", "EOFMessage", "NewUsers", "EOFMessage",
                "Finished"]
SAMPLE_ROWS = {"menu_items": 8, "stores": 10, "transaction_items": 3, "transactions": 3,
               "users": 3}
FRAME_LINE = re.compile(r"^#(\d+) @(\d+) (\w+)")


def subprocess_env() -> dict:
    """The environment for ``python -m fastframe``: this fastframe first on the path."""
    package_root = str(Path(fastframe.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=package_root + (os.pathsep + path if path else ""))


def fastframe_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "fastframe", *args]


@pytest.fixture
def keep_signal_handlers():
    """``fastframe send`` installs SIGTERM/SIGINT handlers; put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def inspect_json(capsys, path) -> List[dict]:
    assert cli.main(["inspect", str(path), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# -- inspect -----------------------------------------------------------------------------

def test_inspect_text(capsys, conformance_dir):
    assert cli.main(["inspect", str(conformance_dir / "sample_c2s.bin"), "--rows", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    frames = [FRAME_LINE.match(line).groups() for line in lines if FRAME_LINE.match(line)]
    assert [int(i) for i, _, _ in frames] == list(range(11))
    assert [t for _, _, t in frames] == SAMPLE_TYPES
    assert lines[-1] == "#10 @5202 Finished agency_id=1"
    assert "{'product_id': '1', 'name': 'Espresso'" in lines[1]  # one row shown per batch
    assert len(lines) == 11 + 5


def test_inspect_json(capsys, conformance_dir):
    path = conformance_dir / "sample_c2s.bin"
    items = inspect_json(capsys, path)
    assert [item["type"] for item in items] == SAMPLE_TYPES
    assert [item["index"] for item in items] == list(range(11))
    frames = list(read_frames(path))
    assert [item["offset"] for item in items] == [sum(map(len, frames[:i])) for i in range(11)]
    tables = [item for item in items if "table" in item]
    assert {item["table"]: item["rows"] for item in tables} == SAMPLE_ROWS
    assert all(len(item["data"]) == item["rows"] and item["status"] == "EOF" for item in tables)
    assert [item["table_type"] for item in items if item["type"] == "EOFMessage"] == list(
        SAMPLE_ROWS)
    assert items[-1]["agency_id"] == 1
    assert items[0]["data"][0] == {"product_id": "1", "name": "Espresso", "category": "coffee",
                                   "price": "6.0", "is_seasonal": "False",
                                   "available_from": "", "available_to": ""}


@pytest.mark.parametrize("size, whole", [
    (5202 + 3, 10),   # inside the last frame's 5-byte header
    (5202 + 7, 10),   # inside the last frame's body
    (1212 + 20, 1),   # inside the first EOF frame
])
def test_inspect_torn_file(tmp_path, capsys, conformance_dir, size, whole):
    sample = conformance_dir / "sample_c2s.bin"
    starts = [0]
    for frame in read_frames(sample):
        starts.append(starts[-1] + len(frame))
    torn = tmp_path / "torn.bin"
    torn.write_bytes(sample.read_bytes()[:size])
    assert cli.main(["inspect", str(torn), "--json"]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["offset"] for line in out.splitlines()] == starts[:whole]
    assert f"torn frame at offset {starts[whole]}" in err and str(torn) in err


@pytest.mark.parametrize("content", [
    pytest.param(lambda: codec.encode_frame(4, b"\x01\0\0\0"), id="bad-table-body"),
    pytest.param(lambda: b"\x63\0\0\0\0", id="unknown-opcode"),
    pytest.param(None, id="missing-file"),
])
def test_inspect_unreadable_file(tmp_path, capsys, content):
    path = tmp_path / "bad.bin"
    if content is not None:
        path.write_bytes(content())
    assert cli.main(["inspect", str(path)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"fastframe inspect: {path}: ") and out == ""


# -- gen and demo ------------------------------------------------------------------------

def test_gen_then_demo(tmp_path, capsys):
    data = tmp_path / "data"
    assert cli.main(["gen", str(data), "--transactions", "300", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[:out.index("\ngenerated")])
    expected = csv_table_rows(data)
    assert {t: summary[t]["rows"] for t in expected} == {
        t: sum(map(len, files)) for t, files in expected.items()}
    assert cli.main(["demo", "--data", str(data), "--out", str(tmp_path / "out"),
                     "--fsync", "never"]) == 0
    out = capsys.readouterr().out
    assert "result: every row arrived" in out
    assert "EOF frames: 5   FINISHED frames: 1" in out


def test_demo_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert cli.main(["demo", "--transactions", "2000", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "result: every row arrived" in out
    # The table in the report: csv rows == rows in the sink, for the five tables.
    report = {m[0]: (m[1], m[2]) for m in re.findall(
        r"^(\w+) +([\d,]+) +([\d,]+) +[\d,]+$", out, re.M)}
    assert sorted(report) == sorted(SAMPLE_ROWS)
    assert all(csv_rows == sink_rows for csv_rows, sink_rows in report.values())
    assert report["transactions"][0] == "2,000"
    items = inspect_json(capsys, out_dir / "sink.bin")
    assert {item["type"] for item in items} == {"DataBatch"}
    assert items[-1]["embedded"]["type"] == "Finished"
    assert items[-1]["embedded"]["agency_id"] == 1


def test_demo_on_the_sample_data(tmp_path, capsys, conformance_dir):
    data = tmp_path / "sample"
    shutil.copytree(conformance_dir / "sample_data", data)
    assert cli.main(["demo", "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "result: every row arrived" in out
    assert re.search(r"^transactions +3 +3 +1$", out, re.M)


# -- send and serve ----------------------------------------------------------------------

def test_send(tmp_path, capsys, keep_signal_handlers):
    write_dataset(tmp_path / "data", {"stores": [4], "users": [9, 3]})
    sink = tmp_path / "sink.bin"
    with running(Orchestrator(FileSink(sink, fsync="never"), "127.0.0.1", 0)) as server:
        host, port = server.address
        assert cli.main(["send", str(tmp_path / "data"), "--server", f"{host}:{port}",
                         "--agency-id", "5", "--batch-rows", "2", "--window", "2"]) == 0
    assert capsys.readouterr().out.startswith("sent 16 rows in ")
    inner = [decode_frame(f).batch_msg for f in read_frames(sink)]
    assert inner[-1].agency_id == 5
    assert sum(len(m.rows) for m in inner[:-1]) == 16


@pytest.mark.parametrize("case", ["missing-column", "no-server"])
def test_send_error(tmp_path, capsys, monkeypatch, keep_signal_handlers, case):
    write_dataset(tmp_path, {"users": [3]}, skipped=False)
    if case == "missing-column":
        (tmp_path / "users" / "users_1.csv").write_text("user_id,gender\n1,f\n")
        context = FakeServer()
    else:  # nothing listens there; and no sleeping through the connect backoff
        context = contextlib.nullcontext(types.SimpleNamespace(port=free_port()))
        monkeypatch.setattr(client_module, "time", types.SimpleNamespace(
            sleep=lambda s: None, perf_counter=client_module.time.perf_counter))
    with context as server:
        address = f"127.0.0.1:{server.port}"
        assert cli.main(["send", str(tmp_path), "--server", address, "--agency-id", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastframe send: error: ")
    if case == "missing-column":
        assert "users_1.csv" in err and "birthdate" in err
    else:
        assert f"cannot connect to {address}" in err


def test_send_is_cancelled_by_sigterm(tmp_path):
    """SIGTERM while waiting for an ACK: a CANCEL batch goes out, exit status 128 + 15."""
    write_dataset(tmp_path, {t: [3] for t in SAMPLE_ROWS})
    signalled = threading.Event()

    def slow_acks(conn):
        while True:
            got = conn.read()
            if got is None or got.opcode == Opcodes.FINISHED:
                return
            assert signalled.wait(TIMEOUT)  # no ACK before the client got its SIGTERM
            conn.ack()

    with FakeServer(slow_acks) as server:
        proc = subprocess.Popen(
            fastframe_command("send", str(tmp_path), "--server", f"127.0.0.1:{server.port}",
                              "--agency-id", "3"),
            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            server.wait_for(lambda frames: len(frames) >= 1)
            proc.send_signal(signal.SIGTERM)
            signalled.set()
            out, err = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "cancelled by signal 15" in err
    batches = [g for g in server.frames if g.opcode in TABLE_OPCODES]
    assert batches[-1].msg.batch_status == BatchStatus.CANCEL
    assert all(g.msg.batch_status != BatchStatus.CANCEL for g in batches[:-1])
    assert not any(g.opcode == Opcodes.FINISHED for g in server.frames)


def test_serve_then_send(tmp_path):
    """``fastframe serve`` in a subprocess takes a client's data and stops on SIGTERM."""
    write_dataset(tmp_path / "data", {"stores": [5], "transactions": [4, 4]})
    sink = tmp_path / "served.bin"
    port = free_port()
    proc = subprocess.Popen(
        fastframe_command("serve", "--port", str(port), "--sink", f"file:{sink}",
                          "--fsync", "never", "--log-level", "warning"),
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        summary = Client(("127.0.0.1", port), 4, connect_attempts=30, backoff=0.05,
                         timeout=TIMEOUT).send_folder(tmp_path / "data")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert summary.rows == {"stores": 5, "transactions": 8}
    inner = [decode_frame(f).batch_msg for f in read_frames(sink)]
    assert [type(m).__name__ for m in inner] == [
        "NewStores", "EOFMessage", "NewTransactions", "NewTransactions", "EOFMessage",
        "Finished"]


def test_version():
    result = subprocess.run(fastframe_command("--version"), env=subprocess_env(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"fastframe {re.escape(fastframe.__version__)} \(codec: (c|python)\)\n",
                        result.stdout)
