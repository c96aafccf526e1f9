"""BatchProcessor: a table message in, the DataBatch to forward out."""
from typing import Any, List

from .filters import FILTERS
from .protocol import DataBatch
from .serialization import serialize_filtered_rows


class BatchProcessor:
    def __init__(self) -> None:
        self.forwarded: List[Any] = []  # what would go to the queues

    def process(self, msg: Any) -> Any:
        filter_rows, query_ids = FILTERS[type(msg)]
        filtered = filter_rows(msg.rows)
        body = serialize_filtered_rows(filtered, msg.batch_number, msg.batch_status)
        wrapper = DataBatch(table_ids=[1], query_ids=query_ids, meta={}, total_shards=0,
                            shard_num=0, batch_bytes=DataBatch.make_embedded(msg.opcode, body))
        # The original keeps the filtered rows on the envelope for its logs.
        wrapper.filtered_data = {"table": type(msg).__name__, "rows": filtered,
                                 "amount": msg.amount}
        self.forwarded.append(wrapper)
        return wrapper
