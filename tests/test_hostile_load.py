"""The orchestrator under hostile and massive load (issue 9's targets).

Each attack runs against ``fastframe serve`` as a subprocess (its own
process, as in production: the attack costs it, not this test's client),
on loopback, bounded in count and time. The measure of harm is a healthy
agency: ``Client.send_folder`` of a small generated data set, timed with no
attack and under attack in the same test, alternating, the medians
compared (see ``typical``). No assertion is about raw speed, only that ratio; memory is read
from ``/proc/PID/status`` (Linux; skipped elsewhere).
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

import fastframe
from fastframe.client import Client
from fastframe.datagen import generate
from fastframe.schema import FRAME_HEADER_SIZE, MAX_BATCH_FRAME, Opcodes
from helpers_system import free_port
from test_faults import fastframe_command, stop_process, subprocess_env
from test_orchestrator import (
    FAIL, MENU, SOCKET_TIMEOUT, sized_batch, wait_for,
)

resource = pytest.importorskip("resource", reason="POSIX resource limits (not on Windows)")
pytestmark = [pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                 reason="reads memory and descriptors from /proc (Linux)"),
              pytest.mark.alone]

MAX_SLOWDOWN = 1.5       # the healthy send under attack, against its baseline
MAX_STALL = 5.0          # any one send under attack, against the baseline: no stall
                         # hides in the typical figure (a stall was 20x and more)
ROUNDS = 4               # baseline and attack alternate this many times ...
RUNS_PER_ROUND = 2       # ... each timing this many sends
CLAIMED = MAX_BATCH_FRAME - FRAME_HEADER_SIZE   # a header claiming a whole 1 MiB frame
MIB = 2**20


@pytest.fixture(scope="module")
def healthy_data(tmp_path_factory) -> Path:
    """A send of 0.15 to 0.5 s here with either codec: long enough that a
    scheduling hiccup on a busy 2-core CI machine (tens of ms) cannot pass
    for a 1.5x slowdown."""
    folder = tmp_path_factory.mktemp("hostile") / "data"
    generate(folder, transactions=200_000 if fastframe.__impl__ == "c" else 40_000, seed=9)
    return folder


# -- the server process ----------------------------------------------------------------

def _status(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class ServeProcess:
    """``fastframe serve`` on a free loopback port, its log in a file."""

    def __init__(self, tmp: Path, *options: str,
                 preexec: Optional[Callable[[], None]] = None, loop: str = "") -> None:
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.sink = tmp / "sink.bin"
        self.log = tmp / "serve.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                fastframe_command("serve", "--port", str(self.port), "--sink", f"file:{self.sink}",
                                  "--fsync", "never", *options),
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
                env=dict(subprocess_env(), FASTFRAME_EVENT_LOOP=loop) if loop else subprocess_env())
        wait_for(lambda: "action: listen | result: success" in self.log_text()
                 or self.proc.poll() is not None, "fastframe serve to listen")
        assert self.proc.poll() is None, self.log_text()
        self.idle_fds = self.open_fds()   # listening, no connection yet

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def rss(self) -> int:
        return _status(self.proc.pid, "VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def wait_until_idle(self) -> None:
        """Every connection so far closed on the server's side, and its heap trimmed
        (0.1 s after the last one goes)."""
        wait_for(lambda: self.open_fds() <= self.idle_fds, "the server to close every connection")
        time.sleep(0.5)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM; it must exit 0 having logged no traceback."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.log_text()[-2000:]
        assert "Traceback" not in self.log_text()

    def kill(self) -> None:
        stop_process(self.proc)


@contextlib.contextmanager
def serving(tmp: Path, *options: str, preexec=None, loop: str = "") -> Iterator[ServeProcess]:
    server = ServeProcess(tmp, *options, preexec=preexec, loop=loop)
    try:
        yield server
    finally:
        server.kill()


def healthy_send(server: ServeProcess, folder: Path, agency_id: int = 1) -> float:
    # Each send starts on an empty sink (it appends, O_APPEND): about 100 MiB a
    # send would otherwise pile up dirty pages whose writeback slows the later
    # sends, and a later send is more often an attacked one.
    os.truncate(server.sink, 0)
    summary = Client(server.address, agency_id, timeout=SOCKET_TIMEOUT).send_folder(folder)
    assert summary.retries == 0
    return summary.seconds


def compare(server: ServeProcess, folder: Path, attack_on: Callable[[], None],
            attack_off: Callable[[], None]) -> float:
    """The typical healthy send under attack over the typical one without, alternating
    rounds; asserts first that no send under attack stalled (``MAX_STALL``)."""
    healthy_send(server, folder)   # warm both sides up
    baseline: List[float] = []
    attacked: List[float] = []
    for _ in range(ROUNDS):
        baseline += [healthy_send(server, folder) for _ in range(RUNS_PER_ROUND)]
        attack_on()
        try:
            attacked += [healthy_send(server, folder) for _ in range(RUNS_PER_ROUND)]
        finally:
            attack_off()
    assert max(attacked) <= MAX_STALL * typical(baseline), (attacked, baseline)
    return typical(attacked) / typical(baseline)


def typical(seconds: List[float]) -> float:
    """The median of the faster half of the runs.

    Other work on the machine only ever adds time, and comes and goes: the
    faster runs are the ones that measured the server rather than the noise.
    """
    fastest = sorted(seconds)[:max(1, (len(seconds) + 1) // 2)]
    return statistics.median(fastest)


# -- attackers -------------------------------------------------------------------------

def connect_many(address, n: int) -> List[socket.socket]:
    socks = []
    for _ in range(n):
        socks.append(socket.create_connection(address, timeout=SOCKET_TIMEOUT))
    return socks


def still_open(sock: socket.socket) -> bool:
    """The server has not closed ``sock`` (nothing to read: no EOF, no reset)."""
    poller = select.poll()   # select() cannot watch descriptors past 1023
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


class Attack:
    """``n`` connections opened by ``on()`` and closed by ``off()``; ``start(sock)`` is
    sent on each, and ``every(socks)`` called each ``period`` seconds while on."""

    def __init__(self, address, n: int, start: bytes = b"",
                 every: Optional[Callable[[List[socket.socket]], None]] = None,
                 period: float = 1.0) -> None:
        self.address, self.n, self.start = address, n, start
        self.every, self.period = every, period
        self.socks: List[socket.socket] = []
        self.held_open = True   # every attacker was still connected when it was called off
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def on(self) -> None:
        self.socks = connect_many(self.address, self.n)
        for sock in self.socks:
            if self.start:
                sock.sendall(self.start)
        self._stop.clear()
        if self.every is not None:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        time.sleep(0.2)   # the server has read what they sent

    def _tick(self) -> None:
        while not self._stop.wait(self.period):
            assert self.every is not None
            self.every(self.socks)

    def off(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(SOCKET_TIMEOUT)
        self.held_open = self.held_open and all(still_open(s) for s in self.socks)
        for sock in self.socks:
            sock.close()
        self.socks = []


def _send_each(data: bytes) -> Callable[[List[socket.socket]], None]:
    def send(socks: List[socket.socket]) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(data)
    return send


# == the targets ========================================================================

def test_40_header_only_connections_do_not_slow_a_healthy_send(tmp_path, healthy_data):
    with serving(tmp_path) as server:
        attack = Attack(server.address, 40, start=struct.pack("<Bi", MENU.opcode, CLAIMED))
        ratio = compare(server, healthy_data, attack.on, attack.off)
        assert attack.held_open   # the attack lasted through every timed send
        assert ratio <= MAX_SLOWDOWN, ratio
        server.stop()


@pytest.mark.slow
def test_200_slowloris_connections_do_not_slow_a_healthy_send(tmp_path, healthy_data):
    with serving(tmp_path) as server:
        attack = Attack(server.address, 200, start=struct.pack("<Bi", MENU.opcode, CLAIMED),
                        every=_send_each(b"x"), period=1.0)
        ratio = compare(server, healthy_data, attack.on, attack.off)
        assert attack.held_open
        assert ratio <= MAX_SLOWDOWN, ratio
        server.stop()


@pytest.mark.slow
def test_12_trickling_large_frames_do_not_slow_a_healthy_send(tmp_path, healthy_data):
    large = sized_batch(1, 900_000)
    assert 800_000 < len(large) <= MAX_BATCH_FRAME
    trickled = [0]

    def trickle(socks: List[socket.socket]) -> None:   # 2 KiB per connection each 50 ms
        start = FRAME_HEADER_SIZE + trickled[0]
        _send_each(large[start:start + 2048])(socks)
        trickled[0] += 2048

    def on() -> None:
        trickled[0] = 0
        attack.on()

    with serving(tmp_path) as server:
        attack = Attack(server.address, 12, start=large[:FRAME_HEADER_SIZE], every=trickle,
                        period=0.05)
        ratio = compare(server, healthy_data, on, attack.off)
        assert attack.held_open
        assert trickled[0] < len(large) // 2   # still trickling, far from done
        assert ratio <= MAX_SLOWDOWN, ratio
        server.stop()


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} descriptors, the hard limit is {hard}")
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture
def many_descriptors():
    """This process, and the server it starts, may open 10,500 descriptors (restored after)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    _raise_fd_limit(10_500)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def _hold_idle(server: ServeProcess, n: int, during: Callable[[], None]) -> int:
    """Open ``n`` idle connections (each accepted), call ``during``, close them; the
    server's RSS while they were held."""
    server.wait_until_idle()
    start_fds = server.open_fds()
    idle: List[socket.socket] = []
    try:
        while len(idle) < n:   # in steps the listen backlog holds, each accepted
            idle += connect_many(server.address, 500)
            wait_for(lambda: server.open_fds() >= start_fds + len(idle),
                     "the server to accept them")
        held = server.rss()
        during()
        assert all(still_open(s) for s in idle)
    finally:
        for sock in idle:   # reset, not closed: 10,000 TIME_WAITs per round would
            # take most of the ephemeral ports for a minute (32768-60999 on Linux)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    server.wait_until_idle()
    return held


