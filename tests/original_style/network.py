"""ConnectionManager: one client, messages in a loop, one answer per batch."""
import logging
import socket
from typing import Any, List

from .batch_processor import BatchProcessor
from .protocol import (
    BatchRecvFail, BatchRecvSuccess, EOFMessage, Finished, ProtocolError, TableMessage, recv_msg,
)

log = logging.getLogger("original_style")


class ConnectionManager:
    def __init__(self, client_socket: socket.socket) -> None:
        self.client_socket = client_socket
        self.processor = BatchProcessor()
        self.eof_forwarded: List[bytes] = []
        self.agency_id: Any = None

    def handle_client(self) -> None:
        while True:
            try:
                msg = recv_msg(self.client_socket)
            except EOFError:
                return
            except ProtocolError as exc:
                log.error("action: receive | result: fail | error: %s", exc)
                BatchRecvFail().write_to(self.client_socket)
                continue
            if isinstance(msg, EOFMessage):
                log.info("action: eof_received | table_type: %s", msg.get_table_type())
                self.eof_forwarded.append(msg.to_bytes())
                BatchRecvSuccess().write_to(self.client_socket)
            elif isinstance(msg, TableMessage):
                wrapper = self.processor.process(msg)
                log.info("action: batch | result: success | amount: %s | filtered: %s",
                         msg.amount, len(wrapper.filtered_data["rows"]))
                BatchRecvSuccess().write_to(self.client_socket)
            elif isinstance(msg, Finished):
                self.agency_id = msg.agency_id
                return
