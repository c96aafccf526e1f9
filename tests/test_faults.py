"""Faults: what a killed client, a slow or hostile peer, a full disk, a broker restart
and a killed orchestrator do to the data (PROTOCOL.md §7, README "Sinks").

The promise under test: a batch ACKed with BATCH_RECV_SUCCESS is in the sink,
a frame that did not arrive whole never is, and one connection's trouble is
that connection's only. Each test injects one fault while healthy clients
stream, then reads the sink back and compares it with what should be there:

* the *reference* of a data folder is the list of DataBatch frames one
  undisturbed ``Client`` run over it produces (``reference_frames``, itself
  checked against the CSV files), so a sink can be compared frame by frame;
* healthy clients are held mid-stream (``Paced``: their progress callback
  waits at their n-th ACK) until the fault has happened, so the overlap is
  certain, not a matter of timing.

Everything is on 127.0.0.1, every socket has a timeout, every thread and
subprocess is waited for with one, and no assertion is about time.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import pytest

import fastframe
import fastframe.sinks.file as file_module
from fastframe import codec
from fastframe.client import Client
from fastframe.datagen import generate
from fastframe.messages import DataBatch, EOFMessage, Finished, decode_frame
from fastframe.orchestrator import Orchestrator
from fastframe.schema import TABLES, Opcodes
from fastframe.sinks.file import FileSink, TornFrameError, read_frames
from fastframe.sinks.rabbitmq import QUERY_IDS, RabbitMQSink, read_queue
from helpers_system import free_port
from rabbitmq_broker import (  # noqa: F401, F811 (fixtures)
    amqp_exchange, broker_crash_restart, broker_start, broker_stop, rabbitmq_url,
)
from test_orchestrator import (
    FAIL, JOIN_TIMEOUT, MENU, SOCKET_TIMEOUT, SUCCESS, MemorySink, Server, Wire, Workers,
    as_multisets, batch_frame, decode, expected_rows, numbered_batch, stored_rows, wait_for,
)
from wire import sample_rows

SUBPROCESS_TIMEOUT = 60.0


# -- references ------------------------------------------------------------------------

def reference_frames(folder: Path, agency_id: int, **options) -> List[bytes]:
    """The DataBatch frames, in order, of one undisturbed ``Client`` run over ``folder``.

    Checked against the CSV files (every row once, §8 columns), so a sink that
    equals references holds exactly the data. Frames depend on the batching
    options (``batch_rows``, ``max_batch_bytes``), not on the window.
    """
    sink = MemorySink()
    server = Server(sink)
    try:
        Client(server.address, agency_id, timeout=SOCKET_TIMEOUT, **options).send_folder(folder)
    finally:
        server.stop()
    frames = [bytes(f) for f in sink.durable]
    assert as_multisets(stored_rows(decode(frames))) == as_multisets(expected_rows(folder))
    return frames


def reference_for_raw(frames: Sequence[bytes]) -> List[bytes]:
    """The DataBatch frame the orchestrator makes of each of ``frames`` (valid client frames)."""
    sink = MemorySink()
    server = Server(sink)
    try:
        with Wire(server.address) as wire:
            wire.send(b"".join(frames))
            assert wire.acks(len(frames)) == [SUCCESS] * len(frames)
    finally:
        server.stop()
    return [bytes(f) for f in sink.durable]


def sink_frames(path: Path) -> List[bytes]:
    """Every frame of a sink file; raises if any is torn or not a frame. Each must decode."""
    frames = [bytes(f) for f in read_frames(path)]
    decode(frames)   # each one a whole, valid DataBatch
    return frames


def whole_frames(path: Path) -> Tuple[List[bytes], int]:
    """The whole frames of a sink file that may end torn, and the size of the torn tail."""
    frames: List[bytes] = []
    try:
        for f in read_frames(path):
            frames.append(bytes(f))
    except TornFrameError:
        pass
    return frames, path.stat().st_size - sum(map(len, frames))


def row_counts_at_least(stored: Dict[str, collections.Counter],
                        expected: Dict[str, collections.Counter]) -> Dict[str, int]:
    """Check every expected row is stored at least as often; return the extra copies per table."""
    extra = {}
    for table, rows in expected.items():
        missing = rows - stored.get(table, collections.Counter())
        assert not missing, (f"{table}: {sum(missing.values())} rows missing, "
                             f"e.g. {next(iter(missing))}")
        extra[table] = sum((stored.get(table, collections.Counter()) - rows).values())
    return extra


class Paced:
    """A ``Client`` progress callback: counts ACKs; at the ``pause_at``-th, waits for ``resume``."""

    def __init__(self, pause_at: Optional[int] = None) -> None:
        self.acks = 0
        self.pause_at = pause_at
        self.paused = threading.Event()
        self.resume = threading.Event()

    def __call__(self, table: str, rows: int, nbytes: int) -> None:
        self.acks += 1
        if self.acks == self.pause_at:
            self.paused.set()
            if not self.resume.wait(JOIN_TIMEOUT):
                raise AssertionError("the test never resumed this client")


def healthy_clients(address, folders: Sequence[Path], first_agency: int, pause_at: Optional[int],
                    **options) -> Tuple[List[Client], List[Paced]]:
    pacers = [Paced(pause_at) for _ in folders]
    options = {"batch_rows": 20, "window": 4, "backoff": 0.01, "timeout": SOCKET_TIMEOUT,
               **options}
    clients = [Client(address, first_agency + i, progress=pacer, **options)
               for i, pacer in enumerate(pacers)]
    return clients, pacers


def wait_paused(pacers: Iterable[Paced]) -> None:
    for pacer in pacers:
        assert pacer.paused.wait(JOIN_TIMEOUT), "a healthy client never got going"


def resume(pacers: Iterable[Paced]) -> None:
    for pacer in pacers:
        pacer.resume.set()


# -- subprocesses ----------------------------------------------------------------------

def subprocess_env() -> dict:
    """The environment for ``python -m fastframe``: this fastframe first on the path.

    ``FASTFRAME_PUREPYTHON`` goes through, so the subprocess runs the same codec.
    """
    package_root = str(Path(fastframe.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=package_root + (os.pathsep + path if path else ""))


def fastframe_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "fastframe", *args]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (ours, by its pid) if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(SUBPROCESS_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


def read_line(proc: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT) -> bytes:
    """One line of ``proc``'s stdout (a pipe), waiting at most ``timeout``."""
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    assert readable, "the subprocess said nothing"
    return proc.stdout.readline()


