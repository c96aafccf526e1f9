"""FINISHED that cannot be lost: the orchestrator answers it, the client waits for that answer.

fastframe's extension of PROTOCOL.md §7: the orchestrator answers FINISHED
with BATCH_RECV_SUCCESS once its sink has stored it (FAIL if it could not),
then closes; with ``compat`` it answers nothing, as the original. The client
counts FINISHED as stored only on SUCCESS: a connection that ends with no
answer leaves the outcome unknown and FINISHED is sent again;
``finished_ack=False`` (``send --no-finished-ack``) is the old reading.
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import fastframe
import fastframe.client as client_module
from fastframe import codec
from fastframe.client import Client, ClientError
from fastframe.messages import Finished, decode_frame
from fastframe.orchestrator import Orchestrator
from fastframe.schema import FRAME_HEADER_SIZE, Opcodes
from fastframe.sinks.file import FileSink, read_frames
from helpers_system import (
    TIMEOUT, FakeConnection, FakeServer, Handler, ack_all, running, write_dataset,
)

AGENCY_ID = 7
SUCCESS = bytes([Opcodes.BATCH_RECV_SUCCESS, 0, 0, 0, 0])


def make_client(address: Tuple[str, int], **options: Any) -> Client:
    settings: Dict[str, Any] = dict(batch_rows=5, window=2, backoff=0.001, timeout=TIMEOUT)
    settings.update(options)
    return Client(address, AGENCY_ID, **settings)


def finished_frames(server: FakeServer) -> List[bytes]:
    return [g.frame for g in server.frames if g.opcode == Opcodes.FINISHED]


def sink_finished(path: Path) -> List[bytes]:
    """The DataBatch frames in the file sink that carry FINISHED."""
    return [bytes(f) for f in read_frames(path) if isinstance(decode_frame(f).batch_msg, Finished)]


def record_sleeps(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """Record the client's sleeps instead of sleeping."""
    sleeps: List[float] = []
    monkeypatch.setattr(client_module, "time", types.SimpleNamespace(
        sleep=sleeps.append, perf_counter=time.perf_counter))
    return sleeps


def answer_until_closed(address: Tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the orchestrator answers until it closes."""
    answer = b""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(data)
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return answer
            answer += chunk


def batches_then(finished_answer: Callable[[FakeConnection], None]) -> Handler:
    """A fake handler: ACK every batch and EOF; on FINISHED call ``finished_answer(conn)``."""
    def handler(conn: FakeConnection) -> None:
        while True:
            got = conn.read()
            if got is None:
                return
            if got.opcode == Opcodes.FINISHED:
                finished_answer(conn)
                return
            conn.ack()
    return handler


def close_silently(conn: FakeConnection) -> None:
    """End the connection after FINISHED with no answer, as the original orchestrator."""


def reset(conn: FakeConnection) -> None:
    """End the connection after FINISHED with a TCP reset instead of an answer."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- against a fake server ------------------------------------------------------------

@pytest.mark.parametrize("silence", [close_silently, reset], ids=["closed", "reset"])
def test_finished_without_an_answer_is_sent_again_on_a_new_connection(
        tmp_path: Path, silence: Callable[[FakeConnection], None]) -> None:
    write_dataset(tmp_path, {"users": [12]}, skipped=False)

    def handler(conn: FakeConnection) -> None:
        if conn.index == 0:
            batches_then(silence)(conn)
        else:
            ack_all(conn)

    with FakeServer(handler) as server:
        summary = make_client(server.address).send_folder(tmp_path)
    sent = finished_frames(server)
    assert len(sent) == 2 and sent[0] == sent[1] == codec.encode_finished_frame(AGENCY_ID)
    # The second connection carries FINISHED only: every batch was ACKed on the first.
    assert [g.opcode for g in server.frames if g.conn == 1] == [Opcodes.FINISHED]
    assert server.connections == 2 and summary.reconnects == 1 and summary.retries == 0
    assert summary.rows == {"users": 12}


def test_finished_never_answered_is_an_error_after_the_connect_attempts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path, {"users": [3]}, skipped=False)
    sleeps = record_sleeps(monkeypatch)
    with FakeServer(batches_then(close_silently)) as server:
        with pytest.raises(ClientError) as info:
            make_client(server.address, connect_attempts=4, backoff=0.5).send_folder(tmp_path)
    message = str(info.value)
    assert f"FINISHED of agency {AGENCY_ID}: outcome unknown" in message
    assert "without answering FINISHED" in message
    assert len(finished_frames(server)) == 4 and server.connections == 4
    assert sleeps == [0.5, 1.0, 2.0]   # backing off between the attempts


