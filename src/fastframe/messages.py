"""The orchestrator-facing message classes and ``recv_msg``.

The names and attributes follow the original orchestrator's protocol package
(``rows``, ``amount``, ``batch_number``, ``batch_status``, ``read_from(sock,
length)``, ``write_to(sock)``, ``to_bytes()``, ``DataBatch.make_embedded`` …),
so an orchestrator written against it switches by changing its import. The
bytes are parsed and built by whichever codec ``fastframe.codec`` loaded.
"""
from __future__ import annotations

from typing import (
    TYPE_CHECKING, Any, Callable, ClassVar, Dict, Generic, List, Literal, NoReturn, Optional,
    Protocol, Sequence, Tuple, Type, Union, overload,
)

from . import codec
from ._buffers import byte_view
from .errors import ProtocolError
from .rows import (
    DictRow, RawMenuItems, RawStore, RawTransaction, RawTransactionItem, RawUser, RowType,
    TupleRow,
)
from .schema import (
    DEFAULT_MAX_FRAME, FRAME_HEADER_SIZE, TABLES_BY_NAME, TABLES_BY_OPCODE, BatchStatus, Opcodes,
    TableSpec,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer, TypeVar

    # Each table class is generic in its row type, which is its row class
    # unless the message was decoded with row_type="dict" or "tuple".
    _Row = TypeVar("_Row", default=Any)
    _MenuItemsRow = TypeVar("_MenuItemsRow", default=RawMenuItems)
    _StoreRow = TypeVar("_StoreRow", default=RawStore)
    _TransactionItemRow = TypeVar("_TransactionItemRow", default=RawTransactionItem)
    _TransactionRow = TypeVar("_TransactionRow", default=RawTransaction)
    _UserRow = TypeVar("_UserRow", default=RawUser)
else:
    from typing import TypeVar

    _Row = _MenuItemsRow = _StoreRow = TypeVar("_Row")
    _TransactionItemRow = _TransactionRow = _UserRow = _Row

__all__ = [
    "TableMessage", "NewMenuItems", "NewStores", "NewTransactionItems", "NewTransactions",
    "NewUsers", "EOFMessage", "Finished", "BatchRecvSuccess", "BatchRecvFail", "DataBatch",
    "Message", "EmbeddedMessage", "DictRowsMessage", "DictRowsEmbedded", "TupleRowsMessage",
    "TupleRowsEmbedded", "AnyMessage", "Readable", "Writable", "recv_msg", "decode_message",
    "decode_frame",
]


class Readable(Protocol):
    """What ``recv_msg`` and ``read_from`` read from: a blocking socket's ``recv_into``."""

    def recv_into(self, buffer: "Buffer", /) -> int: ...


class Writable(Protocol):
    """What ``write_to`` sends to: a blocking socket's ``sendall``."""

    def sendall(self, data: "Buffer", /) -> None: ...


def _recv_exactly(sock: Readable, length: int, received_before: int = 0) -> bytearray:
    """``length`` bytes from ``sock``, read straight into one buffer."""
    buf = bytearray(length)
    view = memoryview(buf)
    got = 0
    while got < length:
        n = sock.recv_into(view[got:])
        if n == 0:
            if got + received_before == 0:
                raise EOFError("peer closed the connection")
            raise EOFError(f"peer closed mid-frame ({received_before + got} bytes received)")
        got += n
    return buf


def _read_body(sock: Readable, length: int, opcode: int) -> bytearray:
    """``read_from``'s body: the caller read the header, so check its length here."""
    if length < 0:
        raise ProtocolError(f"negative frame length {length}", opcode, fatal=True)
    if length > DEFAULT_MAX_FRAME:
        raise ProtocolError(
            f"frame length {length} exceeds the limit of {DEFAULT_MAX_FRAME} bytes", opcode,
            fatal=True)
    return _recv_exactly(sock, length, FRAME_HEADER_SIZE)


class _Message:
    """Equality and repr over ``_fields``: messages are values.

    Instances take attributes a caller sets (``msg.note = ...``), as the
    original protocol package's did: the ``__dict__`` slot is made only when
    one is set, so decoding pays nothing for it.
    """

    __slots__ = ("__dict__",)
    _fields: ClassVar[Tuple[str, ...]] = ()
    opcode: ClassVar[int]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def to_bytes(self) -> bytes:
        """The whole frame: ``[u8 opcode][i32 length][body]``."""
        raise NotImplementedError

    def write_to(self, sock: Writable) -> None:
        """Send the whole frame (``sock.sendall``)."""
        sock.sendall(self.to_bytes())

    def read_from(self, sock: Readable, length: int) -> None:
        """Read a ``length``-byte body from ``sock`` (its header already read) and decode it."""
        self._decode(_read_body(sock, length, self.opcode))

    def _decode(self, body: "Buffer", row_type: RowType = "object",
                projected: bool = False) -> None:
        raise NotImplementedError


# -- table batches ----------------------------------------------------------

class TableMessage(_Message, Generic[_Row]):
    """A batch of rows of one table (opcodes 4–8, PROTOCOL.md §4).

    Wire body: ``[i32 nRows][i64 batchNumber][u8 status][string map] * nRows``.
    ``rows`` are row objects (``RawStore`` …) by default; ``columns`` are the
    keys the rows carry (all required keys, or a projection's inside a
    DataBatch); ``amount`` is the number of rows.

    ``TableMessage(opcode, required_keys, row_factory)`` builds the class of
    that table, as the original package's constructor did; ``row_factory``
    (called with each row's keys as keyword arguments) replaces the row class.
    """

    __slots__ = ("rows", "batch_number", "batch_status", "columns", "_row_factory")
    _fields: ClassVar[Tuple[str, ...]] = ("rows", "batch_number", "batch_status", "columns")
    table: ClassVar[TableSpec]
    rows: List[_Row]
    batch_number: int
    batch_status: int
    columns: Tuple[str, ...]

    if not TYPE_CHECKING:  # hidden from type checkers, which infer the row type from __init__
        def __new__(cls, opcode=None, *args, **kwargs):
            # TableMessage(opcode, ...) builds the class of that table (NewStores …).
            if cls is TableMessage:
                if opcode not in _TABLE_CLASSES:
                    raise ValueError(f"not a table opcode: {opcode!r}")
                cls = _TABLE_CLASSES[opcode]
            return super().__new__(cls)

    def __init__(self, opcode: Optional[int] = None,
                 required_keys: Optional[Sequence[str]] = None,
                 row_factory: Optional[Callable[..., _Row]] = None, *,
                 rows: Optional[List[_Row]] = None, batch_number: int = 0,
                 batch_status: int = BatchStatus.CONTINUE,
                 columns: Optional[Sequence[str]] = None) -> None:
        spec = _spec_for(type(self), opcode)
        if required_keys is not None and tuple(required_keys) != spec.required_keys:
            raise ValueError(f"required_keys of {spec.name} are {spec.required_keys}")
        if batch_status not in tuple(BatchStatus):
            raise ValueError(f"invalid batch status {batch_status!r}")
        self.rows = [] if rows is None else rows
        self.batch_number = batch_number
        self.batch_status = batch_status
        self.columns = spec.required_keys if columns is None else tuple(columns)
        self._row_factory = row_factory

    @property
    def amount(self) -> int:
        """The number of rows (``nRows`` on the wire)."""
        return len(self.rows)

    def _decode(self, body: "Buffer", row_type: RowType = "object",
                projected: bool = False) -> None:
        factory = self._row_factory
        if factory is not None and factory is not self.table.row_class:
            row_type = "dict"
        decoded: Any = codec.impl.decode_table_body(self.opcode, body, row_type, None, projected)
        # rows of _Row: the row type the caller's row_type chose
        self.batch_number, self.batch_status, self.columns, rows = decoded
        if factory is not None and factory is not self.table.row_class:
            rows = [factory(**row) for row in rows]
        self.rows = rows

    def to_bytes(self) -> bytes:
        """The whole frame: ``[u8 opcode][i32 length][table body]``."""
        columns = None if self.columns == self.table.required_keys else self.columns
        return codec.impl.encode_table_frame(self.opcode, self.batch_number, self.batch_status,
                                             self.rows, columns)


def _spec_for(cls: Type[TableMessage[Any]], opcode: Optional[int]) -> TableSpec:
    spec = cls.table
    if opcode is not None and opcode != spec.opcode:
        raise ValueError(f"{cls.__name__} has opcode {spec.opcode}, not {opcode!r}")
    return spec


class NewMenuItems(TableMessage[_MenuItemsRow]):
    """NEW_MENU_ITEMS (4): rows of ``RawMenuItems``."""

    __slots__ = ()
    table: ClassVar[TableSpec] = TABLES_BY_NAME["menu_items"]
    opcode: ClassVar[int] = table.opcode


class NewStores(TableMessage[_StoreRow]):
    """NEW_STORES (5): rows of ``RawStore``."""

    __slots__ = ()
    table: ClassVar[TableSpec] = TABLES_BY_NAME["stores"]
    opcode: ClassVar[int] = table.opcode


class NewTransactionItems(TableMessage[_TransactionItemRow]):
    """NEW_TRANSACTION_ITEMS (6): rows of ``RawTransactionItem``."""

    __slots__ = ()
    table: ClassVar[TableSpec] = TABLES_BY_NAME["transaction_items"]
    opcode: ClassVar[int] = table.opcode


class NewTransactions(TableMessage[_TransactionRow]):
    """NEW_TRANSACTION (7): rows of ``RawTransaction``."""

    __slots__ = ()
    table: ClassVar[TableSpec] = TABLES_BY_NAME["transactions"]
    opcode: ClassVar[int] = table.opcode


class NewUsers(TableMessage[_UserRow]):
    """NEW_USERS (8): rows of ``RawUser``."""

    __slots__ = ()
    table: ClassVar[TableSpec] = TABLES_BY_NAME["users"]
    opcode: ClassVar[int] = table.opcode


_TABLE_CLASSES: Dict[int, Type[TableMessage[Any]]] = {
    cls.table.opcode: cls
    for cls in (NewMenuItems, NewStores, NewTransactionItems, NewTransactions, NewUsers)
}
_TABLE_CLASSES_SET = frozenset(_TABLE_CLASSES.values())


# -- EOF, FINISHED, ACKs ----------------------------------------------------

class EOFMessage(TableMessage[NoReturn]):
    """EOF (9): every file of ``table_type`` has been sent (PROTOCOL.md §5).

    Wire body: ``[i32 1][i64 batchNumber][u8 1][i32 1]["table_type"][name]``.
    It carries no rows (``rows == []``) and ``amount`` is 1, as on the wire.
    """

    __slots__ = ("table_type",)
    _fields: ClassVar[Tuple[str, ...]] = ("batch_number", "table_type")
    opcode: ClassVar[int] = Opcodes.EOF
    rows: List[NoReturn]
    columns: Tuple[str, ...]
    batch_number: int
    batch_status: int
    table_type: str

    if not TYPE_CHECKING:
        def __new__(cls, *args, **kwargs):
            return _Message.__new__(cls)

    def __init__(self, batch_number: int = 0, table_type: str = "menu_items") -> None:
        if table_type not in TABLES_BY_NAME:
            raise ValueError(f"unknown table type {table_type!r}")
        self.rows = []
        self.columns = ("table_type",)
        self.batch_number = batch_number
        self.batch_status = BatchStatus.EOF
        self.table_type = table_type
        self._row_factory = None

    @staticmethod
    def create_eof_message(batch_number: int, table_type: str) -> "EOFMessage":
        """The EOF of ``table_type`` (a table name such as ``"menu_items"``)."""
        return EOFMessage(batch_number, table_type)

    @property
    def amount(self) -> int:
        """Always 1: the wire carries one row, ``{"table_type": name}``."""
        return 1

    def get_table_type(self) -> str:
        """The table this EOF ends (``table_type``)."""
        return self.table_type

    def _decode(self, body: "Buffer", row_type: RowType = "object",
                projected: bool = False) -> None:
        self.batch_number, self.table_type = codec.impl.decode_eof_body(body)
        self.batch_status = BatchStatus.EOF
        self.columns = ("table_type",)
        self.rows = []

    def to_bytes(self) -> bytes:
        """The whole EOF frame."""
        return codec.impl.encode_eof_frame(self.batch_number, self.table_type)


class Finished(_Message):
    """FINISHED (3): the agency has sent everything. Body ``[i32 agency_id]``."""

    __slots__ = ("agency_id",)
    _fields: ClassVar[Tuple[str, ...]] = ("agency_id",)
    opcode: ClassVar[int] = Opcodes.FINISHED
    agency_id: int

    def __init__(self, agency_id: int = 0) -> None:
        self.agency_id = agency_id

    def _decode(self, body: "Buffer", row_type: RowType = "object",
                projected: bool = False) -> None:
        self.agency_id = codec.impl.decode_finished_body(body)

    def to_bytes(self) -> bytes:
        """The whole FINISHED frame."""
        return codec.impl.encode_finished_frame(self.agency_id)


class _Ack(_Message):
    __slots__ = ()

    def _decode(self, body: "Buffer", row_type: RowType = "object",
                projected: bool = False) -> None:
        codec.impl.decode_ack_body(self.opcode, body)

    def to_bytes(self) -> bytes:
        """The whole frame: ``[u8 opcode][i32 0]``."""
        return codec.impl.encode_frame(self.opcode, b"")


class BatchRecvSuccess(_Ack):
    """BATCH_RECV_SUCCESS (1): the batch reached the sink. Empty body."""

    __slots__ = ()
    opcode: ClassVar[int] = Opcodes.BATCH_RECV_SUCCESS


class BatchRecvFail(_Ack):
    """BATCH_RECV_FAIL (2): the batch was invalid or could not be forwarded. Empty body."""

    __slots__ = ()
    opcode: ClassVar[int] = Opcodes.BATCH_RECV_FAIL


# -- what decoding gives ----------------------------------------------------

#: What a DataBatch may embed, rows as row objects (``DataBatch.batch_msg``).
EmbeddedMessage = Union[NewMenuItems, NewStores, NewTransactionItems, NewTransactions, NewUsers,
                        EOFMessage, Finished]
#: What a DataBatch may embed, decoded with ``row_type="dict"``.
DictRowsEmbedded = Union[NewMenuItems[DictRow], NewStores[DictRow],
                         NewTransactionItems[DictRow], NewTransactions[DictRow],
                         NewUsers[DictRow], EOFMessage, Finished]
#: What a DataBatch may embed, decoded with ``row_type="tuple"``.
TupleRowsEmbedded = Union[NewMenuItems[TupleRow], NewStores[TupleRow],
                          NewTransactionItems[TupleRow], NewTransactions[TupleRow],
                          NewUsers[TupleRow], EOFMessage, Finished]

if TYPE_CHECKING:
    _Embedded = TypeVar("_Embedded", default=EmbeddedMessage)
else:
    _Embedded = TypeVar("_Embedded")


# -- DataBatch --------------------------------------------------------------

class DataBatch(_Message, Generic[_Embedded]):
    """DATA_BATCH (0): the orchestrator's routing envelope (PROTOCOL.md §6).

    Wire body: ``[u8 list table_ids][u8 list query_ids][u16 reserved]
    [i64 batch_number][u8 dict meta][u16 total_shards][u16 shard_num]
    [embedded frame]``. ``batch_bytes`` is the embedded frame, whole;
    ``batch_msg`` the message it decodes to. Invalid header values raise
    ``ValueError`` (``TypeError`` for non-integers) at construction.
    ``batch_number`` defaults to the embedded batch's own (0 for FINISHED).
    """

    __slots__ = ("table_ids", "query_ids", "reserved_u16", "batch_number", "meta",
                 "total_shards", "shard_num", "batch_bytes", "_batch_msg")
    _fields: ClassVar[Tuple[str, ...]] = (
        "table_ids", "query_ids", "reserved_u16", "batch_number", "meta", "total_shards",
        "shard_num", "batch_bytes")
    opcode: ClassVar[int] = Opcodes.DATA_BATCH
    table_ids: List[int]
    query_ids: List[int]
    reserved_u16: int
    batch_number: int
    meta: Dict[int, int]
    total_shards: int
    shard_num: int
    batch_bytes: Optional[bytes]
    _batch_msg: Optional[_Embedded]

    def __init__(self, *, table_ids: Optional[Sequence[int]] = None,
                 query_ids: Optional[Sequence[int]] = None,
                 meta: Optional[Dict[int, int]] = None, total_shards: Optional[int] = None,
                 shard_num: Optional[int] = None, reserved_u16: int = 0,
                 batch_bytes: Optional["Buffer"] = None,
                 batch_number: Optional[int] = None) -> None:
        embedded = None
        if batch_bytes is not None:
            codec.impl.check_embedded(batch_bytes)
            embedded = bytes(batch_bytes)
        if batch_number is None:
            batch_number = _embedded_batch_number(embedded)
        self.table_ids = list(table_ids or ())
        self.query_ids = list(query_ids or ())
        self.meta = dict(meta or {})
        self.total_shards = 0 if total_shards is None else total_shards
        self.shard_num = 0 if shard_num is None else shard_num
        self.reserved_u16 = reserved_u16
        self.batch_number = batch_number
        self.batch_bytes = embedded
        self._batch_msg = None
        self._header()  # validates every header value

    @staticmethod
    def make_embedded(inner_opcode: int, inner_body: "Buffer") -> bytes:
        """Frame a message body for embedding: ``[u8 opcode][i32 len][body]``."""
        return codec.impl.encode_frame(inner_opcode, inner_body)

    @property
    def batch_msg(self) -> Optional[_Embedded]:
        """The embedded message, decoded (a projection decodes with ``None`` for dropped keys).

        ``None`` only while the DataBatch has no ``batch_bytes``.
        """
        if self._batch_msg is None and self.batch_bytes is not None:
            frame = self.batch_bytes
            embedded: Any = decode_message(frame[0], memoryview(frame)[FRAME_HEADER_SIZE:],
                                           projected=True)
            self._batch_msg = embedded
        return self._batch_msg

    def _header(self) -> bytes:
        return codec.impl.encode_databatch_header(
            self.table_ids, self.query_ids, self.reserved_u16, self.batch_number, self.meta,
            self.total_shards, self.shard_num)

    def to_bytes(self) -> bytes:
        """The whole DataBatch frame; ``ValueError`` without ``batch_bytes``."""
        if self.batch_bytes is None:
            raise ValueError("DataBatch has no embedded message (batch_bytes)")
        return codec.impl.encode_databatch_frame(
            self.table_ids, self.query_ids, self.reserved_u16, self.batch_number, self.meta,
            self.total_shards, self.shard_num, self.batch_bytes)

    def _decode(self, body: "Buffer", row_type: RowType = "object",
                projected: bool = False) -> None:
        (self.table_ids, self.query_ids, self.reserved_u16, self.batch_number, self.meta,
         self.total_shards, self.shard_num, inner_opcode,
         inner_at) = codec.impl.decode_databatch_body(body)
        view = byte_view(body)
        self.batch_bytes = bytes(view[inner_at - FRAME_HEADER_SIZE:])
        embedded: Any = decode_message(inner_opcode, view[inner_at:], row_type, projected=True)
        self._batch_msg = embedded  # of _Embedded: the row type the caller's row_type chose


def _embedded_batch_number(frame: Optional[bytes]) -> int:
    # Table and EOF bodies start [i32 nRows][i64 batchNumber]; FINISHED has none.
    if frame is None or frame[0] not in TABLES_BY_OPCODE and frame[0] != Opcodes.EOF:
        return 0
    if len(frame) < FRAME_HEADER_SIZE + 12:
        raise ValueError("embedded table frame is too short to hold a batch number")
    return int.from_bytes(frame[9:17], "little", signed=True)


#: What ``recv_msg`` / ``decode_frame`` / ``decode_message`` / ``FrameDecoder.feed``
#: give with the default ``row_type="object"``: table rows are row objects.
Message = Union[EmbeddedMessage, BatchRecvSuccess, BatchRecvFail, DataBatch[EmbeddedMessage]]
#: The same with ``row_type="dict"``: table rows (embedded ones too) are dicts.
DictRowsMessage = Union[DictRowsEmbedded, BatchRecvSuccess, BatchRecvFail,
                        DataBatch[DictRowsEmbedded]]
#: The same with ``row_type="tuple"``: table rows (embedded ones too) are tuples.
TupleRowsMessage = Union[TupleRowsEmbedded, BatchRecvSuccess, BatchRecvFail,
                         DataBatch[TupleRowsEmbedded]]
#: Any of them: what a ``row_type`` only known as a ``RowType`` gives.
AnyMessage = Union[Message, DictRowsMessage, TupleRowsMessage]


# -- decoding entry points --------------------------------------------------

_SIMPLE_CLASSES: Dict[int, Type[_Message]] = {
    Opcodes.DATA_BATCH: DataBatch, Opcodes.BATCH_RECV_SUCCESS: BatchRecvSuccess,
    Opcodes.BATCH_RECV_FAIL: BatchRecvFail, Opcodes.FINISHED: Finished, Opcodes.EOF: EOFMessage,
}


@overload
def decode_message(opcode: int, body: "Buffer", row_type: Literal["object"] = ...,
                   projected: bool = ...) -> Message: ...
@overload
def decode_message(opcode: int, body: "Buffer", row_type: Literal["dict"],
                   projected: bool = ...) -> DictRowsMessage: ...
@overload
def decode_message(opcode: int, body: "Buffer", row_type: Literal["tuple"],
                   projected: bool = ...) -> TupleRowsMessage: ...
@overload
def decode_message(opcode: int, body: "Buffer", row_type: RowType = ...,
                   projected: bool = ...) -> AnyMessage: ...
def decode_message(opcode: int, body: "Buffer", row_type: RowType = "object",
                   projected: bool = False) -> AnyMessage:
    """Decode one frame's body into its message object.

    ``row_type`` (``"object"``, ``"dict"`` or ``"tuple"``) shapes table rows;
    ``projected`` accepts a projected table body (a DataBatch's embedded one).
    """
    cls = _TABLE_CLASSES.get(opcode) or _SIMPLE_CLASSES.get(opcode)
    if cls is None:
        raise ProtocolError(f"unknown opcode {opcode}", opcode)
    msg: Any = _Message.__new__(cls)  # object.__new__: no Python frame
    if cls in _TABLE_CLASSES_SET:
        msg._row_factory = None
    msg._decode(body, row_type, projected)
    return msg  # type: ignore[no-any-return]  # the class of ``opcode``


@overload
def decode_frame(frame: "Buffer", max_frame: int = ...,
                 row_type: Literal["object"] = ...) -> Message: ...
@overload
def decode_frame(frame: "Buffer", max_frame: int, row_type: Literal["dict"]) -> DictRowsMessage: ...
@overload
def decode_frame(frame: "Buffer", max_frame: int = ..., *,
                 row_type: Literal["dict"]) -> DictRowsMessage: ...
@overload
def decode_frame(frame: "Buffer", max_frame: int,
                 row_type: Literal["tuple"]) -> TupleRowsMessage: ...
@overload
def decode_frame(frame: "Buffer", max_frame: int = ..., *,
                 row_type: Literal["tuple"]) -> TupleRowsMessage: ...
@overload
def decode_frame(frame: "Buffer", max_frame: int = ..., row_type: RowType = ...) -> AnyMessage: ...
def decode_frame(frame: "Buffer", max_frame: int = DEFAULT_MAX_FRAME,
                 row_type: RowType = "object") -> AnyMessage:
    """Decode one whole frame (header included) held in memory.

    A header that disagrees with the bytes given raises a fatal ``ProtocolError``.
    """
    opcode, length = codec.impl.read_frame_header(frame, 0, max_frame)
    view = byte_view(frame)  # lengths count bytes, whatever the item size
    if len(view) != FRAME_HEADER_SIZE + length:
        raise ProtocolError(
            f"frame length {length} does not match the {len(view) - FRAME_HEADER_SIZE} "
            f"bytes given", opcode, fatal=True)
    return decode_message(opcode, view[FRAME_HEADER_SIZE:], row_type)


@overload
def recv_msg(sock: Readable, max_frame: int = ...,
             row_type: Literal["object"] = ...) -> Message: ...
@overload
def recv_msg(sock: Readable, max_frame: int, row_type: Literal["dict"]) -> DictRowsMessage: ...
@overload
def recv_msg(sock: Readable, max_frame: int = ..., *,
             row_type: Literal["dict"]) -> DictRowsMessage: ...
@overload
def recv_msg(sock: Readable, max_frame: int, row_type: Literal["tuple"]) -> TupleRowsMessage: ...
@overload
def recv_msg(sock: Readable, max_frame: int = ..., *,
             row_type: Literal["tuple"]) -> TupleRowsMessage: ...
@overload
def recv_msg(sock: Readable, max_frame: int = ..., row_type: RowType = ...) -> AnyMessage: ...
def recv_msg(sock: Readable, max_frame: int = DEFAULT_MAX_FRAME,
             row_type: RowType = "object") -> AnyMessage:
    """Read one whole message from a blocking socket and decode it.

    Raises ``EOFError`` when the peer closes (before or inside the frame) and
    ``ProtocolError`` for a malformed frame; a frame over ``max_frame`` is
    refused from its header, before anything is allocated for it.
    """
    header = _recv_exactly(sock, FRAME_HEADER_SIZE)
    opcode, length = codec.impl.read_frame_header(header, 0, max_frame)
    return decode_message(opcode, _recv_exactly(sock, length, FRAME_HEADER_SIZE), row_type)
