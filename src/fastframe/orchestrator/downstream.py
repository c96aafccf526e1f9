"""What one client frame becomes downstream (PROTOCOL.md §6, §8).

A table batch is validated and projected to its §8 columns inside a
DataBatch (one codec call, ``project_databatch``, which the Cython codec
runs without the GIL); EOF and FINISHED are wrapped whole. ``HeaderPolicy``
says which DataBatch header values are written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from .. import codec
from ..errors import ProtocolError
from ..schema import ALL_QUERY_IDS, TABLES, TABLES_BY_NAME, TABLES_BY_OPCODE, Opcodes

__all__ = ["HeaderPolicy", "wrap_frame"]

_ALL_TABLE_IDS = tuple(t.opcode for t in TABLES)


@dataclass(frozen=True)
class HeaderPolicy:
    """The DataBatch header values the orchestrator writes.

    fastframe's own: ``table_ids`` = the opcode of the table the batch belongs
    to (every table's for FINISHED), ``query_ids`` = the queries that read it
    (§8; all four for FINISHED), ``meta`` = {}, one shard (``total_shards=1,
    shard_num=0``). ``compat=True`` writes the original orchestrator's values
    (``table_ids=[1]``, ``meta={}``, ``total_shards=0``, ``shard_num=0``), so
    its output can be compared byte for byte.
    """

    compat: bool = False

    def table_ids(self, table_opcode: Optional[int]) -> Sequence[int]:
        if self.compat:
            return (1,)
        return _ALL_TABLE_IDS if table_opcode is None else (table_opcode,)

    @property
    def shards(self) -> Tuple[int, int]:
        return (0, 0) if self.compat else (1, 0)


def wrap_frame(headers: HeaderPolicy, opcode: int,
               body: memoryview) -> Tuple[bytes, Sequence[int], str]:
    """The DataBatch frame for one client frame, its query ids, and a log fragment.

    Raises ``ProtocolError`` for a frame a client may not send or whose body
    is invalid (the caller answers BATCH_RECV_FAIL).
    """
    impl = codec.impl
    total_shards, shard_num = headers.shards
    spec = TABLES_BY_OPCODE.get(opcode)
    if spec is not None:
        frame = impl.project_databatch(opcode, body, headers.table_ids(opcode),
                                       spec.query_ids, {}, total_shards, shard_num)
        return frame, spec.query_ids, f"table: {spec.name}"
    if opcode == Opcodes.EOF:
        batch_number, table_type = impl.decode_eof_body(body)
        spec = TABLES_BY_NAME[table_type]
        query_ids, table_ids = spec.query_ids, headers.table_ids(spec.opcode)
        what = f"eof: {table_type}"
    elif opcode == Opcodes.FINISHED:
        batch_number, query_ids = 0, ALL_QUERY_IDS
        table_ids = headers.table_ids(None)
        what = f"agency_id: {impl.decode_finished_body(body)}"
    else:
        raise ProtocolError(f"a client may not send opcode {opcode}", opcode)
    frame = impl.encode_databatch_frame(table_ids, query_ids, 0, batch_number, {},
                                        total_shards, shard_num, impl.encode_frame(opcode, body))
    return frame, query_ids, what