@pytest.mark.slow
def test_10000_idle_connections_cost_little_memory_and_no_speed(tmp_path, healthy_data,
                                                                many_descriptors):
    # uvloop: with asyncio's own loop the transports' memory stays in Python's
    # allocator arenas after they close (about 20 MiB here; see the README).
    pytest.importorskip("uvloop", reason="the memory target is met on uvloop "
                                         "(fastframe[uvloop]), which is not installed")
    n = 10_000
    baseline: List[float] = []
    attacked: List[float] = []

    def sends(into: List[float]) -> Callable[[], None]:
        return lambda: into.extend(healthy_send(server, healthy_data) for _ in range(4))

    with serving(tmp_path, "--max-connections", str(n + 100), "--header-timeout", "300",
                 "--idle-timeout", "300", loop="uvloop") as server:
        assert "| loop: uvloop" in server.log_text()
        healthy_send(server, healthy_data)   # warm both sides up
        sends(baseline)()
        server.wait_until_idle()
        start_rss = server.rss()
        held_rss = _hold_idle(server, n, sends(attacked))
        end_rss = server.rss()
        sends(baseline)()   # baseline and attack alternate, as in compare()
        # The same crowd again: nothing may pile up.
        _hold_idle(server, n, sends(attacked))
        again_rss = server.rss()
        sends(baseline)()
        server.stop()
    assert max(attacked) <= MAX_STALL * typical(baseline), (attacked, baseline)
    ratio = typical(attacked) / typical(baseline)
    print(f"RSS {start_rss / MIB:.1f} MiB, {held_rss / MIB:.1f} MiB with {n} idle, "
          f"{end_rss / MIB:.1f} MiB after, {again_rss / MIB:.1f} MiB after a second round; "
          f"healthy send {ratio:.2f}x")
    assert held_rss - start_rss <= 80 * MIB, (held_rss - start_rss) / MIB
    assert ratio <= MAX_SLOWDOWN, ratio
    assert end_rss - start_rss <= 20 * MIB, (end_rss - start_rss) / MIB
    assert again_rss - start_rss <= 20 * MIB, (again_rss - start_rss) / MIB