def wait_for_log(path: Path, text: str) -> str:
    """Poll a subprocess's log file until it holds ``text``; return the whole log."""
    wait_for(lambda: text in path.read_text(errors="replace"), f"{text!r} in {path.name}")
    return path.read_text(errors="replace")


# A raw client in its own process: sends whole frames, reads their ACKs, sends
# the first part of one more frame, says so, and waits to be killed.
RAW_CLIENT = r"""
import socket, sys, time
whole, part = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
n_acks, port = int(sys.argv[3]), int(sys.argv[4])
sock = socket.create_connection(("127.0.0.1", port), timeout=20)
sock.sendall(whole)
acks = b""
while len(acks) < 5 * n_acks:
    chunk = sock.recv(5 * n_acks - len(acks))
    if not chunk:
        sys.exit("closed by the orchestrator")
    acks += chunk
sock.sendall(part)
print(acks.hex(), flush=True)
time.sleep(60)
"""


# -- data ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> List[Path]:
    """Six small generated data sets, each from its own seed."""
    root = tmp_path_factory.mktemp("faults")
    folders = []
    for seed in range(6):
        folder = root / f"seed{seed}"
        generate(folder, transactions=400, seed=100 + seed)
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def references(datasets) -> Dict[Path, List[bytes]]:
    """Each data set's reference frames with the healthy clients' batching (20 rows)."""
    return {folder: reference_frames(folder, 0, batch_rows=20) for folder in datasets}


def with_agency(frames: List[bytes], agency_id: int) -> List[bytes]:
    """A reference made with agency 0, its FINISHED frame (the last) for ``agency_id``."""
    finished = decode_frame(frames[-1])
    assert finished.batch_msg == Finished(0)
    return frames[:-1] + [codec.impl.encode_databatch_frame(
        finished.table_ids, finished.query_ids, 0, 0, {}, finished.total_shards,
        finished.shard_num, codec.impl.encode_finished_frame(agency_id))]


# == a) a client process killed mid-frame =============================================

class HeldFileSink(FileSink):
    """A ``FileSink`` whose writer stops inside ``write`` at the ``hold_at``-th frame
    in ``watch`` (after writing it) until ``release`` is set."""

    def __init__(self, path: Path, watch: set, hold_at: int) -> None:
        super().__init__(path, fsync="never")
        self.watch = watch
        self.hold_at = hold_at
        self.seen = 0
        self.holding = threading.Event()
        self.release = threading.Event()

    def write(self, frame: bytes, query_ids: Sequence[int] = ()) -> None:
        super().write(frame, query_ids)
        if bytes(frame) in self.watch:
            self.seen += 1
            if self.seen == self.hold_at:
                self.holding.set()
                self.release.wait(JOIN_TIMEOUT)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"),
                    reason="no SIGKILL here (Windows): the clients must die mid-frame, unwarned")