def test_finished_failed_is_resent_until_it_succeeds(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"users": [3]}, skipped=False)

    def handler(conn: FakeConnection) -> None:
        batches_then(lambda c: c.ack(conn.index >= 2))(conn)

    with FakeServer(handler) as server:
        summary = make_client(server.address, max_retries=3).send_folder(tmp_path)
    assert len(finished_frames(server)) == 3 and summary.retries == 2


@pytest.mark.parametrize("max_retries", [0, 2])
def test_finished_failed_too_often_is_an_error(tmp_path: Path, max_retries: int) -> None:
    write_dataset(tmp_path, {"users": [3]}, skipped=False)
    with FakeServer(batches_then(lambda c: c.ack(False))) as server:
        with pytest.raises(ClientError, match=f"rejected by the orchestrator {max_retries + 1} "):
            make_client(server.address, max_retries=max_retries).send_folder(tmp_path)
    assert len(finished_frames(server)) == max_retries + 1


def test_without_finished_ack_a_close_counts_as_stored(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"users": [3]}, skipped=False)
    with FakeServer(batches_then(close_silently)) as server:
        summary = make_client(server.address, finished_ack=False).send_folder(tmp_path)
    assert len(finished_frames(server)) == 1 and server.connections == 1
    assert summary.reconnects == 0 and summary.rows == {"users": 3}


def test_without_finished_ack_a_reset_is_still_resent(tmp_path: Path) -> None:
    write_dataset(tmp_path, {"users": [3]}, skipped=False)

    def handler(conn: FakeConnection) -> None:
        batches_then(reset if conn.index == 0 else close_silently)(conn)

    with FakeServer(handler) as server:
        make_client(server.address, finished_ack=False).send_folder(tmp_path)
    assert len(finished_frames(server)) == 2


# -- against the real orchestrator ------------------------------------------------------

@pytest.mark.parametrize("compat", [False, True], ids=["default", "compat"])
def test_orchestrator_answers_finished_only_outside_compat(tmp_path: Path, compat: bool) -> None:
    server = Orchestrator(FileSink(tmp_path / "sink.bin", fsync="never"), "127.0.0.1", 0,
                          compat=compat)
    with running(server):
        answer = answer_until_closed(server.address, codec.encode_finished_frame(AGENCY_ID))
    assert answer == (b"" if compat else SUCCESS)
    assert len(sink_finished(tmp_path / "sink.bin")) == 1


@pytest.mark.parametrize("compat", [False, True], ids=["default", "compat"])
def test_go_client_capture_replayed_gets_one_more_ack_outside_compat(
        tmp_path: Path, conformance_dir: Path, compat: bool) -> None:
    """The original Go client's stream: its recorded answers, plus SUCCESS for FINISHED."""
    c2s = (conformance_dir / "sample_c2s.bin").read_bytes()
    s2c = (conformance_dir / "sample_s2c.bin").read_bytes()
    server = Orchestrator(FileSink(tmp_path / "sink.bin", fsync="never"), "127.0.0.1", 0,
                          compat=compat)
    with running(server):
        answer = answer_until_closed(server.address, c2s)
    assert answer == (s2c if compat else s2c + SUCCESS)


def test_client_with_finished_ack_cannot_finish_against_a_compat_server(tmp_path: Path) -> None:
    """Why ``--no-finished-ack`` exists: a silent close is never taken for stored."""
    write_dataset(tmp_path / "data", {"users": [3]}, skipped=False)
    sink = tmp_path / "sink.bin"
    server = Orchestrator(FileSink(sink, fsync="never"), "127.0.0.1", 0, compat=True)
    with running(server):
        with pytest.raises(ClientError, match="outcome unknown"):
            make_client(server.address, connect_attempts=3).send_folder(tmp_path / "data")
        summary = make_client(server.address, finished_ack=False).send_folder(tmp_path / "data")
    assert summary.reconnects == 0
    stored = sink_finished(sink)
    assert len(stored) == 4 and len(set(stored)) == 1   # duplicates are byte-identical


# -- a proxy that swallows FINISHED ------------------------------------------------------

