"""What the typed API promises, checked by ``mypy --strict`` (``scripts/typecheck.sh``).

Never run, only type-checked: each ``assert_type`` is a claim about the
return type a caller sees, and ``mypy`` fails when one no longer holds.
"""
from __future__ import annotations

import socket
from typing import Dict, List, Optional, Tuple

from typing_extensions import assert_type

from fastframe import (
    DataBatch, DictRowsMessage, EmbeddedMessage, FrameDecoder, FrameReader, Message,
    NewTransactions, NewUsers, ProtocolError, RawTransaction, RawUser, RowType, TableRow,
    TupleRowsMessage, decode_frame, decode_message, recv_msg,
)
from fastframe.codec import decode_table_body


def check(sock: socket.socket, frame: bytes, row_type: RowType) -> None:
    assert_type(recv_msg(sock), Message)
    assert_type(recv_msg(sock, row_type="dict"), DictRowsMessage)
    assert_type(recv_msg(sock, 1000, "tuple"), TupleRowsMessage)
    assert_type(decode_frame(frame), Message)
    assert_type(decode_frame(frame, row_type="dict"), DictRowsMessage)
    assert_type(decode_message(7, frame[5:], "tuple"), TupleRowsMessage)
    assert_type(FrameDecoder().feed(frame), List[Message])
    assert_type(FrameDecoder(row_type="dict").feed(frame), List[DictRowsMessage])
    assert_type(FrameReader(sock).read_message("tuple"), Optional[TupleRowsMessage])

    assert_type(decode_table_body(7, frame, "dict")[3], List[Dict[str, str]])
    assert_type(decode_table_body(7, frame, "tuple")[3], List[Tuple[Optional[str], ...]])
    assert_type(decode_table_body(7, frame)[3], List[TableRow])

    msg = recv_msg(sock)
    if isinstance(msg, NewTransactions):
        assert_type(msg.rows, List[RawTransaction])
        assert_type(msg.rows[0].final_amount, Optional[str])
    elif isinstance(msg, DataBatch):
        assert_type(msg.batch_msg, Optional[EmbeddedMessage])
        if isinstance(msg.batch_msg, NewUsers):
            assert_type(msg.batch_msg.rows, List[RawUser])
    dict_msg = recv_msg(sock, row_type="dict")
    if isinstance(dict_msg, NewTransactions):
        assert_type(dict_msg.rows, List[Dict[str, str]])
    assert_type(NewUsers(rows=[{"user_id": "1"}]).rows, List[Dict[str, str]])

    try:
        recv_msg(sock, row_type=row_type)
    except ProtocolError as exc:
        assert_type(exc.fatal, bool)
        assert_type(exc.opcode, Optional[int])
