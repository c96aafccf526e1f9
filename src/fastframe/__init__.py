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
    BatchRecvFail, BatchRecvSuccess, DataBatch, EOFMessage, Finished, NewMenuItems, NewStores,
    NewTransactionItems, NewTransactions, NewUsers, TableMessage, decode_frame, decode_message,
    recv_msg,
)
from .rows import RawMenuItems, RawStore, RawTransaction, RawTransactionItem, RawUser
from .schema import TABLES, BatchStatus, Opcodes

__version__ = "0.1.0"

__all__ = [
    "__impl__", "__version__", "ProtocolError", "Opcodes", "BatchStatus", "TABLES",
    "recv_msg", "decode_frame", "decode_message", "FrameReader", "FrameDecoder",
    "TableMessage", "NewMenuItems", "NewStores", "NewTransactionItems", "NewTransactions",
    "NewUsers", "EOFMessage", "Finished", "BatchRecvSuccess", "BatchRecvFail", "DataBatch",
    "RawMenuItems", "RawStore", "RawTransactionItem", "RawTransaction", "RawUser",
]