class FinishedEater:
    """A loopback proxy in front of ``upstream`` that loses FINISHED on its first ``times``
    connections and closes the client's connection gracefully (FIN, no answer).

    ``where="request"``: FINISHED never reaches the orchestrator. ``where="answer"``:
    it does, and the orchestrator's answer is dropped. Everything else goes through.
    """

    def __init__(self, upstream: Tuple[str, int], where: str, times: int = 1) -> None:
        self.upstream = upstream
        self.where = where
        self.times = times
        self.eaten = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: Tuple[str, int] = self._listener.getsockname()[:2]
        self._threads: List[threading.Thread] = []
        self._socks: List[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "FinishedEater":
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(TIMEOUT)
        for sock in self._socks:
            sock.close()
        assert not any(t.is_alive() for t in self._threads), "proxy threads still running"

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=TIMEOUT)
            client.settimeout(TIMEOUT)
            self._socks += [client, server]
            with self._lock:
                eat = self.eaten < self.times
                self.eaten += eat
            muted = threading.Event()
            self._spawn(self._requests, client, server, eat, muted)
            self._spawn(self._answers, server, client, muted)

    def _requests(self, client: socket.socket, server: socket.socket, eat: bool,
                  muted: threading.Event) -> None:
        """Client to orchestrator, frame by frame, so FINISHED is seen whole."""
        for frame in _frames(client):
            if eat and frame[0] == Opcodes.FINISHED:
                if self.where == "request":
                    server.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        client.shutdown(socket.SHUT_WR)   # a clean close, nothing said
                    return
                muted.set()   # every earlier ACK is through: the client drained them
            server.sendall(frame)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _answers(self, server: socket.socket, client: socket.socket,
                 muted: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = server.recv(65536)
                if not data:
                    break
                if not muted.is_set():
                    client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)


def _recv_exactly(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def _frames(sock: socket.socket) -> Iterator[bytes]:
    while True:
        header = _recv_exactly(sock, FRAME_HEADER_SIZE)
        if header is None:
            return
        length = int.from_bytes(header[1:], "little")
        body = _recv_exactly(sock, length) if length else b""
        if body is None:
            return
        yield header + body


def _subprocess_env() -> Dict[str, str]:
    """``python -m fastframe`` runs this fastframe and this codec."""
    package_root = str(Path(fastframe.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=package_root + (os.pathsep + path if path else ""))


def _send(folder: Path, address: Tuple[str, int],
          *options: str) -> "subprocess.CompletedProcess[str]":
    command = [sys.executable, "-m", "fastframe", "send", str(folder), "--server",
               f"{address[0]}:{address[1]}", "--agency-id", str(AGENCY_ID), *options]
    return subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("where", ["request", "answer"])
def test_send_exits_0_only_once_finished_is_in_the_sink(tmp_path: Path, where: str) -> None:
    write_dataset(tmp_path / "data", {"users": [30], "stores": [4]}, skipped=False)
    sink = tmp_path / "sink.bin"
    server = Orchestrator(FileSink(sink, fsync="never"), "127.0.0.1", 0)
    with running(server), FinishedEater(server.address, where) as proxy:
        done = _send(tmp_path / "data", proxy.address)
        assert done.returncode == 0, done.stderr
        stored = sink_finished(sink)   # read before the sink closes: there at exit 0
    assert proxy.eaten == 1
    assert "1 reconnects" in done.stdout
    # Eaten on the way in: stored once; eaten on the way out: stored twice, identical.
    assert len(stored) == (1 if where == "request" else 2) and len(set(stored)) == 1
    assert decode_frame(stored[0]).batch_msg == Finished(AGENCY_ID)


def test_client_never_succeeds_while_finished_is_always_eaten(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", {"users": [3]}, skipped=False)
    sink = tmp_path / "sink.bin"
    server = Orchestrator(FileSink(sink, fsync="never"), "127.0.0.1", 0)
    with running(server), FinishedEater(server.address, "request", times=1000) as proxy:
        with pytest.raises(ClientError, match="outcome unknown"):
            make_client(proxy.address, connect_attempts=3).send_folder(tmp_path / "data")
    assert proxy.eaten == 3 and sink_finished(sink) == []


def test_no_finished_ack_cannot_tell_an_eaten_finished(tmp_path: Path) -> None:
    """What ``--no-finished-ack`` gives up: a lost FINISHED looks like a stored one."""
    write_dataset(tmp_path / "data", {"users": [3]}, skipped=False)
    sink = tmp_path / "sink.bin"
    server = Orchestrator(FileSink(sink, fsync="never"), "127.0.0.1", 0)
    with running(server), FinishedEater(server.address, "request") as proxy:
        done = _send(tmp_path / "data", proxy.address, "--no-finished-ack")
    assert done.returncode == 0, done.stderr
    assert sink_finished(sink) == []


def test_send_no_finished_ack_against_a_compat_server(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", {"users": [30], "stores": [4]}, skipped=False)
    sink = tmp_path / "sink.bin"
    server = Orchestrator(FileSink(sink, fsync="never"), "127.0.0.1", 0, compat=True)
    with running(server):
        done = _send(tmp_path / "data", server.address, "--no-finished-ack")
    assert done.returncode == 0, done.stderr
    assert "0 retries, 0 reconnects" in done.stdout
    assert [decode_frame(f).batch_msg for f in sink_finished(sink)] == [Finished(AGENCY_ID)]
