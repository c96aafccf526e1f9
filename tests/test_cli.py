"""The ``fastframe`` command line: inspect, gen, demo, send, serve, --version."""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

import pytest

import fastframe
from fastframe import cli, codec
from fastframe.client import Client
from fastframe.messages import decode_frame
from fastframe.orchestrator import Orchestrator
from fastframe.schema import TABLE_OPCODES, BatchStatus, Opcodes
from fastframe.sinks.file import FileSink, read_frames
from helpers_system import (
    TIMEOUT, FakeServer, csv_table_rows, free_port, needs_sigterm, running, write_dataset,
)

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


def run_main(capsys, *argv: str) -> Tuple[int, str, str]:
    """``cli.main(argv)`` in this process: exit status (the parser's too), stdout, stderr."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error_line(err: str, prog: str, *words: str) -> None:
    """``err`` is one line, ``PROG: error: ...``, holding each of ``words``; no traceback."""
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: "), err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def no_amqp_env(monkeypatch):
    """CI exports the broker's URL; ``serve`` without ``--sink`` would use it."""
    monkeypatch.delenv(cli.AMQP_URL_ENV, raising=False)


def serve_process(*args: str, env: Optional[dict] = None) -> subprocess.Popen:
    return subprocess.Popen(fastframe_command("serve", *args), env=env or subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_listening(proc: subprocess.Popen, address: Tuple[str, int]) -> None:
    """Return once ``address`` accepts; fail at once if ``proc`` exits first."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(address, timeout=TIMEOUT).close()
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}: {proc.communicate()[1]}")
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not listen on {address} within {TIMEOUT} s")
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> Tuple[str, str]:
    """SIGTERM ``proc`` and return its output; kill it if it does not stop in time."""
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
    assert_one_error_line(err, "fastframe inspect", str(path))
    assert out == ""


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


def test_send_bad_data_is_one_error_line(tmp_path, capsys, keep_signal_handlers):
    write_dataset(tmp_path, {"users": [3]}, skipped=False)
    (tmp_path / "users" / "users_1.csv").write_text("user_id,gender\n1,f\n")
    with FakeServer() as server:
        status = cli.main(["send", str(tmp_path), "--server", f"127.0.0.1:{server.port}",
                           "--agency-id", "1"])
    assert status == 1
    assert_one_error_line(capsys.readouterr().err, "fastframe send", "users_1.csv", "birthdate")


@needs_sigterm
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


@needs_sigterm
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


# -- operator mistakes: one line, exit 2 (usage) or 1 (runtime) -----------------------

USAGE_MISTAKES = [
    pytest.param(["serve", "--sink", "sqlite:{tmp}/x.db"], ["argument --sink", "sqlite:"],
                 id="serve-sink-unknown-scheme"),
    pytest.param(["serve", "--sink", "file:"], ["argument --sink"], id="serve-sink-file-no-path"),
    pytest.param(["serve", "--port", "70000"], ["argument --port", "70,000"], id="serve-port-70000"),
    pytest.param(["serve", "--port", "http"], ["argument --port", "'http'"],
                 id="serve-port-not-a-number"),
    pytest.param(["serve", "--sink", "amqp"], ["--sink amqp", "FASTFRAME_AMQP_URL is not set"],
                 id="serve-sink-amqp-env-unset"),
    pytest.param(["serve", "--idle-timeout", "0"], ["argument --idle-timeout"],
                 id="serve-idle-timeout-0"),
    pytest.param(["serve", "--idle-timeout", "nan"], ["argument --idle-timeout"],
                 id="serve-idle-timeout-nan"),
    pytest.param(["serve", "--log-level", "loud"], ["argument --log-level", "'loud'"],
                 id="serve-log-level"),
    pytest.param(["serve", "--log-format", "xml"], ["argument --log-format", "'xml'"],
                 id="serve-log-format"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--window", "0"],
                 ["argument --window", "at least 1, got 0"], id="send-window-0"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--batch-rows", "0"],
                 ["argument --batch-rows", "at least 1, got 0"], id="send-batch-rows-0"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--max-batch-bytes", "1048577"],
                 ["argument --max-batch-bytes", "1,048,576"], id="send-max-batch-bytes-over"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--max-batch-bytes", "10"],
                 ["argument --max-batch-bytes", "18..1,048,576"], id="send-max-batch-bytes-under"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--connect-attempts", "0"],
                 ["argument --connect-attempts"], id="send-connect-attempts-0"),
    pytest.param(["send", "{data}", "--agency-id", "x1"], ["argument --agency-id", "'x1'"],
                 id="send-agency-id-not-a-number"),
    pytest.param(["send", "{data}", "--agency-id", "2147483648"], ["argument --agency-id"],
                 id="send-agency-id-over-i32"),
    pytest.param(["send", "{data}"], ["--agency-id"], id="send-agency-id-missing"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--server", "127.0.0.1:0"],
                 ["argument --server", "1..65,535"], id="send-server-port-0"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--server", "localhost"],
                 ["argument --server", "HOST:PORT"], id="send-server-no-port"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--server", "::1:12345"],
                 ["argument --server", "brackets: [::1]:12345"], id="send-server-bare-ipv6"),
    pytest.param(["send", "{data}", "--agency-id", "1", "--server", "[::1]"],
                 ["argument --server", "[IPV6]:PORT"], id="send-server-ipv6-no-port"),
    pytest.param(["send", "{tmp}/missing", "--agency-id", "1"],
                 ["data folder", "missing: no such directory"], id="send-missing-folder"),
    pytest.param(["send", "{data}/stores/stores_1.csv", "--agency-id", "1"],
                 ["data folder", "stores_1.csv: not a directory"], id="send-folder-is-a-file"),
    pytest.param(["gen", "{tmp}/gen", "--transactions", "-5"],
                 ["argument --transactions", "got -5"], id="gen-transactions-negative"),
    pytest.param(["demo", "--transactions", "0"], ["argument --transactions"],
                 id="demo-transactions-0"),
    pytest.param(["demo", "--data", "{tmp}/missing"], ["missing: no such directory"],
                 id="demo-missing-data-folder"),
    pytest.param(["inspect", "x.bin", "--rows", "-1"], ["argument --rows"], id="inspect-rows"),
]


@pytest.mark.parametrize("argv, words", USAGE_MISTAKES)
def test_usage_mistake_is_one_line_and_exit_2(tmp_path, capsys, no_amqp_env, argv, words):
    write_dataset(tmp_path / "data", {"stores": [2]})
    argv = [a.format(tmp=tmp_path, data=tmp_path / "data") for a in argv]
    status, out, err = run_main(capsys, *argv)
    assert status == 2
    assert_one_error_line(err, f"fastframe {argv[0]}", *words)
    assert out == ""


def test_unknown_command_is_one_line(capsys):
    status, _, err = run_main(capsys, "fetch")
    assert status == 2
    assert_one_error_line(err, "fastframe", "'fetch'")


def test_a_password_in_a_mistyped_sink_is_masked(capsys):
    status, _, err = run_main(capsys, "serve", "--sink", "amqq://ops:hunter22@broker/")
    assert status == 2
    assert_one_error_line(err, "fastframe serve", "argument --sink", "amqq://ops:***@broker/")
    assert "hunter22" not in err


def test_serve_on_a_busy_port(tmp_path, capsys, no_amqp_env):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        status, _, err = run_main(capsys, "serve", "--port", str(port),
                                  "--sink", f"file:{tmp_path / 'sink.bin'}")
    assert status == 1
    assert_one_error_line(err, "fastframe serve", f"cannot listen on 127.0.0.1:{port}",
                          "already in use")


@pytest.mark.parametrize("where, words", [
    ("{tmp}/a-file/sink.bin", ["Not a directory"]),
    ("{tmp}/no-such-folder/sink.bin", ["No such file or directory"]),
    ("{tmp}", ["Is a directory"]),
    ("{tmp}/notes.txt", ["is not a fastframe sink file"]),
], ids=["parent-is-a-file", "parent-missing", "path-is-a-folder", "not-a-sink-file"])
def test_serve_with_a_sink_path_it_cannot_use(tmp_path, capsys, no_amqp_env, where, words):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "notes.txt").write_text("these are not frames\n")
    sink = where.format(tmp=tmp_path)
    status, _, err = run_main(capsys, "serve", "--port", "0", "--sink", f"file:{sink}")
    assert status == 1
    assert_one_error_line(err, "fastframe serve", "cannot open sink", sink, *words)
    assert (tmp_path / "notes.txt").read_text() == "these are not frames\n"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a read-only folder anyway")
def test_serve_with_a_read_only_sink_folder(tmp_path, capsys, no_amqp_env):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    status, _, err = run_main(capsys, "serve", "--port", "0", "--sink", f"file:{folder}/s.bin")
    assert status == 1
    assert_one_error_line(err, "fastframe serve", "cannot open sink", "Permission denied")


def test_gen_into_a_folder_it_cannot_make(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    status, _, err = run_main(capsys, "gen", str(tmp_path / "a-file" / "data"),
                              "--transactions", "10")
    assert status == 1
    assert_one_error_line(err, "fastframe gen", str(tmp_path / "a-file"), "Not a directory")


def test_serve_with_the_broker_down(capsys, monkeypatch):
    """The URL from the environment; the sink's retries, then one error line, no password."""
    pytest.importorskip("pika")
    port = free_port()
    monkeypatch.setenv(cli.AMQP_URL_ENV, f"amqp://ops:s3cret-pw@127.0.0.1:{port}/%2F")
    status, _, err = run_main(capsys, "serve", "--port", "0")
    assert status == 1
    lines = err.splitlines()
    assert_one_error_line(lines[-1], "fastframe serve", "cannot open sink",
                          f"127.0.0.1:{port} unavailable after 3 attempts")
    assert lines[:-1] and all("retrying in" in line for line in lines[:-1]), err
    assert "Traceback" not in err and "s3cret-pw" not in err


def test_the_broker_password_stays_out_of_debug_logs(capsys, monkeypatch):
    pytest.importorskip("pika")
    port = free_port()
    monkeypatch.setenv(cli.AMQP_URL_ENV, f"amqp://ops:s3cret-pw@127.0.0.1:{port}/%2F")
    for log_format in cli.LOG_FORMATS:
        status, _, err = run_main(capsys, "serve", "--sink", "amqp", "--port", "0",
                                  "--log-level", "debug", "--log-format", log_format)
        assert status == 1
        assert "pika" in err  # at debug level pika speaks, and the password is still masked
        assert "s3cret-pw" not in err


def test_send_to_a_closed_port_says_what_it_waits_for(tmp_path, capsys, keep_signal_handlers):
    write_dataset(tmp_path, {"users": [3]})
    port = free_port()
    status, out, err = run_main(capsys, "send", str(tmp_path), "--server", f"127.0.0.1:{port}",
                                "--agency-id", "1", "--connect-attempts", "3")
    assert status == 1 and out == ""
    lines = err.splitlines()
    assert lines[:-1] == [
        f"fastframe send: waiting for 127.0.0.1:{port}: connection refused "
        f"(attempt {n} of 3, next in {delay} s)" for n, delay in [(1, "0.1"), (2, "0.2")]]
    assert_one_error_line(lines[-1], "fastframe send",
                          f"cannot connect to 127.0.0.1:{port} after 3 attempts")


@needs_sigterm
def test_send_stops_waiting_for_a_closed_port_on_sigint(tmp_path):
    write_dataset(tmp_path, {"users": [3]})
    port = free_port()
    proc = subprocess.Popen(
        fastframe_command("send", str(tmp_path), "--server", f"127.0.0.1:{port}",
                          "--agency-id", "1"),
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first.startswith(f"fastframe send: waiting for 127.0.0.1:{port}: "), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)  # well before the 10 attempts' 21 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and out == ""
    assert err.splitlines()[-1].startswith("fastframe send: cancelled by signal 2")


@pytest.mark.parametrize("argv, status, words", [
    (["serve", "--sink", "bogus"], 2, ["argument --sink"]),
    (["send", "{tmp}/missing", "--agency-id", "1"], 2, ["no such directory"]),
    (["send", "{tmp}", "--agency-id", "1", "--server", "127.0.0.1:{port}",
      "--connect-attempts", "2"], 1, ["cannot connect to 127.0.0.1:{port}"]),
], ids=["usage", "missing-folder", "closed-port"])
def test_python_m_fastframe_mistakes_end_in_one_error_line(tmp_path, argv, status, words):
    values = {"tmp": tmp_path, "port": free_port()}
    env = subprocess_env()
    env.pop(cli.AMQP_URL_ENV, None)
    result = subprocess.run(fastframe_command(*[a.format(**values) for a in argv]), env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == status
    last = result.stderr.splitlines()[-1]
    assert_one_error_line(last, f"fastframe {argv[0]}", *[w.format(**values) for w in words])
    assert "Traceback" not in result.stderr


# -- the sink URL from the environment ---------------------------------------------------

URL = "amqp://ops:pw@127.0.0.1:5672/%2F"


@pytest.mark.parametrize("value, env, expected", [
    (None, None, "file:fastframe-sink.bin"),
    (None, URL, URL),
    ("amqp", URL, URL),
    ("file:here.bin", URL, "file:here.bin"),
    ("amqps://a:b@broker/", URL, "amqps://a:b@broker/"),
], ids=["default", "env", "sink-amqp", "file-wins", "url-wins"])
def test_sink_precedence(value, env, expected):
    environ = {} if env is None else {cli.AMQP_URL_ENV: env}
    assert cli.resolve_sink(value, environ) == expected


@pytest.mark.parametrize("value, env, words", [
    ("amqp", None, ["FASTFRAME_AMQP_URL is not set"]),
    ("amqp", "", ["FASTFRAME_AMQP_URL is not set"]),
    (None, "http://ops:pw@web/", ["FASTFRAME_AMQP_URL", "http://ops:***@web/"]),
])
def test_sink_from_a_bad_environment_is_a_usage_error(value, env, words):
    environ = {} if env is None else {cli.AMQP_URL_ENV: env}
    with pytest.raises(cli.CommandError) as caught:
        cli.resolve_sink(value, environ)
    assert caught.value.status == 2
    assert all(w in str(caught.value) for w in words) and ":pw@" not in str(caught.value)


def test_redactor_masks_url_passwords_and_its_secrets():
    redact = cli.Redactor.for_url("amqp://ops:p%40ss@broker:5672/")
    assert redact("to amqp://ops:p%40ss@broker:5672/ now") == "to amqp://ops:***@broker:5672/ now"
    assert redact("PlainCredentials(password='p@ss')") == "PlainCredentials(password='***')"
    assert cli.Redactor()("amqps://a:b@h/ and amqp://nopass@h/ and file:x") == (
        "amqps://a:***@h/ and amqp://nopass@h/ and file:x")


# -- help ----------------------------------------------------------------------------------

def all_parsers() -> Dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"fastframe": parser, **commands.choices}


def test_every_option_has_help_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapped inside a default (fastframe-demo)
    parsers = all_parsers()
    assert sorted(parsers) == ["consume", "demo", "fastframe", "gen", "inspect", "send", "serve"]
    for name, parser in parsers.items():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            assert action.help and action.help is not argparse.SUPPRESS, (name, action.dest)
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, (name, action.dest)
    serve_help = " ".join(parsers["serve"].format_help().split())
    assert "(default: $FASTFRAME_AMQP_URL if set, else file:fastframe-sink.bin)" in serve_help


# -- progress --------------------------------------------------------------------------------

class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


DRAWN = re.compile(r"^(\w+) +(\S+)B +\S+ \S+, ([\d,]+) rows$")


def drawn(text: str) -> List[Tuple[str, str, int]]:
    """``(table, bytes as tqdm shows them, rows)`` of each redraw of the progress bars."""
    found = []
    for piece in re.split(r"[\r\n]", text):
        match = DRAWN.match(piece.rstrip())
        if match:
            found.append((match[1], match[2], int(match[3].replace(",", ""))))
    return found


def test_progress_shows_one_moment_at_every_redraw_and_the_totals_at_the_end(tmp_path):
    write_dataset(tmp_path / "data", {"stores": [3], "users": [5, 4]})
    terminal = Terminal()
    progress = cli.TableProgress(terminal, redraw_every=0)  # redraw at every ACK
    moments: Dict[str, List[Tuple[str, int]]] = {}  # per table: what each ACK brought it to
    totals: Dict[str, Tuple[int, int]] = {}

    def record(table: str, rows: int, nbytes: int) -> None:
        before = totals.get(table, (0, 0))
        totals[table] = (before[0] + rows, before[1] + nbytes)
        moments.setdefault(table, [("0.00", 0)]).append(
            (tqdm.format_sizeof(totals[table][1], divisor=1000), totals[table][0]))
        progress(table, rows, nbytes)

    with running(Orchestrator(FileSink(tmp_path / "sink.bin", fsync="never"), "127.0.0.1",
                              0)) as server:
        summary = Client(server.address, 1, batch_rows=2, progress=record,
                         timeout=TIMEOUT).send_folder(tmp_path / "data")
    progress.close()
    shown = drawn(terminal.getvalue())
    assert {table for table, _, _ in shown} == {"stores", "users"}
    assert len({rows for table, _, rows in shown if table == "users"}) >= 4  # redrawn often
    for table, size, rows in shown:
        assert (size, rows) in moments[table]
    last = {table: (size, rows) for table, size, rows in shown}
    assert {table: rows for table, (_, rows) in last.items()} == summary.rows
    assert {table: size for table, (size, _) in last.items()} == {
        table: tqdm.format_sizeof(nbytes, divisor=1000) for table, (_, nbytes) in totals.items()}


def test_progress_is_silent_when_stderr_is_not_a_terminal(tmp_path, capsys,
                                                          keep_signal_handlers):
    write_dataset(tmp_path / "data", {"stores": [4]})
    with running(Orchestrator(FileSink(tmp_path / "sink.bin", fsync="never"), "127.0.0.1",
                              0)) as server:
        host, port = server.address
        status, out, err = run_main(capsys, "send", str(tmp_path / "data"),
                                    "--server", f"{host}:{port}", "--agency-id", "2")
    assert status == 0 and err == ""
    assert out.startswith("sent 4 rows in 1 batches, ")


# -- IPv6 -------------------------------------------------------------------------------------

@pytest.fixture
def ipv6_port() -> int:
    """A port free on ::1; skips where the machine has no IPv6 loopback."""
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6) as probe:
            return probe.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