def test_max_connections_refuses_the_excess_and_serves_once_they_close(tmp_path, healthy_data):
    with serving(tmp_path, "--max-connections", "50") as server:
        socks = connect_many(server.address, 300)
        time.sleep(0.5)
        open_now = [s for s in socks if still_open(s)]
        assert len(open_now) == 50   # the first 50; the other 250 closed at once
        assert server.alive()
        for sock in socks:
            sock.close()
        healthy_send(server, healthy_data)
        server.stop()
        refusals = [line for line in server.log_text().splitlines()
                    if "result: refused | reason: max_connections" in line]
        assert 1 <= len(refusals) <= 5   # rate-limited, not one line per refusal


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2_500_000 * 1024, 2_500_000 * 1024))


@pytest.mark.slow
def test_server_limited_to_2_5_gb_of_address_space_survives_1000_connections(
        tmp_path, healthy_data):
    with serving(tmp_path, preexec=_limit_address_space) as server:
        header = struct.pack("<Bi", MENU.opcode, CLAIMED)
        socks = connect_many(server.address, 1000)
        try:
            for i, sock in enumerate(socks):   # a third idle, a third headers, a third partial
                if i % 3 == 1:
                    sock.sendall(header)
                elif i % 3 == 2:
                    sock.sendall(header + b"x" * 1000)
            time.sleep(1.0)
            assert server.alive()
            healthy_send(server, healthy_data)
        finally:
            for sock in socks:
                sock.close()
        healthy_send(server, healthy_data)
        assert server.alive()
        server.stop()


