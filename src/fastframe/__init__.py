"""fastframe: the coffee-shop ingestion protocol, fast.

A binary framing codec in Cython with a pure-Python twin behind one API, the
message classes an orchestrator uses (``recv_msg``, ``DataBatch`` …), a
streaming client and a multi-client orchestrator. ``__impl__`` says which
codec loaded: ``"c"`` or ``"python"`` (see ``fastframe.codec``).
"""
from .codec import __impl__
from .errors import ProtocolError
from .framing import FrameDecoder, FrameReader
from .messages import (
    AnyMessage, BatchRecvFail, BatchRecvSuccess, DataBatch, DictRowsMessage, EmbeddedMessage,
    EOFMessage, Finished, Message, NewMenuItems, NewStores, NewTransactionItems, NewTransactions,
    NewUsers, TableMessage, TupleRowsMessage, decode_frame, decode_message, recv_msg,
)
from .rows import (
    DictRow, RawMenuItems, RawStore, RawTransaction, RawTransactionItem, RawUser, RowType,
    TableRow, TupleRow,
)
from .schema import TABLES, BatchStatus, Opcodes

__version__ = "0.1.0"

__all__ = [
    "__impl__", "__version__", "ProtocolError", "Opcodes", "BatchStatus", "TABLES",
    "recv_msg", "decode_frame", "decode_message", "FrameReader", "FrameDecoder",
    "TableMessage", "NewMenuItems", "NewStores", "NewTransactionItems", "NewTransactions",
    "NewUsers", "EOFMessage", "Finished", "BatchRecvSuccess", "BatchRecvFail", "DataBatch",
    "Message", "EmbeddedMessage", "DictRowsMessage", "TupleRowsMessage", "AnyMessage",
    "RawMenuItems", "RawStore", "RawTransactionItem", "RawTransaction", "RawUser",
    "RowType", "TableRow", "DictRow", "TupleRow",
]