def test_client_processes_killed_mid_frame_leave_no_partial_batch(
        tmp_path, datasets, references, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    healthy = datasets[:4]
    healthy_refs = [with_agency(references[f], 300 + i) for i, f in enumerate(healthy)]

    # The raw client: three whole menu_items batches, then 40 bytes of a fourth.
    raw = [numbered_batch(n) for n in (9001, 9002, 9003)]
    raw_refs = reference_for_raw(raw)
    part = numbered_batch(9004)[:40]
    (tmp_path / "whole.bin").write_bytes(b"".join(raw))
    (tmp_path / "part.bin").write_bytes(part)

    # The `fastframe send` process: one batch per CSV file (hundreds of KB each).
    big = tmp_path / "big"
    generate(big, transactions=20_000, seed=66)
    big_refs = reference_frames(big, 66, batch_rows=100_000)
    known = set(raw_refs).union(*map(set, healthy_refs))
    unique = {f for f in big_refs if f not in known}   # all but its menu and stores frames
    held = [i for i, f in enumerate(big_refs) if f in unique][1]
    sink = HeldFileSink(tmp_path / "sink.bin", watch=unique, hold_at=2)
    server = Server(sink)
    port = server.address[1]
    clients, pacers = healthy_clients(server.address, healthy, 300, pause_at=10)
    raw_proc = send_proc = workers = None
    try:
        raw_proc = subprocess.Popen(
            [sys.executable, "-c", RAW_CLIENT, str(tmp_path / "whole.bin"),
             str(tmp_path / "part.bin"), str(len(raw)), str(port)],
            stdout=subprocess.PIPE, env=subprocess_env())
        assert bytes.fromhex(read_line(raw_proc).decode()) == SUCCESS * len(raw)

        workers = Workers([lambda c=c, f=f: c.send_folder(f) for c, f in zip(clients, healthy)])
        wait_paused(pacers)   # every healthy client is mid-stream, batches in flight

        with open(tmp_path / "send.log", "wb") as log:
            send_proc = subprocess.Popen(
                fastframe_command("send", str(big), "--server", f"127.0.0.1:{port}",
                                  "--agency-id", "66", "--batch-rows", "100000"),
                stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
        # Its second transaction_items batch is being written; the orchestrator's
        # connection thread waits for the sink, so the client's next frames (a
        # window of 8, hundreds of KB each) pile up in the socket buffers and it
        # most likely blocks inside one. SIGKILL it there. (The test does not
        # depend on where it stopped: the raw client is the certain mid-frame case.)
        assert sink.holding.wait(JOIN_TIMEOUT), "the send process never got going"
        assert send_proc.poll() is None
        send_proc.kill()
        raw_proc.kill()
        assert send_proc.wait(SUBPROCESS_TIMEOUT) == -signal.SIGKILL
        assert raw_proc.wait(SUBPROCESS_TIMEOUT) == -signal.SIGKILL
    finally:
        sink.release.set()
        resume(pacers)
        for proc in (raw_proc, send_proc):
            if proc is not None:
                stop_process(proc)
        summaries = workers.join() if workers is not None else []
        server.stop()

    # The healthy clients did not notice.
    assert [(s.retries, s.reconnects) for s in summaries] == [(0, 0)] * len(healthy)
    # The raw client's connection ended on its 40 pending bytes, nothing stored of them.
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"peer closed mid-frame ({len(part)} bytes pending)" in m for m in messages)

    stored = collections.Counter(sink_frames(tmp_path / "sink.bin"))
    expected = collections.Counter(raw_refs)
    for refs in healthy_refs:
        expected.update(refs)
    assert not expected - stored, "a healthy client's or the raw client's batch is missing"
    # What is left is the killed `fastframe send`'s: whole batches, the first n it sent.
    killed = stored - expected
    n = sum(killed.values())
    assert held < n < len(big_refs)   # the held batch was stored, FINISHED never came
    assert killed == collections.Counter(big_refs[:n])


# == b) slow clients trickling bytes =================================================

def _trickle(address, data: bytes, max_bytes: int) -> int:
    """Send ``data`` one byte every 50 ms until the orchestrator closes; return bytes sent."""
    sent = 0
    with Wire(address) as slow:
        try:
            while sent < min(len(data), max_bytes):
                slow.send(data[sent:sent + 1])
                sent += 1
                readable, _, _ = select.select([slow.sock], [], [], 0.05)
                if readable and slow.sock.recv(1, socket.MSG_PEEK) == b"":
                    return sent   # closed by the orchestrator
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return sent


def test_trickling_clients_are_cut_at_the_frame_deadline_others_unaffected(
        datasets, references, caplog):
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")
    frame_timeout = 0.5
    # One byte per 50 ms never trips the 10 s idle timeout; the frame deadline does.
    server = Server(MemorySink(), idle_timeout=10.0, frame_timeout=frame_timeout)
    healthy = datasets[:4]
    clients, pacers = healthy_clients(server.address, healthy, 400, pause_at=5)
    slow = [batch_frame(MENU, sample_rows(MENU, 20, seed=n), batch_number=7000 + n)
            for n in range(3)]
    max_bytes = 400   # 20 s of trickling: far past the deadline
    assert all(len(s) > max_bytes for s in slow)
    workers = tricklers = None
    try:
        workers = Workers([lambda c=c, f=f: c.send_folder(f) for c, f in zip(clients, healthy)])
        wait_paused(pacers)   # streaming, batches in flight
        tricklers = Workers([lambda d=d: _trickle(server.address, d, max_bytes) for d in slow])
        sent = tricklers.join()
    finally:
        resume(pacers)
        summaries = workers.join() if workers is not None else []
        server.stop()

    assert all(0 < n < max_bytes for n in sent), sent   # cut mid-frame
    # Closed at the frame deadline, which the one log line names (a byte every
    # 50 ms never leaves a connection idle for 10 s).
    cut = [r.getMessage() for r in caplog.records
           if "action: deadline | result: closed" in r.getMessage()]
    assert all("| deadline: frame |" in line for line in cut), cut
    assert len(cut) == len(slow), cut
    assert [(s.retries, s.reconnects) for s in summaries] == [(0, 0)] * len(healthy)
    expected = collections.Counter()
    for i, folder in enumerate(healthy):
        expected.update(with_agency(references[folder], 400 + i))
    assert collections.Counter(server.sink.durable) == expected   # nothing of the slow ones


# == c) garbage and random bytes =====================================================

def _garbage(rng: random.Random) -> List[Tuple[str, bytes, int]]:
    """(name, bytes, whole valid batches they start with) for each hostile connection."""
    header = lambda op, n: struct.pack("<Bi", op, n)  # noqa: E731
    valid = [numbered_batch(n) for n in (8001, 8002, 8003, 8004)]
    dbatch = DataBatch(table_ids=[4], query_ids=[2], batch_bytes=numbered_batch(8100)).to_bytes()
    cases = [
        ("1 random byte", rng.randbytes(1), 0),
        ("random 7", rng.randbytes(7), 0),
        ("random 4 KiB", rng.randbytes(4096), 0),
        ("random 200 KiB", rng.randbytes(200_000), 0),
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 0),
        ("TLS hello", bytes.fromhex("160301020001") + rng.randbytes(512), 0),
        ("unknown opcode", header(77, 10) + rng.randbytes(10), 0),
        ("negative length", header(Opcodes.NEW_USERS, -5), 0),
        ("over-limit length",
         header(Opcodes.NEW_TRANSACTION, (1 << 31) - 1) + rng.randbytes(64), 0),
        ("table header, random body", header(Opcodes.NEW_TRANSACTION, 600) + rng.randbytes(900), 0),
        ("DataBatch from a client", dbatch * 3, 0),
        ("valid, then random", valid[0] + valid[1] + rng.randbytes(3000), 2),
        ("valid, then half a frame", valid[2] + valid[3][:len(valid[3]) // 2], 1),
        ("valid, then over-limit", valid[3] + header(Opcodes.NEW_STORES, 1 << 30), 1),
    ]
    return cases


def _hostile(address, data: bytes) -> bytes:
    """Send ``data``, half-close, return what the orchestrator answered until it closed."""
    with Wire(address) as wire:
        try:
            wire.send(data)
            wire.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # Closed on us mid-send (reset, broken pipe, or already gone when
            # we half-close): its answer is what it sent before.
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        return wire.read_until_closed()


def test_garbage_ends_only_its_connections_healthy_clients_store_every_row(
        datasets, references):
    server = Server(MemorySink())
    healthy = datasets
    clients, pacers = healthy_clients(server.address, healthy, 500, pause_at=5)
    cases = _garbage(random.Random(20240601))
    workers = None
    try:
        workers = Workers([lambda c=c, f=f: c.send_folder(f) for c, f in zip(clients, healthy)])
        wait_paused(pacers)
        # Each hostile connection twice, all at once, while the healthy ones have batches in flight.
        answers = Workers([lambda d=d: _hostile(server.address, d)
                           for _, d, _ in cases for _ in range(2)]).join()
    finally:
        resume(pacers)
        summaries = workers.join() if workers is not None else []
        server.stop()

    for (name, _, n_valid), answer in zip([c for c in cases for _ in range(2)], answers):
        assert answer[:5 * n_valid] == SUCCESS * n_valid, name
        rest = answer[5 * n_valid:]
        assert rest == FAIL * (len(rest) // 5), f"{name}: {rest!r}"   # failed, never stored
    assert [(s.retries, s.reconnects) for s in summaries] == [(0, 0)] * len(healthy)

    valid = reference_for_raw([numbered_batch(n) for n in (8001, 8002, 8003, 8004)])
    expected = collections.Counter()
    for i, folder in enumerate(healthy):
        expected.update(with_agency(references[folder], 500 + i))
    for frame_ in valid:   # the whole batches before the garbage, each case run twice
        expected[frame_] += 2
    assert collections.Counter(server.sink.durable) == expected


# == d) the disk fills up ============================================================

class DiskFullOs:
    """``os`` for ``fastframe.sinks.file`` whose ``write`` fails with ENOSPC while ``full``
    is set: of each frame, the first half still goes to the disk (a short write),
    then the rest fails, as on a disk that runs out mid-frame."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self.writes = 0
        self.enospc = 0
        self._short = False

    def write(self, fd: int, data) -> int:
        self.writes += 1
        if self.full.is_set():
            if not self._short and len(data) > 1:
                self._short = True
                return os.write(fd, data[:len(data) // 2])
            self._short = False
            self.enospc += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._short = False
        return os.write(fd, data)

    def __getattr__(self, name: str):
        return getattr(os, name)


def test_disk_full_fails_batches_clients_retry_and_every_acked_batch_is_stored(
        tmp_path, monkeypatch, datasets, references):
    disk = DiskFullOs()
    monkeypatch.setattr(file_module, "os", disk)
    sink_path = tmp_path / "sink.bin"
    server = Server(FileSink(sink_path, fsync="always"))
    healthy = datasets[:4]
    clients, pacers = healthy_clients(server.address, healthy, 600, pause_at=5,
                                      max_retries=20)
    stop = threading.Event()
    tracked: Dict[int, bytes] = {}   # batch number -> the ACK it got (sent once each)

    def tracker():
        with Wire(server.address) as wire:
            for n in range(10_001, 10_001 + 5000):
                if stop.is_set():
                    return
                wire.send(numbered_batch(n))
                tracked[n] = wire.ack()

    workers = track = None
    try:
        workers = Workers([lambda c=c, f=f: c.send_folder(f) for c, f in zip(clients, healthy)])
        track = Workers([tracker])
        wait_paused(pacers)
        wait_for(lambda: len(tracked) >= 5, "the tracker to get going")
        disk.full.set()
        resume(pacers)
        # Full until every client had a batch failed and retried, and the tracker some FAILs.
        wait_for(lambda: all(c.summary.retries >= 1 for c in clients)
                 and list(tracked.values()).count(FAIL) >= 3, "the full disk to be felt")
        disk.full.clear()
        wait_for(lambda: tracked and tracked[max(tracked)] == SUCCESS
                 and list(tracked.values()).count(SUCCESS) > 10, "the tracker to recover")
    finally:
        disk.full.clear()
        resume(pacers)
        summaries = workers.join() if workers is not None else []
        stop.set()
        if track is not None:
            track.join()
        server.stop()

    assert disk.enospc >= 1
    assert all(s.retries >= 1 and s.reconnects == 0 for s in summaries)
    frames = sink_frames(sink_path)   # no partial frame: every one whole and decodable
    succeeded = sorted(n for n, ack in tracked.items() if ack == SUCCESS)
    assert len(succeeded) < len(tracked)   # both outcomes happened
    tracker_frames = [f for f in frames if decode_frame(f).batch_number > 10_000]
    # Every batch ACKed SUCCESS is stored, once; none that got FAIL.
    assert [decode_frame(f).batch_number for f in tracker_frames] == succeeded
    assert tracker_frames == reference_for_raw([numbered_batch(n) for n in succeeded])
    # The clients' batches: each exactly once (a failed write was rolled back whole).
    expected = collections.Counter()
    for i, folder in enumerate(healthy):
        expected.update(with_agency(references[folder], 600 + i))
    assert collections.Counter(f for f in frames if decode_frame(f).batch_number <= 10_000) \
        == expected


# == e) RabbitMQ stopped and restarted mid-run =======================================

def _port_of(url: str) -> Tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def _watch_broker_down(address: Tuple[str, int], down: threading.Event,
                       stop: threading.Event) -> None:
    """Set ``down`` once the broker's AMQP port refuses connections."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=1.0).close()
        except OSError:
            down.set()
            return
        time.sleep(0.02)


def _run_through_broker_outage(tmp_path, rabbitmq_url, exchange, caplog,
                               outage: Callable[[Client], None]):
    """Stream a data set through the real ``RabbitMQSink`` while ``outage`` takes the
    broker away and back, then read every queue and check it.

    The client waits at its 150th ACK until the broker's AMQP port refuses
    connections, so it streams into the outage whatever the timing; a raw
    tracker sends menu batches one at a time meanwhile, each resent until
    SUCCESS, recording every ACK. Delivery is at-least-once: FAILed batches may
    be queued too, and resent ones twice.
    """
    caplog.set_level(logging.INFO, logger="fastframe.orchestrator")

    folder = tmp_path / "data"
    generate(folder, transactions=2000, seed=77)
    options = {"batch_rows": 10}
    refs = with_agency(reference_frames(folder, 0, **options), 77)

    server = Server(RabbitMQSink(rabbitmq_url, exchange=exchange, retry_delay=0.1))
    pacer = Paced(pause_at=150)
    # Long socket timeouts: a sink reconnecting to a booting broker may hold a group a while.
    client = Client(server.address, 77, window=4, max_retries=12, backoff=0.05,
                    timeout=JOIN_TIMEOUT, progress=pacer, **options)
    down, stop = threading.Event(), threading.Event()
    tracked: Dict[int, List[bytes]] = collections.defaultdict(list)   # number -> its ACKs

    def tracker():
        """Menu batches one at a time, each resent until SUCCESS, every ACK recorded."""
        with Wire(server.address) as wire:
            wire.sock.settimeout(JOIN_TIMEOUT)
            for n in range(20_001, 20_001 + 100_000):
                for _ in range(200):
                    wire.send(numbered_batch(n))
                    ack = wire.ack()
                    tracked[n].append(ack)
                    if ack == SUCCESS:
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError(f"batch {n} failed 200 times")
                if stop.is_set():
                    return

    def released_when_down():
        _watch_broker_down(_port_of(rabbitmq_url), down, stop)
        pacer.resume.set()   # the client goes on into the outage

    workers = summary = None
    try:
        workers = Workers([lambda: client.send_folder(folder), tracker, released_when_down])
        wait_for(lambda: pacer.acks >= 20, "the client to get going")
        outage(client)
        assert down.is_set(), "the broker never went down"
        wait_for(lambda: workers.results[0] is not None or workers.errors, "the client to finish")
    finally:
        stop.set()
        pacer.resume.set()
        if workers is not None:
            summary = workers.join()[0]
        server.stop()

    assert summary.retries >= 1, "the client never met the outage"
    # Groups failed while the broker was away, and only those: none after it was
    # back for the sake of a write that had failed before.
    failed = [r.getMessage() for r in caplog.records
              if "sink_write | result: fail" in r.getMessage()]
    assert failed and not [m for m in failed if "since the last flush" in m], failed
    queues = {q: read_queue(rabbitmq_url, q, exchange=exchange) for q in QUERY_IDS}

    # Every batch the orchestrator ACKed SUCCESS is in the queue of each of its query ids.
    # The client finished, so each of its frames got a SUCCESS; so did the tracker's last tries.
    acked = reference_for_raw([numbered_batch(n) for n in sorted(tracked)])
    assert all(acks[-1] == SUCCESS for acks in tracked.values())
    for frame_ in refs + acked:
        db = decode_frame(frame_)
        for q in db.query_ids:
            assert frame_ in queues[q], f"ACKed batch {db.batch_number} missing from query {q}"
    # Nothing else: each queued frame is one of those (whole, at least once, maybe twice).
    for q, frames in queues.items():
        allowed = {f for f in refs + acked if q in decode_frame(f).query_ids}
        assert set(frames) <= allowed, f"query {q}: a frame nobody sent"

    # Each table's rows reach the queue of each of its query ids, at least once.
    expected = as_multisets(expected_rows(folder))
    for spec in TABLES:
        for q in spec.query_ids:
            in_queue = as_multisets(stored_rows(
                db for db in decode(queues[q]) if db.batch_number < 20_001))
            row_counts_at_least({spec.name: in_queue[spec.name]}, {spec.name: expected[spec.name]})
    for q in QUERY_IDS:
        assert Finished(77) in [decode_frame(f).batch_msg for f in queues[q]]
    return summary, tracked


@pytest.mark.rabbitmq
def test_rabbitmq_stopped_and_restarted_mid_run_every_acked_batch_is_queued(
        tmp_path, rabbitmq_url, amqp_exchange, caplog):
    def outage(client: Client) -> None:
        try:
            broker_stop()
            # Down until the client had a batch refused: the outage hit the stream.
            wait_for(lambda: client.summary.retries >= 1, "the client to meet the outage")
        finally:
            broker_start()

    _run_through_broker_outage(tmp_path, rabbitmq_url, amqp_exchange, caplog, outage)


@pytest.mark.rabbitmq
def test_rabbitmq_killed_and_restarted_mid_run_every_acked_batch_is_queued(
        tmp_path, rabbitmq_url, amqp_exchange, caplog):
    _run_through_broker_outage(tmp_path, rabbitmq_url, amqp_exchange, caplog,
                               lambda client: broker_crash_restart())


# == f) the orchestrator killed and restarted ========================================

def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP") or not Path("/proc/self/stat").exists(),
                    reason="pauses the orchestrator with SIGSTOP and reads its state in /proc")
def test_orchestrator_killed_and_restarted_resent_batches_are_identical_duplicates(
        tmp_path):
    # Two agencies, different data, streaming at once through `fastframe serve`.
    folders = []
    for seed in (11, 12):
        folder = tmp_path / f"agency{seed}"
        generate(folder, transactions=2000, seed=seed)
        folders.append(folder)
    options = {"batch_rows": 10}
    agencies = (1, 2)
    refs = {a: with_agency(reference_frames(f, 0, **options), a)
            for a, f in zip(agencies, folders)}

    port = free_port()
    sink_path = tmp_path / "sink.bin"
    serve = fastframe_command("serve", "--port", str(port), "--sink", f"file:{sink_path}",
                              "--fsync", "always")

    def start(log_name: str) -> Tuple[subprocess.Popen, Path]:
        log = tmp_path / log_name
        with open(log, "wb") as f:
            proc = subprocess.Popen(serve, stdout=f, stderr=subprocess.STDOUT,
                                    env=subprocess_env())
        wait_for_log(log, "action: listen | result: success")
        return proc, log

    pacers = [Paced() for _ in agencies]
    clients = [Client(("127.0.0.1", port), a, window=4, connect_attempts=50, backoff=0.1,
                      timeout=SOCKET_TIMEOUT, progress=p, **options)
               for a, p in zip(agencies, pacers)]
    finished = {f for r in refs.values() for f in r if isinstance(decode_frame(f).batch_msg,
                                                                  Finished)}
    first = second = workers = None
    try:
        first, _ = start("serve1.log")
        workers = Workers([lambda c=c, f=f: c.send_folder(f) for c, f in zip(clients, folders)])
        wait_for(lambda: all(p.acks >= 20 for p in pacers), "both agencies to get going")

        # Kill it at a moment the sink holds a batch whose ACK its client has not
        # got: SIGSTOP, let the clients read every ACK already sent, compare.
        unacked = 0
        for _ in range(100):
            os.kill(first.pid, signal.SIGSTOP)
            wait_for(lambda: _process_state(first.pid) == "T", "the orchestrator to stop")
            seen = None
            while seen != [p.acks for p in pacers]:
                seen = [p.acks for p in pacers]
                time.sleep(0.05)
            stored, _ = whole_frames(sink_path)
            unacked = sum(1 for f in stored if f not in finished) - sum(seen)
            if unacked > 0:
                break
            os.kill(first.pid, signal.SIGCONT)
            time.sleep(0.005)
        first.kill()
        assert first.wait(SUBPROCESS_TIMEOUT) == -signal.SIGKILL
        assert unacked > 0, "never caught the sink holding a batch not yet ACKed"
        assert all(w.is_alive() for w in workers.threads), "an agency finished before the kill"

        # A kill inside os.write leaves a torn frame; when this one did not, leave
        # the tail such a kill leaves, so the cut on restart is tested every time.
        stored, torn = whole_frames(sink_path)
        if not torn:
            tail = refs[1][len(refs[1]) // 2]
            torn = len(tail) // 2
            with open(sink_path, "ab") as f:
                f.write(tail[:torn])
        # Read back, the tail is reported as torn (TornFrameError), not read as a frame.
        assert whole_frames(sink_path) == (stored, torn)

        second, log = start("serve2.log")
        assert f"result: torn_tail_cut | path: {sink_path} | cut_bytes: {torn} |" in log.read_text()
        summaries = workers.join()
        second.send_signal(signal.SIGTERM)
        assert second.wait(SUBPROCESS_TIMEOUT) == 0
    finally:
        for pacer in pacers:
            pacer.resume.set()
        for proc in (first, second):
            if proc is not None:
                stop_process(proc)
        if workers is not None:
            for t in workers.threads:
                t.join(JOIN_TIMEOUT)

    assert all(s.reconnects >= 1 for s in summaries)
    frames = sink_frames(sink_path)   # the torn tail is gone, never read as a frame
    sink = collections.Counter(frames)
    sent = collections.Counter()
    for r in refs.values():
        sent.update(r)
    # Every batch of both agencies is there (so every one ACKed before the kill too) ...
    assert not sent - sink, "a batch is missing"
    # ... and nothing else: every frame is one of theirs, byte for byte.
    assert set(sink) == set(sent)
    # The extra copies are resends of batches stored but not ACKed when it died.
    duplicates = sink - sent
    assert sum(duplicates.values()) >= unacked

    # (table, batch number) names one batch of one agency: a resend has the same
    # bytes, so (table, batch number, bytes) groups the copies of each batch, and
    # the two agencies' different batches stay apart.
    def key(frame_: bytes) -> Tuple[str, str, int]:
        msg = decode_frame(frame_).batch_msg
        if isinstance(msg, Finished):
            return ("", "finished", msg.agency_id)
        if isinstance(msg, EOFMessage):
            return (msg.table_type, "eof", msg.batch_number)
        return (msg.table.name, "batch", msg.batch_number)

    keys = {f: key(f) for f in set(frames) | set(sent)}
    ref_sets = {a: set(r) for a, r in refs.items()}
    owners = {f: [a for a, r in ref_sets.items() if f in r] for f in sent}
    for agency, r in refs.items():
        assert len({keys[f] for f in r}) == len(r), f"agency {agency}: a key names two batches"
    groups = collections.Counter((keys[f], f) for f in frames)
    for (k, frame_), count in groups.items():
        assert owners.get(frame_), f"{k}: not a batch of either agency"
        assert count >= len(owners[frame_])   # once per agency that sent it, plus resends
    found, wanted = collections.defaultdict(set), collections.defaultdict(set)
    for k, frame_ in groups:
        found[k].add(frame_)
    for frame_ in sent:
        wanted[keys[frame_]].add(frame_)
    assert found == wanted   # per key, exactly the agencies' batches: no third variant
    # Transactions differ between the data sets: the same key, two different batches.
    assert any(len(v) == 2 for v in found.values())

    # Every CSV row of both agencies at least once.
    expected = {spec.name: collections.Counter() for spec in TABLES}
    for folder in folders:
        for table, rows in as_multisets(expected_rows(folder)).items():
            expected[table].update(rows)
    row_counts_at_least(as_multisets(stored_rows(decode(frames))), expected)


# == g) loopback by default ==========================================================

def _other_local_addresses() -> List[str]:
    """This machine's IPv4 addresses that are not loopback (maybe none)."""
    found = set()
    try:
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))   # a route lookup: a UDP connect sends nothing
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127.") and a != "0.0.0.0")


def _listening_addresses(port: int) -> Optional[List[str]]:
    """The addresses sockets listen on at ``port`` per /proc/net/tcp{,6} (None elsewhere)."""
    found = []
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{name}")
        if not path.exists():
            return None
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:   # 0A: LISTEN
                if name == "tcp":
                    found.append(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
                else:
                    found.append(address)
    return found


def _assert_loopback_only(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT).close()
    for address in _other_local_addresses():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=SOCKET_TIMEOUT).close()
    listening = _listening_addresses(port)
    if listening is not None:
        assert listening == ["127.0.0.1"]


def test_orchestrator_binds_loopback_by_default():
    orchestrator = Orchestrator(MemorySink(), port=0)
    try:
        assert orchestrator.address[0] == "127.0.0.1"
        _assert_loopback_only(orchestrator.address[1])
    finally:
        orchestrator.shutdown()


@pytest.mark.skipif(sys.platform == "win32",
                    reason="Windows cannot deliver SIGTERM to a process as a signal")
def test_fastframe_serve_listens_on_loopback_only_without_host(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            fastframe_command("serve", "--port", str(port), "--sink",
                              f"file:{tmp_path / 'sink.bin'}"),
            stdout=f, stderr=subprocess.STDOUT, env=subprocess_env())
    try:
        text = wait_for_log(log, "action: listen | result: success")
        assert f"address: 127.0.0.1:{port}" in text
        _assert_loopback_only(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(SUBPROCESS_TIMEOUT) == 0
    finally:
        stop_process(proc)