# -- invalid frames --------------------------------------------------------------------

def _flood(address, frames: bytes, answers: int) -> bytes:
    """Send ``frames`` on one connection while reading up to ``answers`` answers."""
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT) as sock:
        got = bytearray()

        def read() -> None:
            with contextlib.suppress(OSError):
                while len(got) < 5 * answers:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    got.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with contextlib.suppress(OSError):
            sock.sendall(frames)
        reader.join(60)
        assert not reader.is_alive()
    return bytes(got)


INVALID_FRAME = struct.pack("<Bi", Opcodes.FINISHED, 3) + b"\x01\x00\x00"   # 3-byte FINISHED


@pytest.mark.parametrize("max_invalid, answered", [(200_000, 100_000), (100, 100)],
                         ids=["all-answered", "default-max-invalid"])
def test_100000_invalid_frames_log_at_most_100_lines(tmp_path, max_invalid, answered):
    with serving(tmp_path, "--max-invalid", str(max_invalid)) as server:
        got = _flood(server.address, INVALID_FRAME * 100_000, 100_000)
        # Closed with frames unread, the kernel may reset the connection, and
        # a reset may discard answers not yet read: all FAILs, up to ``answered``.
        assert got == FAIL * (len(got) // 5) and len(got) <= 5 * answered
        if answered == 100_000:
            assert len(got) == 5 * answered
        wait_for(lambda: "action: close" in server.log_text(), "the connection to be closed")
        server.stop()
        log = server.log_text().splitlines()
    lines = [line for line in log if "| conn: 1 |" in line or line.endswith("| conn: 1")]
    assert len(lines) <= 100, len(lines)
    assert any(f"| invalid: {answered}" in line for line in lines)


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def test_out_of_descriptors_at_accept_the_server_goes_on(tmp_path, healthy_data):
    # --max-connections above what the descriptor limit allows: accept() itself fails.
    started = time.monotonic()
    with serving(tmp_path, "--max-connections", "1000", preexec=_few_descriptors) as server:
        assert "are dropped at accept; raise the limit" in server.log_text()   # said at start
        socks = connect_many(server.address, 400)
        try:
            wait_for(lambda: server.open_fds() >= 190, "the server to run out of descriptors")
            time.sleep(0.5)
            assert server.alive()
        finally:
            for sock in socks:
                sock.close()
        healthy_send(server, healthy_data)   # accepting again once they are gone
        assert server.alive()
        server.stop()
    seconds = time.monotonic() - started
    # asyncio's loop reports each failed accept, thousands a second; the server logs
    # one line a second (no traceback) and counts the rest. uvloop says nothing.
    text = server.log_text()
    log = text.splitlines()
    errors = [line for line in log if "action: event_loop" in line]
    assert [line for line in errors if "Too many open files" not in line] == []
    reported = int(next(line for line in log if "action: shutdown" in line)
                   .split("loop_errors: ", 1)[1].split(" ", 1)[0])
    if "| loop: asyncio" in text:
        assert 1 <= len(errors) <= seconds + 1
        assert reported > len(errors)
    else:
        assert errors == [] and reported == 0
