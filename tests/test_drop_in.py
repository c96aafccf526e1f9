"""Drop-in: an orchestrator written for the original protocol package runs on fastframe.

``original_style`` is such an orchestrator, written here in the original's
layout and calls; its ``protocol`` module is nothing but fastframe imports.
Served the original Go client's capture over a loopback socket, it must
answer the original ACK bytes and produce the original orchestrator's
DataBatch bytes — with its own attribute set on every DataBatch, which is
what fastframe's message classes used to refuse.
"""
from __future__ import annotations

import json
import socket
import threading

from fastframe import (
    BatchRecvSuccess, DataBatch, EOFMessage, Finished, NewStores, NewTransactions, decode_frame,
)
from original_style.network import ConnectionManager

from wire import frame, split_frames

DEADLINE = 20.0  # seconds for the whole conversation; it takes milliseconds


def _serve_capture(capture: bytes) -> tuple:
    """Run one ConnectionManager on a loopback socket fed ``capture``; return it and the answer."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(DEADLINE)
        managers = []
        errors = []

        def serve() -> None:
            try:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(DEADLINE)
                    manager = ConnectionManager(conn)
                    managers.append(manager)
                    manager.handle_client()
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        answer = bytearray()
        with socket.create_connection(server.getsockname(), timeout=DEADLINE) as client:
            client.sendall(capture)
            while True:  # the server closes after FINISHED, which gets no answer
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
        thread.join(DEADLINE)
        assert not thread.is_alive(), "the orchestrator did not finish"
        if errors:
            raise errors[0]
        return managers[0], bytes(answer)


def test_original_style_orchestrator_gives_the_original_acks_and_databatches(
        codec, conformance_dir, sample_c2s, sample_s2c):
    manager, answer = _serve_capture(sample_c2s)

    assert answer == sample_s2c  # 10 x BATCH_RECV_SUCCESS, byte for byte
    assert answer == BatchRecvSuccess().to_bytes() * 10
    assert manager.agency_id == 1

    golden = json.loads((conformance_dir / "golden_sample" / "manifest.json").read_text())
    forwarded = manager.processor.forwarded
    assert len(forwarded) == len(golden["vectors"]) == 5
    for wrapper, vector in zip(forwarded, golden["vectors"]):
        expected = (conformance_dir / "golden_sample" / vector["databatch_file"]).read_bytes()
        assert wrapper.to_bytes() == expected, vector["table"]
        # The attribute the orchestrator set is still there, and says what the bytes say.
        assert wrapper.filtered_data["amount"] == vector["n_rows"]
        assert wrapper.filtered_data["rows"][0] == vector["first_filtered_row"]
        embedded = decode_frame(expected).batch_msg
        assert [dict(zip(vector["filtered_keys"], (getattr(row, k) for k in vector[
            "filtered_keys"]))) for row in embedded.rows] == wrapper.filtered_data["rows"]

    # EOFs go downstream as the client sent them, byte for byte.
    eofs = [frame(opcode, body) for opcode, body in split_frames(sample_c2s) if opcode == 9]
    assert len(eofs) == 5
    assert manager.eof_forwarded == eofs


def test_every_message_class_takes_attributes_a_caller_sets(codec):
    messages = [NewStores(rows=[], batch_number=3), EOFMessage(1, "users"), Finished(2),
                BatchRecvSuccess(), DataBatch(table_ids=[1], batch_bytes=Finished(2).to_bytes())]
    for msg in messages:
        before = msg.to_bytes()
        msg.filtered_data = {"note": type(msg).__name__}
        assert msg.filtered_data == {"note": type(msg).__name__}
        assert msg.to_bytes() == before  # not part of the wire
        again = decode_frame(before)
        assert again == msg  # nor of equality: messages are still values
        assert not hasattr(again, "filtered_data")


def test_decoded_messages_take_attributes_too(codec, sample_c2s):
    from fastframe import FrameDecoder

    for msg in FrameDecoder().feed(sample_c2s):
        msg.received_by = "test"
        assert msg.received_by == "test"
    batch = NewTransactions(rows=[], batch_number=1)
    batch.rows_seen = 0
    assert "rows_seen" not in repr(batch)
