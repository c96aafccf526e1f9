"""The agency client (PROTOCOL.md §4, §7, §9) against a fake server and the real orchestrator."""
from __future__ import annotations

import random
import shutil
import signal
import socket
import time
import types
from pathlib import Path
from typing import Dict, List

import pytest

import fastframe.client as client_module
from fastframe import codec
from fastframe.client import Cancelled, Client, ClientError, read_table_csv
from fastframe.datagen import generate
from fastframe.messages import (
    DataBatch, EOFMessage, Finished, NewTransactions, TableMessage, decode_frame,
)
from fastframe.orchestrator import Orchestrator
from fastframe.schema import TABLES, TABLES_BY_NAME, BatchStatus, Opcodes
from fastframe.sinks.file import FileSink, read_frames
from helpers_system import (
    TIMEOUT, FakeServer, Received, ack_all, csv_row, csv_table_rows, free_port, running,
    wire_row, write_csv, write_dataset,
)

USERS = TABLES_BY_NAME["users"]
EMPTY_FRAME = 5 + 13  # frame header + table header


def make_client(address, **options) -> Client:
    """A client with test-sized limits and delays; ``options`` override them."""
    agency_id = options.pop("agency_id", 7)
    settings = dict(batch_rows=7, max_batch_bytes=1000, window=1, backoff=0.001,
                    timeout=TIMEOUT)
    settings.update(options)
    return Client(address, agency_id, **settings)


def batches(frames: List[Received], table: str) -> List[Received]:
    """The table batches (not the EOF frame) of ``table``, in arrival order."""
    return [g for g in frames if g.opcode == TABLES_BY_NAME[table].opcode]


def rows_of(got: Received) -> List[Dict[str, str]]:
    return [row._asdict() for row in got.msg.rows]


def row_bytes(table: str, row: Dict[str, str]) -> int:
    """What one row adds to a batch frame on the wire."""
    spec = TABLES_BY_NAME[table]
    return len(codec.encode_table_frame(spec.opcode, 1, 0, [row])) - EMPTY_FRAME


# -- reading CSV files ------------------------------------------------------------------

SHUFFLED = {
    "menu_items": ("available_to", "item_name", "price", "item_id", "category", "is_seasonal",
                   "available_from"),
    "stores": ("longitude", "store_name", "city", "store_id", "latitude", "street", "state",
               "postal_code"),
    "transaction_items": ("created_at", "subtotal", "item_id", "transaction_id", "unit_price",
                          "quantity"),
    "transactions": ("user_id", "created_at", "voucher_id", "final_amount", "transaction_id",
                     "discount_applied", "store_id", "original_amount", "payment_method_id"),
    "users": ("registered_at", "user_id", "birthdate", "gender"),
}


@pytest.mark.parametrize("table", [spec.name for spec in TABLES])
@pytest.mark.parametrize("order", ["real", "shuffled"])
def test_columns_are_mapped_by_header_name(tmp_path, table, order):
    spec = TABLES_BY_NAME[table]
    rows = [csv_row(table, n) for n in (1, 2)]
    header = SHUFFLED[table] if order == "shuffled" else tuple(rows[0])
    path = write_csv(tmp_path / f"{table}.csv", rows, header)
    read = list(read_table_csv(path, spec))
    assert [line for line, _ in read] == [2, 3]
    assert [dict(zip(spec.required_keys, values)) for _, values in read] == [
        wire_row(table, row) for row in rows]


@pytest.mark.parametrize("table, dropped", [
    ("menu_items", "item_name"), ("stores", "latitude"), ("transaction_items", "subtotal"),
    ("transactions", "user_id"), ("users", "birthdate"),
])
def test_missing_required_column_names_file_and_column(tmp_path, table, dropped):
    header = [c for c in SHUFFLED[table] if c != dropped]
    path = write_csv(tmp_path / "part.csv", [csv_row(table, 1)], header)
    with pytest.raises(ClientError, match="missing required column") as info:
        list(read_table_csv(path, TABLES_BY_NAME[table]))
    assert str(path) in str(info.value) and dropped in str(info.value)


