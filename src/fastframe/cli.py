"""``fastframe`` command line: gen, serve, send, demo, inspect."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import __impl__, __version__, codec
from .client import Cancelled, Client, ClientError, SendSummary, read_table_csv
from .errors import ProtocolError
from .messages import DataBatch, EOFMessage, Finished, TableMessage, decode_frame
from .orchestrator import Orchestrator
from .orchestrator.admission import default_max_connections
from .schema import DEFAULT_MAX_FRAME, MAX_BATCH_FRAME, TABLES, BatchStatus, Opcodes
from .sinks import open_sink
from .sinks.file import FSYNC_POLICIES, FileSink, read_frames

MB = 1_000_000


def _address(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


# -- progress --------------------------------------------------------------

class ProgressLine:
    """Rows, MB and MB/s per table on one terminal line; silent when not a TTY."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.perf_counter()
        self.table = ""
        self.rows = 0
        self.bytes = 0
        self._last = 0.0

    def __call__(self, table: str, rows: int, nbytes: int) -> None:
        if table != self.table:
            self._end_line()
            self.table, self.rows, self.bytes = table, 0, 0
            self.started = time.perf_counter()
        self.rows += rows
        self.bytes += nbytes
        now = time.perf_counter()
        if self.enabled and now - self._last > 0.1:
            self._last = now
            rate = self.bytes / MB / max(now - self.started, 1e-9)
            self.stream.write(f"\r{table:<18} {self.rows:>12,} rows {self.bytes / MB:>9.1f} MB "
                              f"{rate:>8.1f} MB/s")
            self.stream.flush()

    def _end_line(self) -> None:
        if self.enabled and self.table:
            self.stream.write("\n")

    def close(self) -> None:
        self._end_line()
        self.table = ""


def _summary_line(summary: SendSummary) -> str:
    rows = sum(summary.rows.values())
    rate = summary.bytes_sent / MB / max(summary.seconds, 1e-9)
    return (f"sent {rows:,} rows in {sum(summary.batches.values()):,} batches, "
            f"{summary.bytes_sent / MB:.1f} MB in {summary.seconds:.2f} s ({rate:.1f} MB/s), "
            f"{summary.retries} retries, {summary.reconnects} reconnects")


# -- commands --------------------------------------------------------------

