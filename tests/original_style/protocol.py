"""The protocol package: with fastframe, nothing but re-exports (the import lines)."""
from fastframe import (  # noqa: F401
    BatchRecvFail, BatchRecvSuccess, DataBatch, EOFMessage, Finished, NewMenuItems, NewStores,
    NewTransactionItems, NewTransactions, NewUsers, Opcodes, ProtocolError, TableMessage,
    recv_msg,
)
