"""What the protocol names: opcodes, batch statuses, tables and limits.

Everything here is data from PROTOCOL.md; the codecs, the client and the
orchestrator all read it from this one place.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, Tuple, Type

from .rows import (
    RawMenuItems, RawStore, RawTransaction, RawTransactionItem, RawUser, TableRow,
)

__all__ = [
    "Opcodes", "BatchStatus", "TableSpec", "TABLES", "TABLES_BY_OPCODE", "TABLES_BY_NAME",
    "TABLE_OPCODES", "FRAME_HEADER_SIZE", "TABLE_HEADER_SIZE", "MAX_BATCH_FRAME",
    "DATABATCH_HEADER_MAX", "DEFAULT_MAX_FRAME", "ALL_QUERY_IDS", "EOF_KEY",
]


class Opcodes(enum.IntEnum):
    """Frame opcodes (PROTOCOL.md §3)."""

    DATA_BATCH = 0
    BATCH_RECV_SUCCESS = 1
    BATCH_RECV_FAIL = 2
    FINISHED = 3
    NEW_MENU_ITEMS = 4
    NEW_STORES = 5
    NEW_TRANSACTION_ITEMS = 6
    NEW_TRANSACTION = 7
    NEW_USERS = 8
    EOF = 9


class BatchStatus(enum.IntEnum):
    """Status byte of a table batch (PROTOCOL.md §4)."""

    CONTINUE = 0
    EOF = 1
    CANCEL = 2


@dataclass(frozen=True)
class TableSpec:
    """One table of the data set: its wire keys, its row class and its projection."""

    name: str
    opcode: int
    required_keys: Tuple[str, ...]
    row_class: Type[TableRow]
    kept_columns: Tuple[str, ...]
    query_ids: Tuple[int, ...]


TABLES: Tuple[TableSpec, ...] = (
    TableSpec("menu_items", Opcodes.NEW_MENU_ITEMS, RawMenuItems._fields, RawMenuItems,
              ("product_id", "name", "price"), (2,)),
    TableSpec("stores", Opcodes.NEW_STORES, RawStore._fields, RawStore,
              ("store_id", "store_name"), (3,)),
    TableSpec("transaction_items", Opcodes.NEW_TRANSACTION_ITEMS, RawTransactionItem._fields,
              RawTransactionItem,
              ("transaction_id", "item_id", "quantity", "subtotal", "created_at"), (2,)),
    TableSpec("transactions", Opcodes.NEW_TRANSACTION, RawTransaction._fields, RawTransaction,
              ("transaction_id", "store_id", "user_id", "final_amount", "created_at"), (1, 3, 4)),
    TableSpec("users", Opcodes.NEW_USERS, RawUser._fields, RawUser,
              ("user_id", "birthdate"), (4,)),
)
TABLES_BY_OPCODE: Dict[int, TableSpec] = {t.opcode: t for t in TABLES}
TABLES_BY_NAME: Dict[str, TableSpec] = {t.name: t for t in TABLES}
TABLE_OPCODES = frozenset(TABLES_BY_OPCODE)
ALL_QUERY_IDS: Tuple[int, ...] = (1, 2, 3, 4)
EOF_KEY = "table_type"

FRAME_HEADER_SIZE = 5          # [u8 opcode][i32 length]
TABLE_HEADER_SIZE = 13         # [i32 nRows][i64 batchNumber][u8 status]
MAX_BATCH_FRAME = 1 << 20      # a client table frame, headers included (§4)
# Largest DataBatch header: two full u8 lists, a full u8 dict and the fixed fields.
DATABATCH_HEADER_MAX = (1 + 255) * 2 + 2 + 8 + (1 + 2 * 255) + 2 + 2
# Default receive limit: a full client batch, or one wrapped in a DataBatch.
DEFAULT_MAX_FRAME = MAX_BATCH_FRAME + DATABATCH_HEADER_MAX + FRAME_HEADER_SIZE
