"""Query 1 as a worker: the transactions of 2024 and 2025 made between 06:00 and
23:00 with ``final_amount`` >= 75, from the orchestrator's RabbitMQ queue.

    python examples/query1_worker.py amqp://guest:guest@127.0.0.1:5672/%2F --until-idle 5

It consumes the durable queue of query 1 (``fastframe.query.1``; the URL's
``?exchange=`` picks another topology), turns each transactions batch into an
Arrow record batch without a Python object per value
(``fastframe.codec.decode_arrow``), filters it with Polars, and acks the
message once its matches are kept. It prints how many transactions match and
the first of them (by ``created_at``, then ``transaction_id``). "Between 06:00
and 23:00" includes both ends: 06:00:00 <= time of day <= 23:00:00.

A one-shot report: the matches live in memory, so a worker killed part-way
has consumed batches whose matches are gone. To keep them, drain the queue
into a file first (``fastframe consume URL --query 1 --out file:q1.bin``).

Needs: ``pip install 'fastframe[rabbitmq,arrow]' polars`` (see README.md here).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, Sequence

import polars as pl

from fastframe import codec
from fastframe.consumer import Consumer, ConsumerError
from fastframe.messages import NewTransactions

COLUMNS = ["transaction_id", "final_amount", "created_at"]
YEARS = ("2024", "2025")
FIRST_TIME, LAST_TIME = "06:00:00", "23:00:00"
MIN_FINAL_AMOUNT = 75.0


def arrow_batch(frame: bytes) -> Any:
    """The transactions of one DataBatch frame as an Arrow batch (PyCapsule interface)."""
    return codec.decode_arrow(frame, columns=COLUMNS)


def query1(batch: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``batch`` that query 1 keeps, ``final_amount`` as a number."""
    created = pl.col("created_at")
    return batch.with_columns(pl.col("final_amount").cast(pl.Float64)).filter(
        created.str.slice(0, 4).is_in(YEARS)
        & created.str.slice(11, 8).is_between(pl.lit(FIRST_TIME), pl.lit(LAST_TIME))
        & (pl.col("final_amount") >= MIN_FINAL_AMOUNT))


def run(url: str, until_idle: Optional[float], prefetch: int) -> pl.DataFrame:
    """Consume query 1's queue until it is idle; the matching transactions, sorted."""
    matches: List[pl.DataFrame] = []
    with Consumer(url, 1, prefetch=prefetch) as consumer:
        for message in consumer.messages(until_idle=until_idle):
            with message:   # acked once its matches are kept
                inner = message.batch.batch_msg
                if isinstance(inner, NewTransactions):
                    matches.append(query1(pl.DataFrame(arrow_batch(message.frame))))
    if not matches:
        return pl.DataFrame(schema={"transaction_id": pl.String, "final_amount": pl.Float64,
                                    "created_at": pl.String})
    return pl.concat(matches).sort(["created_at", "transaction_id"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="amqp://USER:PASS@HOST:PORT/VHOST[?exchange=NAME]")
    parser.add_argument("--until-idle", type=float, default=5.0, metavar="SECONDS",
                        help="stop once the queue gave nothing for this long (default 5)")
    parser.add_argument("--prefetch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=10, help="matching rows to print")
    args = parser.parse_args(argv)
    if not hasattr(codec, "decode_arrow"):
        print("query1_worker: this fastframe has no codec.decode_arrow", file=sys.stderr)
        return 1
    try:
        result = run(args.url, args.until_idle, args.prefetch)
    except ConsumerError as exc:
        print(f"query1_worker: {exc}", file=sys.stderr)
        return 1
    print(f"count: {result.height}")
    for row in result.head(args.rows).iter_rows():
        print(f"{row[0]}  {row[1]:.2f}  {row[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