def ack_everything(listener: socket.socket, opcodes: List[int]) -> None:
    """One connection: ACK each frame, FINISHED included, and stop there (a minimal orchestrator)."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as stream:
        while True:
            header = stream.read(5)
            if len(header) < 5:
                return
            opcode, length = codec.read_frame_header(header, 0, 1 << 21)
            stream.read(length)
            opcodes.append(opcode)
            conn.sendall(codec.encode_frame(Opcodes.BATCH_RECV_SUCCESS, b""))
            if opcode == Opcodes.FINISHED:
                return


def test_send_to_a_bracketed_ipv6_server(tmp_path, capsys, keep_signal_handlers, ipv6_port):
    write_dataset(tmp_path, {"stores": [3]})
    opcodes: List[int] = []
    with socket.create_server(("::1", ipv6_port), family=socket.AF_INET6) as listener:
        listener.settimeout(TIMEOUT)
        server = threading.Thread(target=ack_everything, args=(listener, opcodes))
        server.start()
        status, out, err = run_main(capsys, "send", str(tmp_path), "--server",
                                    f"[::1]:{ipv6_port}", "--agency-id", "7")
        server.join(TIMEOUT)
    assert status == 0, err
    assert out.startswith("sent 3 rows in 1 batches, ")
    assert opcodes[-1] == Opcodes.FINISHED and len(opcodes) == 3


@needs_sigterm
def test_serve_on_ipv6_loopback(tmp_path, no_amqp_env, ipv6_port):
    write_dataset(tmp_path / "data", {"stores": [2]})
    sink = tmp_path / "sink.bin"
    proc = serve_process("--host", "::1", "--port", str(ipv6_port), "--sink", f"file:{sink}",
                         "--fsync", "never", "--log-level", "warning")
    try:
        wait_listening(proc, ("::1", ipv6_port))
        summary = Client(("::1", ipv6_port), 4, timeout=TIMEOUT).send_folder(tmp_path / "data")
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err
    assert summary.rows == {"stores": 2}
    assert [type(decode_frame(f).batch_msg).__name__ for f in read_frames(sink)] == [
        "NewStores", "EOFMessage", "Finished"]


# -- JSON logs ----------------------------------------------------------------------------------

def log_record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("fastframe.orchestrator", logging.INFO, __file__, 1, message, args,
                             exc_info)


def test_json_log_line_parses_the_action_shape():
    formatter = cli.JsonLogFormatter(cli.Redactor())
    item = json.loads(formatter.format(log_record(
        "action: batch | result: success | conn: %d | table: %s | peer: %s", 3, "users",
        "127.0.0.1:5000")))
    stamp = datetime.fromisoformat(item.pop("time"))
    assert stamp.utcoffset() == timedelta(0)
    assert item == {"level": "INFO", "logger": "fastframe.orchestrator",
                    "message": "action: batch | result: success | conn: 3 | table: users | "
                               "peer: 127.0.0.1:5000",
                    "action": "batch", "result": "success",
                    "fields": {"conn": 3, "table": "users", "peer": "127.0.0.1:5000"}}


def test_json_log_line_of_another_shape_keeps_only_the_message():
    formatter = cli.JsonLogFormatter(cli.Redactor())
    try:
        raise ValueError("boom")
    except ValueError:
        record = log_record("lost amqp://ops:pw@h/ | retrying", exc_info=sys.exc_info())
    item = json.loads(formatter.format(record))
    assert sorted(item) == ["exception", "level", "logger", "message", "time"]
    assert item["message"] == "lost amqp://ops:***@h/ | retrying"
    assert item["exception"].endswith("ValueError: boom")


def test_text_log_line_masks_the_sink_password():
    url = "amqp://ops:pa55word@broker:5672/%2F"
    formatter = cli.TextLogFormatter(cli.Redactor.for_url(url))
    line = formatter.format(log_record("action: open_sink | result: success | sink: %s", url))
    assert line.endswith(" INFO fastframe.orchestrator action: open_sink | result: success | "
                         "sink: amqp://ops:***@broker:5672/%2F")
    assert "pa55word" not in formatter.format(log_record("credentials %r", ("ops", "pa55word")))


@needs_sigterm
def test_serve_logs_json_lines(tmp_path, no_amqp_env):
    write_dataset(tmp_path / "data", {"users": [3]})
    port = free_port()
    sink = f"file:{tmp_path / 'sink.bin'}"
    proc = serve_process("--port", str(port), "--sink", sink, "--fsync", "never",
                         "--log-format", "json")
    try:
        wait_listening(proc, ("127.0.0.1", port))
        Client(("127.0.0.1", port), 4, timeout=TIMEOUT).send_folder(tmp_path / "data")
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err
    items = [json.loads(line) for line in err.splitlines()]
    assert items and all({"time", "level", "logger", "message"} <= set(i) for i in items)
    events = [i for i in items if "action" in i]
    assert len(events) >= 2  # the orchestrator logs in the action shape: listen, ..., shutdown
    for item in events:  # the parsed fields are the message, piece by piece
        pairs = {"action": item["action"], **({"result": item["result"]} if "result" in item
                                              else {}), **item["fields"]}
        assert " | ".join(f"{k}: {v}" for k, v in pairs.items()) == item["message"]
    assert any(f"127.0.0.1:{port}" in map(str, i["fields"].values()) for i in events)
    assert {"action": "open_sink", "result": "success", "fields": {"sink": sink},
            "logger": "fastframe.cli", "level": "INFO"}.items() <= events[0].items()