def test_dropped_voucher_column_is_not_required(tmp_path):
    header = [c for c in SHUFFLED["transactions"] if c != "voucher_id"]
    path = write_csv(tmp_path / "t.csv", [csv_row("transactions", 1)], header)
    assert len(list(read_table_csv(path, TABLES_BY_NAME["transactions"]))) == 1


USERS_HEADER = "user_id,gender,birthdate,registered_at\n"
GOOD_LINE = "1,female,2000-01-01,2024-01-01 00:00:00\n"


@pytest.mark.parametrize("bad_line", [
    pytest.param('2,"female,2000-01-01,2024-01-01\n', id="unterminated-quote"),
    pytest.param('2,"female"x,2000-01-01,2024-01-01\n', id="text-after-quote"),
    pytest.param("2,female,2000-01-01\n", id="too-few-fields"),
    pytest.param("2,female,2000-01-01,2024-01-01,extra\n", id="too-many-fields"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "users.csv"
    path.write_text(USERS_HEADER + GOOD_LINE + bad_line + GOOD_LINE + GOOD_LINE)
    with pytest.raises(ClientError) as info:
        list(read_table_csv(path, USERS))
    assert f"{path}:3:" in str(info.value)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "users.csv"
    path.write_bytes((USERS_HEADER + GOOD_LINE * 2).encode() + b"3,f\xff,2000,2024\n"
                     + GOOD_LINE.encode() * 3000)
    with pytest.raises(ClientError) as info:
        list(read_table_csv(path, USERS))
    assert f"{path}:4:" in str(info.value)


@pytest.mark.parametrize("content", ["", "\n"], ids=["empty", "blank"])
def test_file_without_header_is_an_error(tmp_path, content):
    path = tmp_path / "users.csv"
    path.write_text(content)
    with pytest.raises(ClientError, match=str(path)):
        list(read_table_csv(path, USERS))


def test_csv_dialect_details(tmp_path):
    """Quoted commas, quotes and newlines, CRLF line ends, blank lines, a BOM, non-ASCII."""
    path = tmp_path / "users.csv"
    path.write_bytes(
        "\ufeffuser_id,gender,birthdate,registered_at\r\n"
        '1,"a, ""b""",2000-01-01,x\r\n'
        "\r\n"
        '2,"two\nlines",Café,São Paulo\r\n'
        "3,,,\r\n".encode())
    assert list(read_table_csv(path, USERS)) == [
        (2, ["1", 'a, "b"', "2000-01-01", "x"]),
        (4, ["2", "two\nlines", "Café", "São Paulo"]),
        (6, ["3", "", "", ""]),
    ]


# -- the stream, against the fake server -------------------------------------------------

LAYOUT = {"menu_items": [8], "stores": [10], "transaction_items": [9, 15, 1],
          "transactions": [12, 5], "users": [7, 1, 20]}


@pytest.mark.parametrize("window", [1, 4])
def test_stream_shape(tmp_path, window):
    data = tmp_path / "data"
    sent = write_dataset(data, LAYOUT, headers={"transactions": SHUFFLED["transactions"],
                                                "menu_items": SHUFFLED["menu_items"]})
    (data / "users" / "notes.txt").write_text("not a CSV file")
    (data / "users" / "old.csv").mkdir()
    with FakeServer() as server:
        summary = make_client(server.address, window=window, agency_id=42).send_folder(data)
    frames = server.frames

    assert frames[-1].opcode == Opcodes.FINISHED and frames[-1].msg.agency_id == 42
    assert [g.opcode for g in frames].count(Opcodes.FINISHED) == 1
    # Tables in spec order, each closed by its EOF frame before the next starts.
    assert [g.table for g in frames[:-1]] == [
        t.name for t in TABLES for _ in range(len(batches(frames, t.name)) + 1)]
    sizes = [len(g.frame) for g in frames if g.opcode != Opcodes.FINISHED]
    assert max(sizes) <= 1000
    for table, counts in LAYOUT.items():
        got = batches(frames, table)
        numbers = [g.msg.batch_number for g in got]
        assert numbers == list(range(1, len(got) + 1)), "sequential across files"
        (eof,) = [g for g in frames if g.opcode == Opcodes.EOF and g.table == table]
        assert eof.msg.batch_number == numbers[-1] and eof.msg.rows == []
        assert [r for g in got for r in rows_of(g)] == [wire_row(table, r) for r in sent[table]]
        assert all(g.msg.amount <= 7 for g in got)
        # EOF status exactly on each file's last batch: no batch spans two files.
        ends, total = [], 0
        for g in got:
            total += g.msg.amount
            if g.msg.batch_status == BatchStatus.EOF:
                ends.append(total)
            else:
                assert g.msg.batch_status == BatchStatus.CONTINUE
        assert ends == [sum(counts[:k + 1]) for k in range(len(counts))]
        assert got[-1].msg.batch_status == BatchStatus.EOF
        assert summary.rows[table] == sum(counts)
    # Both limits bound somewhere: a full 7-row batch, and a shorter one cut for size.
    amounts = {(g.msg.amount, g.msg.batch_status) for t in LAYOUT for g in batches(frames, t)}
    assert (7, BatchStatus.CONTINUE) in amounts
    assert any(n < 7 and s == BatchStatus.CONTINUE for n, s in amounts)


def test_header_only_file_keeps_numbering(tmp_path):
    sent = write_dataset(tmp_path, {"users": [5, 0, 4]}, skipped=False)
    with FakeServer() as server:
        make_client(server.address, batch_rows=3).send_folder(tmp_path)
    got = batches(server.frames, "users")
    assert [g.msg.batch_number for g in got] == list(range(1, len(got) + 1))
    assert [r for g in got for r in rows_of(g)] == [wire_row("users", r) for r in sent["users"]]
    (eof,) = [g for g in server.frames if g.opcode == Opcodes.EOF]
    assert eof.msg.batch_number == len(got)


_TEXTS = ("Café", "São Paulo", "Bahnhofstraße", "日本語の店", "☕", "x", "", "long " * 12)


@pytest.mark.parametrize("batch_rows, max_bytes", [(50, 700), (4, 700), (50, 300)])
def test_batches_are_cut_greedily_at_either_limit(tmp_path, batch_rows, max_bytes):
    """Every frame within both limits, and no batch cut early: the next row would not fit.

    Non-ASCII values make characters and bytes differ, so counting characters
    would show up as frames over the limit.
    """
    rng = random.Random(batch_rows * max_bytes)
    files = []
    for _ in range(2):
        files.append([{"user_id": str(rng.randrange(10 ** rng.randrange(1, 8))),
                       "gender": rng.choice(_TEXTS), "birthdate": rng.choice(_TEXTS) * 2,
                       "registered_at": rng.choice(_TEXTS)} for _ in range(60)])
    for k, rows in enumerate(files):
        write_csv(tmp_path / "users" / f"users_{k}.csv", rows, SHUFFLED["users"])
    with FakeServer() as server:
        make_client(server.address, batch_rows=batch_rows, max_batch_bytes=max_bytes,
                    window=3).send_folder(tmp_path)
    got = batches(server.frames, "users")
    assert [r for g in got for r in rows_of(g)] == files[0] + files[1]
    for this, after in zip(got, got[1:]):
        assert len(this.frame) <= max_bytes and this.msg.amount <= batch_rows
        if this.msg.batch_status == BatchStatus.CONTINUE:
            next_row = rows_of(after)[0]
            assert (this.msg.amount == batch_rows
                    or len(this.frame) + row_bytes("users", next_row) > max_bytes)
    assert len(got[-1].frame) <= max_bytes


@pytest.mark.parametrize("excess", [0, 1], ids=["exactly-the-limit", "one-byte-over"])
def test_row_larger_than_a_batch(tmp_path, excess):
    limit = 400
    rows = [csv_row("users", 1), csv_row("users", 2), csv_row("users", 3)]
    base = EMPTY_FRAME + row_bytes("users", wire_row("users", rows[1]))
    rows[1]["gender"] += "é" * ((limit - base + excess) // 2) + "x" * ((limit - base + excess) % 2)
    path = write_csv(tmp_path / "users" / "users.csv", rows, SHUFFLED["users"])
    with FakeServer() as server:
        client = make_client(server.address, max_batch_bytes=limit)
        if excess:
            with pytest.raises(ClientError) as info:
                client.send_folder(tmp_path)
            assert f"{path}:3:" in str(info.value)
        else:
            client.send_folder(tmp_path)
    if excess:
        assert not any(g.opcode in (Opcodes.EOF, Opcodes.FINISHED) for g in server.frames)
    else:
        (alone,) = [g for g in batches(server.frames, "users")
                    if wire_row("users", rows[1]) in rows_of(g)]
        assert rows_of(alone) == [wire_row("users", rows[1])] and len(alone.frame) == limit


@pytest.mark.parametrize("content, where", [
    (USERS_HEADER.replace("gender,", "") + "1,2000,2024\n", "missing required column(s) gender"),
    (USERS_HEADER + GOOD_LINE + '2,"f,2000,2024\n' + GOOD_LINE, "users_2.csv:3:"),
])
def test_bad_file_stops_the_stream(tmp_path, content, where):
    write_dataset(tmp_path, {"users": [3]}, skipped=False)
    bad = tmp_path / "users" / "users_2.csv"
    bad.write_text(content)
    with FakeServer() as server:
        with pytest.raises(ClientError, match=str(bad.parent)) as info:
            make_client(server.address).send_folder(tmp_path)
    assert where in str(info.value)
    assert not any(g.opcode in (Opcodes.EOF, Opcodes.FINISHED) for g in server.frames)


def test_not_a_directory(tmp_path):
    with pytest.raises(ClientError, match="not a directory"):
        make_client(("127.0.0.1", free_port())).send_folder(tmp_path / "missing")


# -- window, failures, connections ------------------------------------------------------------

@pytest.mark.parametrize("window", [1, 3, 8])
def test_window_batches_go_out_before_any_ack(tmp_path, window):
    write_dataset(tmp_path, {"users": [40]}, skipped=False)
    burst: List[Received] = []

    def handler(conn):
        burst.extend(conn.read() for _ in range(window))  # blocks until `window` arrived
        assert conn.idle(0.3), f"more than {window} batches in flight"
        for _ in burst:
            conn.ack()
        ack_all(conn)

    with FakeServer(handler) as server:
        summary = make_client(server.address, batch_rows=2, window=window).send_folder(tmp_path)
    assert [g.msg.batch_number for g in burst] == list(range(1, window + 1))
    assert summary.rows == {"users": 40}


def test_eof_waits_for_its_tables_acks_and_the_next_table_not_for_the_eofs(tmp_path):
    # The EOF goes out only once every batch of its table is stored, so it
    # reaches downstream after them; the next table need not wait for the
    # EOF's own ACK, so a slow sink costs one wait per table, not two.
    write_dataset(tmp_path, {"menu_items": [6], "stores": [4]}, skipped=False)
    order: List[str] = []

    def handler(conn):
        last = [conn.read() for _ in range(3)]   # menu_items: three 2-row batches
        assert conn.idle(0.3), "the EOF went out before its table's batches were ACKed"
        for _ in last:
            conn.ack()
        eof = conn.read()
        assert eof.opcode == Opcodes.EOF
        nxt = conn.read()   # unanswered EOF: the stores batch must come anyway
        order.extend([eof.table, nxt.table])
        conn.ack()
        conn.ack()
        ack_all(conn)

    with FakeServer(handler) as server:
        # A client waiting for the EOF's ACK would wait out its timeout: fail fast.
        summary = make_client(server.address, batch_rows=2, window=8, timeout=3.0,
                              connect_attempts=1).send_folder(tmp_path)
    assert order == ["menu_items", "stores"]
    assert summary.rows == {"menu_items": 6, "stores": 4}


def _fail_batch(number: int, times: int):
    """A handler that answers FAIL the first ``times`` times it sees stores batch ``number``."""
    def handler(conn):
        left = times
        while True:
            got = conn.read()
            if got is None:
                return
            failing = got.table == "stores" and got.msg.batch_number == number and left
            left -= bool(failing)
            conn.ack(not failing)
            if got.opcode == Opcodes.FINISHED:
                return
    return handler


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("fails", [1, 3])
def test_failed_batch_is_resent_until_it_succeeds(tmp_path, window, fails):
    sent = write_dataset(tmp_path, {"stores": [10]}, skipped=False)
    with FakeServer(_fail_batch(2, fails)) as server:
        summary = make_client(server.address, batch_rows=4, window=window,
                              max_retries=3).send_folder(tmp_path)
    got = batches(server.frames, "stores")
    copies = [g for g in got if g.msg.batch_number == 2]
    assert len(copies) == fails + 1 and len({g.frame for g in copies}) == 1
    if window == 1:
        assert [g.msg.batch_number for g in got] == [1] + [2] * (fails + 1) + [3]
    assert summary.retries == fails and summary.rows == {"stores": 10}
    stored = {g.msg.batch_number: rows_of(g) for g in got}
    assert [r for n in sorted(stored) for r in stored[n]] == [
        wire_row("stores", r) for r in sent["stores"]]


@pytest.mark.parametrize("max_retries", [0, 2])
def test_batch_failed_too_often_is_an_error(tmp_path, max_retries):
    write_dataset(tmp_path, {"stores": [10]}, skipped=False)
    with FakeServer(_fail_batch(2, max_retries + 1)) as server:
        with pytest.raises(ClientError) as info:
            make_client(server.address, batch_rows=4, max_retries=max_retries).send_folder(
                tmp_path)
    message = str(info.value)
    assert "stores" in message and "batch 2" in message
    assert str(tmp_path / "stores" / "stores_1.csv") in message
    copies = [g for g in batches(server.frames, "stores") if g.msg.batch_number == 2]
    assert len(copies) == max_retries + 1


@pytest.mark.parametrize("answer", [
    pytest.param(b"\x01\x01\0\0\0\0", id="ack-with-a-body"),
    pytest.param(b"\x03\x04\0\0\0\x01\0\0\0", id="finished"),
    pytest.param(b"\x63\0\0\0\0", id="unknown-opcode"),
])
def test_answer_that_is_not_an_ack_is_an_error(tmp_path, answer):
    write_dataset(tmp_path, {"stores": [3]}, skipped=False)

    def handler(conn):
        conn.read()
        conn.sock.sendall(answer)
        conn.read()  # until the client gives up and closes

    with FakeServer(handler) as server:
        with pytest.raises(ClientError, match="unexpected answer from the orchestrator"):
            make_client(server.address).send_folder(tmp_path)


def _fake_time(monkeypatch, on_sleep=None) -> List[float]:
    """Record the client's sleeps instead of sleeping; ``on_sleep(n)`` runs at the n-th."""
    sleeps: List[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if on_sleep is not None:
            on_sleep(len(sleeps))

    monkeypatch.setattr(client_module, "time",
                        types.SimpleNamespace(sleep=sleep, perf_counter=time.perf_counter))
    return sleeps


def test_connect_retries_until_the_server_listens(tmp_path, monkeypatch):
    write_dataset(tmp_path, {"stores": [3]}, skipped=False)
    server = FakeServer(port=free_port())
    # The server starts listening after the client's second failed attempt.
    sleeps = _fake_time(monkeypatch, lambda n: n == 2 and server.start())
    try:
        summary = make_client(("127.0.0.1", server.port),
                              connect_attempts=5, backoff=0.25).send_folder(tmp_path)
    finally:
        server.stop()
    assert sleeps == [0.25, 0.5]
    assert summary.rows == {"stores": 3} and server.connections == 1


def test_connect_gives_up_after_its_attempts(tmp_path, monkeypatch):
    write_dataset(tmp_path, {"stores": [3]}, skipped=False)
    sleeps = _fake_time(monkeypatch)
    attempts = []
    real = socket.create_connection

    def create_connection(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(client_module.socket, "create_connection", create_connection)
    port = free_port()
    with pytest.raises(ClientError, match=f"127.0.0.1:{port} after 10 attempts"):
        make_client(("127.0.0.1", port), connect_attempts=10, backoff=1.0).send_folder(tmp_path)
    assert attempts == [("127.0.0.1", port)] * 10
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]  # doubling, capped at 5 s


@pytest.mark.parametrize("window", [1, 3])
def test_reconnects_and_resends_unacked_batches(tmp_path, window):
    sent = write_dataset(tmp_path, {"users": [20]}, skipped=False)
    drop_at = 4

    def handler(conn):
        if conn.index > 0:
            return ack_all(conn)
        while True:
            got = conn.read()
            if got.msg.batch_number == drop_at:
                return  # close without ACKing it
            conn.ack()

    with FakeServer(handler) as server:
        summary = make_client(server.address, batch_rows=2, window=window).send_folder(tmp_path)
    first = [g for g in batches(server.frames, "users") if g.conn == 0]
    second = [g for g in batches(server.frames, "users") if g.conn == 1]
    dropped = next(g for g in first if g.msg.batch_number == drop_at)
    if window == 1:
        assert second[0].frame == dropped.frame
    restart = second[0].msg.batch_number
    assert restart <= drop_at
    assert [g.msg.batch_number for g in second] == list(range(restart, 11))
    resent = [g for g in first if g.msg.batch_number >= restart]
    assert [g.frame for g in second[:len(resent)]] == [g.frame for g in resent]
    acked = [g for g in first if g.msg.batch_number < restart] + second
    assert [r for g in acked for r in rows_of(g)] == [wire_row("users", r) for r in sent["users"]]
    assert summary.reconnects == 1 and server.connections == 2


def test_server_dropping_every_connection_is_an_error(tmp_path, monkeypatch):
    write_dataset(tmp_path, {"users": [20]}, skipped=False)
    _fake_time(monkeypatch)

    def handler(conn):
        conn.read()  # and close, never ACKing

    with FakeServer(handler) as server:
        with pytest.raises(ClientError, match="connection lost"):
            make_client(server.address, batch_rows=2, connect_attempts=2).send_folder(tmp_path)
    assert server.connections == 3
    assert {g.frame for g in server.frames} == {server.frames[0].frame}


def test_server_dropping_the_connection_during_the_resend(tmp_path, monkeypatch):
    """The resend of a full window breaks too: the client connects once more and goes on.

    16 MiB in flight is more than loopback buffers hold, so the second connection
    closing after one frame breaks the client's resend half-way.
    """
    _fake_time(monkeypatch)
    window = 16
    rows = [dict(csv_row("users", n), gender="x" * 50_000) for n in range(400)]
    write_csv(tmp_path / "users" / "users.csv", rows, SHUFFLED["users"])

    def handler(conn):
        if conn.index == 0:
            for _ in range(window):  # a full window, never ACKed; then close
                conn.read()
        elif conn.index == 1:
            conn.read()  # one frame of the resend, then close
        else:
            ack_all(conn)

    with FakeServer(handler) as server:
        summary = make_client(server.address, batch_rows=1000, max_batch_bytes=1 << 20,
                              window=window).send_folder(tmp_path)
    assert summary.rows == {"users": 400}
    assert server.connections == 3 and summary.reconnects == 2
    third = [g.msg.batch_number for g in batches(server.frames, "users") if g.conn == 2]
    assert third == list(range(1, 21))


@pytest.mark.parametrize("window", [1, 3])
def test_cancel_sends_a_cancel_batch_then_raises(tmp_path, window):
    write_dataset(tmp_path, {"stores": [6], "users": [30]}, skipped=False)
    acked: List[str] = []

    def progress(table, rows, nbytes):
        acked.append(table)
        if acked.count("users") == 3:
            client.cancel(signal.SIGTERM)

    with FakeServer() as server:
        client = make_client(server.address, batch_rows=2, window=window, progress=progress)
        with pytest.raises(Cancelled) as info:
            client.send_folder(tmp_path)
    assert info.value.signum == signal.SIGTERM
    got = batches(server.frames, "users")
    # Batches 1..3 ACKed, the rest of the window already out, then the CANCEL batch.
    assert [g.msg.batch_number for g in got] == list(range(1, 3 + window + 1))
    assert [g.msg.batch_status for g in got] == [BatchStatus.CONTINUE] * (2 + window) + [
        BatchStatus.CANCEL]
    assert server.frames[-1] == got[-1]
    assert [g.table for g in server.frames if g.opcode == Opcodes.EOF] == ["stores"]


def test_cancel_while_draining_the_last_table_sends_no_eof_nor_finished(tmp_path):
    # The signal lands while the last table's ACKs are being read: every row
    # is already out, so the CANCEL batch is empty; no EOF, no FINISHED, and
    # it still ends in Cancelled, not in a normal exit.
    write_dataset(tmp_path, {"users": [4]}, skipped=False)

    def progress(table, rows, nbytes):
        client.cancel(signal.SIGINT)

    with FakeServer() as server:
        client = make_client(server.address, batch_rows=2, window=4, progress=progress)
        with pytest.raises(Cancelled) as info:
            client.send_folder(tmp_path)
    assert info.value.signum == signal.SIGINT
    last = batches(server.frames, "users")[-1].msg
    assert (last.batch_status, last.amount, last.batch_number) == (BatchStatus.CANCEL, 0, 3)
    assert [g.opcode for g in server.frames].count(Opcodes.EOF) == 0
    assert Opcodes.FINISHED not in [g.opcode for g in server.frames]


def test_summary_counts_table_batches_not_eof_frames(tmp_path):
    write_dataset(tmp_path, {"stores": [5], "users": [7]}, skipped=False)
    with FakeServer() as server:
        client = make_client(server.address, batch_rows=2)
        summary = client.send_folder(tmp_path)
        again = client.send_folder(tmp_path)  # a Client can be reused
    assert summary.batches == {"stores": 3, "users": 4}
    assert again.batches == summary.batches and again.rows == summary.rows


# -- against the real orchestrator -------------------------------------------------------

def assert_sink_holds(sink: Path, data: Path, agency_id: int) -> None:
    """The sink holds every CSV row (projected, §8) in order, per-table EOFs, then FINISHED."""
    wrapped = [decode_frame(f) for f in read_frames(sink)]
    assert all(isinstance(d, DataBatch) for d in wrapped)
    inner = [d.batch_msg for d in wrapped]
    assert isinstance(inner[-1], Finished) and inner[-1].agency_id == agency_id
    assert sum(isinstance(m, Finished) for m in inner) == 1
    expected = csv_table_rows(data)
    assert [m.table_type for m in inner if isinstance(m, EOFMessage)] == list(expected)
    for table, files in expected.items():
        spec = TABLES_BY_NAME[table]
        got = [m for m in inner if type(m) is not EOFMessage and isinstance(m, TableMessage)
               and m.table is spec]
        assert [m.batch_number for m in got] == list(range(1, len(got) + 1))
        assert [m.batch_status for m in got].count(BatchStatus.EOF) == len(files)
        (eof,) = [m for m in inner if isinstance(m, EOFMessage) and m.table_type == table]
        assert eof.batch_number == len(got)
        assert inner.index(eof) > inner.index(got[-1])
        rows = [{k: getattr(r, k) for k in m.columns} for m in got for r in m.rows]
        assert rows == [{k: row[k] for k in spec.kept_columns} for f in files for row in f]


@pytest.mark.parametrize("options", [{}, dict(batch_rows=2, max_batch_bytes=600, window=3)],
                         ids=["defaults", "small-batches"])
def test_sample_data_through_the_orchestrator(tmp_path, conformance_dir, options):
    data = tmp_path / "data"
    shutil.copytree(conformance_dir / "sample_data", data)
    sink = tmp_path / "sink.bin"
    with running(Orchestrator(FileSink(sink, fsync="never"), "127.0.0.1", 0)) as server:
        summary = Client(server.address, 3, timeout=TIMEOUT, **options).send_folder(data)
    assert summary.rows == {"menu_items": 8, "stores": 10, "transaction_items": 3,
                            "transactions": 3, "users": 3}
    assert_sink_holds(sink, data, agency_id=3)
    transactions = [m for m in (decode_frame(f).batch_msg for f in read_frames(sink))
                    if isinstance(m, NewTransactions)]
    # By header name: user_id is the user_id column (the Go client sent voucher_id, empty).
    assert [r.user_id for m in transactions for r in m.rows] == ["1", "2", "3"]


def test_generated_data_through_the_orchestrator(tmp_path):
    data = tmp_path / "data"
    generate(data, transactions=600, seed=5)
    sink = tmp_path / "sink.bin"
    with running(Orchestrator(FileSink(sink, fsync="always"), "127.0.0.1", 0)) as server:
        summary = Client(server.address, 9, batch_rows=100, max_batch_bytes=8000, window=4,
                         timeout=TIMEOUT).send_folder(data)
    assert_sink_holds(sink, data, agency_id=9)
    assert summary.rows == {t: sum(map(len, f)) for t, f in csv_table_rows(data).items()}