def cmd_gen(args: argparse.Namespace) -> int:
    from .datagen import generate

    started = time.perf_counter()
    summary = generate(args.dir, transactions=args.transactions, seed=args.seed)
    print(json.dumps(summary, indent=1))
    print(f"generated {args.dir} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .orchestrator.tls import server_context

    _setup_logging(args.log_level)
    tls = (args.tls_cert, args.tls_key)
    if any(tls) and not all(tls):
        print("fastframe serve: error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.tls_client_ca and not all(tls):
        print("fastframe serve: error: --tls-client-ca needs --tls-cert and --tls-key",
              file=sys.stderr)
        return 2
    try:
        context = server_context(args.tls_cert, args.tls_key, args.tls_client_ca) \
            if args.tls_cert else None
    except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
        print(f"fastframe serve: error: TLS files: {exc}", file=sys.stderr)
        return 2
    options = {"fsync": args.fsync} if args.sink.startswith("file:") else {}
    sink = open_sink(args.sink, **options)
    try:
        server = Orchestrator(
            sink, args.host, args.port, max_frame=args.max_frame, compat=args.compat,
            max_connections=args.max_connections, max_buffer_bytes=args.max_buffer_bytes,
            header_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
            frame_timeout=args.frame_timeout, max_invalid=args.max_invalid, ssl_context=context)
    except ValueError as exc:
        sink.close()
        print(f"fastframe serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        sink.close()
        print(f"fastframe serve: error: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.request_shutdown())
    server.serve_forever()
    return 0


def _send_tls_context(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """``send``'s TLS context from --tls-ca/--tls-cert/--tls-key (``None``: plaintext)."""
    from .orchestrator.tls import client_context

    if args.tls_cert and not args.tls_key or args.tls_key and not args.tls_cert:
        raise ValueError("--tls-cert and --tls-key go together")
    if not args.tls_ca:
        if args.tls_cert:
            raise ValueError("--tls-cert needs --tls-ca, the CA that signed the server's")
        return None
    return client_context(args.tls_ca, args.tls_cert, args.tls_key)


def cmd_send(args: argparse.Namespace) -> int:
    progress = ProgressLine()
    try:
        context = _send_tls_context(args)
    except (OSError, ValueError) as exc:   # ssl.SSLError is an OSError
        print(f"fastframe send: error: TLS files: {exc}", file=sys.stderr)
        return 2
    client = Client(args.server, args.agency_id, batch_rows=args.batch_rows,
                    max_batch_bytes=args.max_batch_bytes, window=args.window, progress=progress,
                    ssl_context=context)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: client.cancel(s))
    try:
        summary = client.send_folder(args.dir)
    except Cancelled as exc:
        progress.close()
        print(f"fastframe send: {exc}; the batch in progress went out with status CANCEL",
              file=sys.stderr)
        return 128 + exc.signum
    except ClientError as exc:
        progress.close()
        print(f"fastframe send: error: {exc}", file=sys.stderr)
        return 1
    progress.close()
    print(_summary_line(summary))
    return 0


def _count_csv_rows(data: Path) -> Dict[str, int]:
    counts = {}
    for spec in TABLES:
        folder = data / spec.name
        if folder.is_dir():
            counts[spec.name] = sum(1 for p in sorted(folder.glob("*.csv"))
                                    for _ in read_table_csv(p, spec))
    return counts


def _count_sink_rows(path: Path) -> Tuple[Dict[str, int], Dict[str, int], int, int]:
    """Rows and batches per table, EOFs and FINISHEDs found in a sink file."""
    rows: Dict[str, int] = {}
    batches: Dict[str, int] = {}
    eofs = finished = 0
    for frame in read_frames(path):
        inner = decode_frame(frame).batch_msg
        if isinstance(inner, EOFMessage):
            eofs += 1
        elif isinstance(inner, Finished):
            finished += 1
        else:
            name = inner.table.name
            rows[name] = rows.get(name, 0) + inner.amount
            batches[name] = batches.get(name, 0) + 1
    return rows, batches, eofs, finished


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    if args.data is None:
        from .datagen import generate

        if data.exists():
            shutil.rmtree(data)
        print(f"generating {args.transactions:,} transactions into {data} ...")
        generate(data, transactions=args.transactions, seed=args.seed)
    sink_path = out / "sink.bin"
    sink_path.unlink(missing_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    server = Orchestrator(FileSink(sink_path, fsync=args.fsync), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, name="fastframe-serve")
    thread.start()
    print(f"orchestrator on {server.address[0]}:{server.address[1]} (codec: {__impl__}), "
          f"sink {sink_path}")
    progress = ProgressLine(sys.stdout)
    try:
        summary = Client(server.address, agency_id=1, progress=progress).send_folder(data)
    except ClientError as exc:
        print(f"fastframe demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()
        server.shutdown()
        thread.join()
    expected = _count_csv_rows(data)
    stored, batches, eofs, finished = _count_sink_rows(sink_path)
    print(f"\n{'table':<18} {'csv rows':>12} {'in sink':>12} {'batches':>8}")
    for name, n in expected.items():
        print(f"{name:<18} {n:>12,} {stored.get(name, 0):>12,} {batches.get(name, 0):>8,}")
    size = sink_path.stat().st_size
    rate = summary.bytes_sent / MB / max(summary.seconds, 1e-9)
    print(f"\nbytes in: {summary.bytes_sent / MB:.1f} MB   bytes out: {size / MB:.1f} MB   "
          f"time: {summary.seconds:.2f} s   throughput: {rate:.1f} MB/s")
    print(f"EOF frames: {eofs}   FINISHED frames: {finished}   output: {sink_path}")
    ok = stored == expected and eofs == len(expected) and finished == 1
    print("result: every row arrived" if ok else "result: MISMATCH between the CSVs and the sink")
    return 0 if ok else 1


def _describe(index: int, offset: int, msg) -> dict:
    item = {"index": index, "offset": offset, "type": type(msg).__name__,
            "opcode": int(msg.opcode)}
    if isinstance(msg, DataBatch):
        item.update(table_ids=msg.table_ids, query_ids=msg.query_ids,
                    reserved=msg.reserved_u16, batch_number=msg.batch_number, meta=msg.meta,
                    total_shards=msg.total_shards, shard_num=msg.shard_num,
                    embedded=_describe(index, offset, msg.batch_msg))
    elif isinstance(msg, EOFMessage):
        item.update(batch_number=msg.batch_number, table_type=msg.table_type)
    elif isinstance(msg, TableMessage):
        item.update(table=msg.table.name, batch_number=msg.batch_number,
                    status=BatchStatus(msg.batch_status).name, rows=msg.amount,
                    columns=list(msg.columns),
                    data=[{k: getattr(r, k) for k in msg.columns} for r in msg.rows])
    elif isinstance(msg, Finished):
        item.update(agency_id=msg.agency_id)
    return item


def _print_text(item: dict, rows: int, indent: str = "") -> None:
    fields = " ".join(f"{k}={v}" for k, v in item.items()
                      if k not in ("index", "offset", "type", "opcode", "embedded", "data"))
    print(f"{indent}#{item['index']} @{item['offset']} {item['type']} {fields}")
    for row in item.get("data", [])[:rows]:
        print(f"{indent}    {row}")
    if "embedded" in item:
        _print_text(item["embedded"], rows, indent + "  ")


def cmd_inspect(args: argparse.Namespace) -> int:
    offset = 0
    try:
        for index, frame in enumerate(read_frames(args.file)):
            item = _describe(index, offset, decode_frame(frame, max_frame=len(frame)))
            if args.json:
                print(json.dumps(item, ensure_ascii=False))
            else:
                _print_text(item, args.rows)
            offset += len(frame)
    except (ProtocolError, OSError) as exc:
        print(f"fastframe inspect: {args.file}: {exc}", file=sys.stderr)
        return 1
    return 0


# -- parser ----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastframe", description=__doc__)
    parser.add_argument("--version", action="version",
                        version=f"fastframe {__version__} (codec: {codec.__impl__})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("gen", help="write a synthetic data set")
    p.add_argument("dir")
    p.add_argument("--transactions", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_gen)

    p = sub.add_parser("serve", help="run the orchestrator")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback; anything else is a deliberate choice)")
    p.add_argument("--port", type=int, default=12345)
    p.add_argument("--sink", default="file:fastframe-sink.bin",
                   help="file:PATH or amqp://USER:PASS@HOST:PORT/VHOST")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="file sink: fsync before every ACK (always) or leave it to the OS")
    p.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME,
                   help="largest frame body accepted, in bytes (default %(default)s)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="connections open at once; a newcomer beyond is closed at once "
                        f"(default min(4096, fd limit - 64), here {default_max_connections()})")
    p.add_argument("--max-buffer-bytes", type=int, default=64 * 2**20,
                   help="frame bytes held across all connections (default %(default)s)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds for the TLS handshake and the first frame header "
                        "(default %(default)s)")
    p.add_argument("--frame-timeout", type=float, default=30.0,
                   help="seconds for each frame from its header to its last byte, waits for "
                        "buffer budget included (default %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds a connection may stay silent between frames "
                        "(default %(default)s)")
    p.add_argument("--max-invalid", type=int, default=100,
                   help="invalid frames in a row before the connection is closed "
                        "(default %(default)s)")
    p.add_argument("--compat", action="store_true",
                   help="the original orchestrator's bytes: its DataBatch header values, "
                        "and no answer to a stored FINISHED")
    p.add_argument("--tls-cert", help="TLS: the server's certificate chain (PEM); "
                                      "default plaintext")
    p.add_argument("--tls-key", help="TLS: the server certificate's private key (PEM)")
    p.add_argument("--tls-client-ca", help="TLS: require client certificates signed by this CA "
                                           "(PEM); the certificate's CN agency-N names the agency")
    p.add_argument("--log-level", default="info")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("send", help="stream a data folder to an orchestrator")
    p.add_argument("dir")
    p.add_argument("--server", type=_address, default=("127.0.0.1", 12345))
    p.add_argument("--agency-id", type=int, required=True)
    p.add_argument("--batch-rows", type=int, default=50_000)
    p.add_argument("--max-batch-bytes", type=int, default=MAX_BATCH_FRAME)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--tls-ca", help="TLS: the CA that signed the orchestrator's certificate "
                                    "(PEM); default plaintext")
    p.add_argument("--tls-cert", help="TLS: this agency's client certificate (PEM)")
    p.add_argument("--tls-key", help="TLS: the client certificate's private key (PEM)")
    p.set_defaults(run=cmd_send)

    p = sub.add_parser("demo", help="generate, serve, send and check, end to end")
    p.add_argument("--out", default="fastframe-demo")
    p.add_argument("--data", help="send this folder instead of generating one")
    p.add_argument("--transactions", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="always")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("inspect", help="print the frames of a sink file or a capture")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.add_argument("--rows", type=int, default=3, help="rows shown per batch in text mode")
    p.set_defaults(run=cmd_inspect)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
