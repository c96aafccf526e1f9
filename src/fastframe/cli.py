"""``fastframe`` command line: gen, serve, send, demo, consume, inspect.

A mistake an operator can make (a bad option value, a busy port, a sink that
cannot be opened, a server that does not answer) ends in one line on stderr,
``fastframe COMMAND: error: WHAT``, and exit status 2 for a usage error or 1
for a runtime one; never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import ssl
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import (
    Any, Callable, Dict, Iterable, Iterator, List, Mapping, NoReturn, Optional, Sequence, TextIO,
    Tuple,
)
from urllib.parse import unquote, urlsplit

from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from . import __impl__, __version__, codec
from .client import Cancelled, Client, ClientError, SendSummary, read_table_csv
from .errors import ProtocolError
from .messages import DataBatch, EOFMessage, Finished, TableMessage, decode_frame
from .orchestrator import Orchestrator
from .orchestrator.admission import default_max_connections
from .schema import (
    DEFAULT_MAX_FRAME, FRAME_HEADER_SIZE, MAX_BATCH_FRAME, TABLE_HEADER_SIZE, TABLES, BatchStatus,
)
from .sinks import QUEUE_TYPES, Sink, SinkError, open_sink
from .sinks.file import FSYNC_POLICIES, FileSink, read_frames

MB = 1_000_000
USAGE, RUNTIME = 2, 1  # exit statuses
AMQP_URL_ENV = "FASTFRAME_AMQP_URL"
DEFAULT_SINK = "file:fastframe-sink.bin"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_I32_MAX = (1 << 31) - 1

log: logging.Logger = logging.getLogger("fastframe.cli")


class CommandError(Exception):
    """A command cannot go on; ``status`` is the exit status (``USAGE`` or ``RUNTIME``)."""

    def __init__(self, message: str, status: int = RUNTIME) -> None:
        super().__init__(message)
        self.status = status


# -- secrets -------------------------------------------------------------------------

# The password of a URL's user information: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)[^@\s]*@")


class Redactor:
    """Masks passwords in text: any URL's, and each secret it was given, as ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: List[str] = sorted({s for s in secrets if s}, key=len, reverse=True)

    @classmethod
    def for_url(cls, url: str) -> "Redactor":
        """A redactor for the password of ``url``, as written and percent-decoded."""
        try:
            password = urlsplit(url).password or ""
        except ValueError:
            password = ""
        return cls([password, unquote(password)])

    def __call__(self, text: str) -> str:
        text = _URL_PASSWORD.sub(r"\1***@", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


_mask_urls = Redactor()


# -- option values -------------------------------------------------------------------

def _integer(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``minimum..maximum``."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if maximum is None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:,}, got {value:,}")
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be in {minimum:,}..{maximum:,}, got {value:,}")
        return value
    return parse


def _seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


_port = _integer(0, 65535)
_server_port = _integer(1, 65535)


def _server_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``; an empty host is loopback."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise argparse.ArgumentTypeError(f"expected [IPV6]:PORT, got {text!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise argparse.ArgumentTypeError(
                f"an IPv6 address goes in brackets: [{host}]:{port}")
    return host or "127.0.0.1", _server_port(port)


def _sink_value(text: str) -> str:
    """``file:PATH``, ``amqp://…``, ``amqps://…`` or ``amqp`` (the URL in the environment)."""
    if text == "amqp" or text.startswith(("amqp://", "amqps://")):
        return text
    if text.startswith("file:") and len(text) > len("file:"):
        return text
    raise argparse.ArgumentTypeError(
        f"expected file:PATH, an amqp:// or amqps:// URL, or amqp (the URL in "
        f"${AMQP_URL_ENV}), got {_mask_urls(text)!r}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_sink(value: Optional[str], environ: Mapping[str, str]) -> str:
    """The sink URL ``serve`` uses; the precedence the README states.

    ``--sink file:PATH`` or ``--sink amqp://…`` as given; ``--sink amqp`` the
    URL in ``FASTFRAME_AMQP_URL`` (a usage error when unset); no ``--sink``:
    that URL when set, else ``file:fastframe-sink.bin``.
    """
    from_env = environ.get(AMQP_URL_ENV, "")
    if value is not None and value != "amqp":
        return value
    if not from_env:
        if value == "amqp":
            raise CommandError(f"--sink amqp: ${AMQP_URL_ENV} is not set", USAGE)
        return DEFAULT_SINK
    if not from_env.startswith(("amqp://", "amqps://")):
        raise CommandError(f"${AMQP_URL_ENV}: expected an amqp:// or amqps:// URL, "
                           f"got {_mask_urls(from_env)!r}", USAGE)
    return from_env


# -- logging -------------------------------------------------------------------------

def parse_event(message: str) -> Optional[Dict[str, Any]]:
    """The fields of an ``action: x | result: y | k: v`` log message, else ``None``.

    Values are strings, except whole integers, which become ``int``.
    """
    fields: Dict[str, Any] = {}
    for part in message.split(" | "):
        key, sep, value = part.partition(": ")
        if not sep or not key.isidentifier():
            return None
        fields[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    return fields if next(iter(fields), None) == "action" else None


class TextLogFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER MESSAGE`` lines, passwords masked."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record, passwords masked.

    Keys: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``; for a
    message of the ``action: x | result: y | k: v`` shape also ``action``,
    ``result`` and ``fields`` (the other pairs); ``exception`` when the record
    carries one.
    """

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        message = self.redact(record.getMessage())
        item: Dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
                            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        event = parse_event(message)
        if event is not None:
            item["action"] = event.pop("action")
            if "result" in event:
                item["result"] = event.pop("result")
            item["fields"] = event
        if record.exc_info:
            item["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(item, ensure_ascii=False)


class _ProgressAwareHandler(logging.Handler):
    """Writes ``PREFIX: MESSAGE`` lines to a stream without tearing a progress bar."""

    def __init__(self, stream: TextIO, prefix: str) -> None:
        super().__init__()
        self.stream = stream
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(f"{self.prefix}: {self.format(record)}", file=self.stream)
        except Exception:
            self.handleError(record)


# -- progress ------------------------------------------------------------------------

class TableProgress:
    """A tqdm bar per table of ACKed bytes, with its rate and ACKed rows.

    Silent unless ``stream`` is a terminal. The rows are set before the byte
    count whose update may redraw, so every redraw shows one moment's counts;
    ``close`` (and the next table) draws the final ones. A redraw comes at
    most every ``redraw_every`` seconds.
    """

    def __init__(self, stream: TextIO, redraw_every: float = 0.1) -> None:
        self.stream = stream
        self.redraw_every = redraw_every
        self._bar: Any = None
        self._table = ""
        self._rows = 0

    def __call__(self, table: str, rows: int, nbytes: int) -> None:
        if self._bar is None or table != self._table:
            self.close()
            self._table, self._rows = table, 0
            self._bar = tqdm(desc=f"{table:<18}", file=self.stream, disable=None, leave=True,
                             postfix="0 rows", mininterval=self.redraw_every, miniters=1,
                             unit="B", unit_scale=True, unit_divisor=1000,
                             bar_format="{desc} {n_fmt:>6}B {rate_fmt:>10} {elapsed}{postfix}")
        self._rows += rows
        self._bar.set_postfix_str(f"{self._rows:,} rows", refresh=False)
        self._bar.update(nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _summary_line(summary: SendSummary) -> str:
    rows = sum(summary.rows.values())
    rate = summary.bytes_sent / MB / max(summary.seconds, 1e-9)
    return (f"sent {rows:,} rows in {sum(summary.batches.values()):,} batches, "
            f"{summary.bytes_sent / MB:.1f} MB in {summary.seconds:.2f} s ({rate:.1f} MB/s), "
            f"{summary.retries} retries, {summary.reconnects} reconnects")


def _data_folder(path: Path) -> Path:
    if not path.is_dir():
        problem = "not a directory" if path.exists() else "no such directory"
        raise CommandError(f"data folder {path}: {problem}", USAGE)
    return path


# -- commands ------------------------------------------------------------------------

def cmd_gen(args: argparse.Namespace) -> int:
    from .datagen import generate

    started = time.perf_counter()
    summary = generate(args.dir, transactions=args.transactions, seed=args.seed)
    print(json.dumps(summary, indent=1))
    print(f"generated {args.dir} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    sink_url = resolve_sink(args.sink, os.environ)
    redact = Redactor.for_url(sink_url)
    formatter: logging.Formatter = (JsonLogFormatter(redact) if args.log_format == "json"
                                    else TextLogFormatter(redact))
    try:
        with _logging_to_stderr(formatter, args.log_level):
            return _serve(args, sink_url)
    except CommandError as exc:
        raise CommandError(redact(str(exc)), exc.status) from None


@contextlib.contextmanager
def _logging_to_stderr(formatter: logging.Formatter, level: str) -> Iterator[None]:
    """Every logger to stderr at ``level`` while the block runs; pika's only at debug.

    pika logs each failed connection attempt as several errors with a
    traceback; the RabbitMQ sink reports the same attempt in one line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root, pika_log = logging.getLogger(), logging.getLogger("pika")
    saved = root.level, pika_log.level
    root.addHandler(handler)
    root.setLevel(level.upper())
    if level != "debug":
        pika_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        pika_log.setLevel(saved[1])


def _open_sink(url: str, fsync: str, queue_type: Optional[str]) -> Sink:
    options: Dict[str, Any] = ({"fsync": fsync} if url.startswith("file:")
                               else {"queue_type": queue_type})
    try:
        return open_sink(url, **options)
    except ImportError as exc:
        raise CommandError(f"the AMQP sink needs pika (pip install 'fastframe[rabbitmq]'): "
                           f"{exc}") from None
    except ValueError as exc:  # a URL that pika cannot read
        raise CommandError(f"--sink: {exc}", USAGE) from None
    except OSError as exc:
        raise CommandError(f"cannot open sink {url}: {exc.strerror or exc}") from None
    except SinkError as exc:
        raise CommandError(f"cannot open sink: {exc}") from None


def _server_tls_context(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """``serve``'s TLS context from --tls-cert/--tls-key/--tls-client-ca (``None``: plaintext)."""
    from .orchestrator.tls import server_context

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together", USAGE)
    if args.tls_client_ca and not args.tls_cert:
        raise CommandError("--tls-client-ca needs --tls-cert and --tls-key", USAGE)
    if not args.tls_cert:
        return None
    try:
        return server_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise CommandError(f"TLS files: {exc}", USAGE) from None


def _serve(args: argparse.Namespace, sink_url: str) -> int:
    context = _server_tls_context(args)
    sink = _open_sink(sink_url, args.fsync, args.queue_type)
    try:
        server = Orchestrator(
            sink, args.host, args.port, max_frame=args.max_frame, compat=args.compat,
            max_connections=args.max_connections, max_buffer_bytes=args.max_buffer_bytes,
            header_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
            frame_timeout=args.frame_timeout, max_invalid=args.max_invalid, ssl_context=context)
    except ValueError as exc:  # limits that do not fit together
        sink.close()
        raise CommandError(str(exc), USAGE) from None
    except OSError as exc:
        sink.close()
        raise CommandError(f"cannot listen on {_host_port(args.host, args.port)}: "
                           f"{exc.strerror or exc}") from None
    log.info("action: open_sink | result: success | sink: %s", sink_url)  # password masked
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.request_shutdown())
    server.serve_forever()
    return 0


def _send_tls_context(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """``send``'s TLS context from --tls-ca/--tls-cert/--tls-key (``None``: plaintext)."""
    from .orchestrator.tls import client_context

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together", USAGE)
    if not args.tls_ca:
        if args.tls_cert:
            raise CommandError("--tls-cert needs --tls-ca, the CA that signed the server's",
                               USAGE)
        return None
    try:
        return client_context(args.tls_ca, args.tls_cert, args.tls_key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise CommandError(f"TLS files: {exc}", USAGE) from None


def cmd_send(args: argparse.Namespace) -> int:
    folder = _data_folder(args.dir)
    context = _send_tls_context(args)
    progress = TableProgress(sys.stderr)
    client = Client(args.server, args.agency_id, batch_rows=args.batch_rows,
                    max_batch_bytes=args.max_batch_bytes, window=args.window, progress=progress,
                    connect_attempts=args.connect_attempts,
                    finished_ack=not args.no_finished_ack, ssl_context=context)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: client.cancel(s))
    # The client's retries ("waiting for HOST:PORT ...") go to stderr as they happen.
    retries = _ProgressAwareHandler(sys.stderr, "fastframe send")
    client_log = logging.getLogger("fastframe.client")
    client_log.addHandler(retries)
    try:
        summary = client.send_folder(folder)
    except Cancelled as exc:
        progress.close()
        print(f"fastframe send: {exc}; the batch in progress went out with status CANCEL "
              f"unless the orchestrator was out of reach", file=sys.stderr)
        return 128 + exc.signum
    except ClientError as exc:
        progress.close()
        raise CommandError(str(exc)) from None
    finally:
        client_log.removeHandler(retries)
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
        wrapper = decode_frame(frame)
        inner = wrapper.batch_msg if isinstance(wrapper, DataBatch) else None
        if isinstance(inner, EOFMessage):
            eofs += 1
        elif isinstance(inner, Finished):
            finished += 1
        elif isinstance(inner, TableMessage):
            name = inner.table.name
            rows[name] = rows.get(name, 0) + inner.amount
            batches[name] = batches.get(name, 0) + 1
    return rows, batches, eofs, finished


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    data = _data_folder(Path(args.data)) if args.data else out / "data"
    out.mkdir(parents=True, exist_ok=True)
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
    progress = TableProgress(sys.stdout)
    try:
        summary = Client(server.address, agency_id=1, progress=progress).send_folder(data)
    except ClientError as exc:
        raise CommandError(str(exc)) from None
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


def cmd_consume(args: argparse.Namespace) -> int:
    from .consumer import Consumer, ConsumerError

    url = args.url or os.environ.get(AMQP_URL_ENV, "")
    if not url:
        raise CommandError(f"no broker URL: give one or set ${AMQP_URL_ENV}", USAGE)
    if not url.startswith(("amqp://", "amqps://")):
        raise CommandError(f"expected an amqp:// or amqps:// URL, got {_mask_urls(url)!r}", USAGE)
    redact = Redactor.for_url(url)
    out = FileSink(args.out[len("file:"):], fsync=args.fsync)
    consumed = rejected = 0
    try:
        with _logging_to_stderr(TextLogFormatter(redact), args.log_level), \
                Consumer(url, args.query, prefetch=args.prefetch,
                         queue_type=args.queue_type) as consumer:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: consumer.stop())
            for arrived in consumer.batches(until_idle=args.until_idle):
                # Acked only once their frames are flushed (one flush for the
                # messages that arrived together): a crash in between leaves them
                # in the queue, to be stored again (at-least-once).
                for message in arrived:
                    out.write(message.frame, message.batch.query_ids)
                out.flush()
                for message in arrived:
                    message.ack()
                consumed += len(arrived)
            rejected = consumer.rejected
    except ValueError as exc:
        raise CommandError(redact(str(exc)), USAGE) from None
    except (ConsumerError, SinkError) as exc:
        raise CommandError(f"{redact(str(exc))} ({consumed} messages stored)") from None
    finally:
        out.close()
    print(f"consumed {consumed} messages from query {args.query} into {out.path}"
          f" ({rejected} malformed, dead-lettered)")
    return 0


def _out_file(text: str) -> str:
    """``file:PATH``, the one kind of output ``consume`` writes."""
    if not text.startswith("file:") or len(text) == len("file:"):
        raise argparse.ArgumentTypeError(f"expected file:PATH, got {text!r}")
    return text


def _describe(index: int, offset: int, msg: Any) -> Dict[str, Any]:
    item: Dict[str, Any] = {"index": index, "offset": offset, "type": type(msg).__name__,
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


def _print_text(item: Dict[str, Any], rows: int, indent: str = "") -> None:
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
        raise CommandError(f"{args.file}: {exc}") from None
    return 0


# -- parser --------------------------------------------------------------------------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: …)`` where there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, secrets masked."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {_mask_urls(message)} "
                         f"(see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastframe", formatter_class=_HelpFormatter,
                     description="Generate, serve, send and inspect the coffee-shop chain's "
                                 "ingestion data. A mistake ends in one line on stderr and exit "
                                 "status 2 (usage) or 1 (runtime).")
    parser.add_argument("--version", action="version",
                        version=f"fastframe {__version__} (codec: {codec.__impl__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do; `fastframe COMMAND --help` tells more")
    count = _integer(1)

    p = sub.add_parser("gen", help="write a synthetic data set",
                       description="Write a synthetic data set in the layout of PROTOCOL.md §9.",
                       formatter_class=_HelpFormatter)
    p.add_argument("dir", help="folder to write the table folders into")
    p.add_argument("--transactions", type=count, default=100_000,
                   help="transactions to generate (users, items and stores scale with it)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same data")
    p.set_defaults(run=cmd_gen)

    p = sub.add_parser("serve", help="run the orchestrator",
                       description="Run the orchestrator until SIGTERM or SIGINT.",
                       formatter_class=_HelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (loopback; anything else is a deliberate choice)")
    p.add_argument("--port", type=_port, default=12345, help="TCP port to listen on")
    p.add_argument("--sink", type=_sink_value,
                   help=f"file:PATH, amqp://USER:PASS@HOST:PORT/VHOST, or amqp for the URL in "
                        f"${AMQP_URL_ENV} (keeps the password out of argv) (default: "
                        f"${AMQP_URL_ENV} if set, else {DEFAULT_SINK})")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="file sink: fsync before every ACK (always) or leave it to the OS")
    p.add_argument("--queue-type", choices=QUEUE_TYPES, default=None,
                   help="amqp sink: the type of the query queues it declares (default: the "
                        "URL's queue_type, else classic)")
    p.add_argument("--max-frame", type=_integer(FRAME_HEADER_SIZE, _I32_MAX),
                   default=DEFAULT_MAX_FRAME, help="largest frame accepted, in bytes")
    p.add_argument("--max-connections", type=count, default=None,
                   help="connections open at once; a newcomer beyond is closed at once "
                        f"(default: min(4096, fd limit - 64), here {default_max_connections()})")
    p.add_argument("--max-buffer-bytes", type=count, default=64 * 2**20,
                   help="frame bytes held across all connections")
    p.add_argument("--header-timeout", type=_seconds, default=10.0,
                   help="seconds for the TLS handshake and the first frame header")
    p.add_argument("--frame-timeout", type=_seconds, default=30.0,
                   help="seconds for each frame from its header to its last byte, waits for "
                        "buffer budget included")
    p.add_argument("--idle-timeout", type=_seconds, default=60.0,
                   help="seconds a connection may stay silent between frames")
    p.add_argument("--max-invalid", type=count, default=100,
                   help="invalid frames in a row before the connection is closed")
    p.add_argument("--compat", action="store_true",
                   help="the original orchestrator's bytes: its DataBatch header values, "
                        "and no answer to a stored FINISHED")
    p.add_argument("--tls-cert", help="TLS: the server's certificate chain (PEM); "
                                      "plaintext without it")
    p.add_argument("--tls-key", help="TLS: the server certificate's private key (PEM)")
    p.add_argument("--tls-client-ca", help="TLS: require client certificates signed by this CA "
                                           "(PEM); the certificate's CN agency-N names the agency")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info",
                   help="least severe log records shown")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text lines, or one JSON object per line (time, level, logger, message, "
                        "and action, result, fields parsed from 'action: x | result: y | k: v')")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("send", help="stream a data folder to an orchestrator",
                       description="Send every table folder of a data folder, then FINISHED.",
                       formatter_class=_HelpFormatter)
    p.add_argument("dir", type=Path, help="data folder holding one folder of CSV files per table")
    p.add_argument("--server", type=_server_address, default="127.0.0.1:12345",
                   help="orchestrator address, HOST:PORT or [IPV6]:PORT")
    p.add_argument("--agency-id", type=_integer(-_I32_MAX - 1, _I32_MAX), required=True,
                   help="this agency's id, sent in FINISHED")
    p.add_argument("--batch-rows", type=count, default=50_000, help="most rows in one batch")
    p.add_argument("--max-batch-bytes", type=_integer(FRAME_HEADER_SIZE + TABLE_HEADER_SIZE,
                                                      MAX_BATCH_FRAME),
                   default=MAX_BATCH_FRAME,
                   help="largest batch frame, headers included (the protocol's maximum is the "
                        "default)")
    p.add_argument("--window", type=count, default=8,
                   help="batches sent ahead of their ACKs")
    p.add_argument("--connect-attempts", type=count, default=10,
                   help="connection attempts before giving up, 0.1 s apart and doubling up to 5 s")
    p.add_argument("--no-finished-ack", action="store_true",
                   help="for a server that never answers FINISHED (the original, or serve "
                        "--compat): count a close after FINISHED as success, which cannot tell "
                        "whether FINISHED was stored")
    p.add_argument("--tls-ca", help="TLS: the CA that signed the orchestrator's certificate "
                                    "(PEM); plaintext without it")
    p.add_argument("--tls-cert", help="TLS: this agency's client certificate (PEM)")
    p.add_argument("--tls-key", help="TLS: the client certificate's private key (PEM)")
    p.set_defaults(run=cmd_send)

    p = sub.add_parser("demo", help="generate, serve, send and check, end to end",
                       description="Generate a data set, serve it on loopback to a file sink, "
                                   "send it and compare the sink with the CSVs.",
                       formatter_class=_HelpFormatter)
    p.add_argument("--out", default="fastframe-demo", help="folder for the data and the sink")
    p.add_argument("--data", help="send this folder instead of generating one")
    p.add_argument("--transactions", type=count, default=200_000,
                   help="transactions to generate")
    p.add_argument("--seed", type=int, default=0, help="random seed of the generated data")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="file sink: fsync before every ACK (always) or leave it to the OS")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("consume", help="drain a query's RabbitMQ queue into a sink file",
                       description="Store the DataBatch frames of one query's durable queue in "
                                   "a sink file, acking each once it is flushed.",
                       formatter_class=_HelpFormatter)
    p.add_argument("url", nargs="?", default=None,
                   help=f"amqp://USER:PASS@HOST:PORT/VHOST, options as for serve --sink "
                        f"(default: ${AMQP_URL_ENV})")
    p.add_argument("--query", type=int, required=True, choices=(1, 2, 3, 4),
                   help="the query whose queue is drained")
    p.add_argument("--out", type=_out_file, required=True,
                   help="file:PATH, a sink file (fastframe inspect reads it)")
    p.add_argument("--until-idle", type=_seconds, default=None, metavar="SECONDS",
                   help="stop once the queue gave nothing for this long (default: run until "
                        "SIGTERM)")
    p.add_argument("--prefetch", type=count, default=8, help="messages delivered ahead of acks")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="fsync before every ack (always) or leave it to the OS")
    p.add_argument("--queue-type", choices=QUEUE_TYPES, default=None,
                   help="the queue type, if the consumer declares the queues first (default: "
                        "the URL's queue_type, else classic)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning", help="least severe "
                   "log level shown")
    p.set_defaults(run=cmd_consume)

    p = sub.add_parser("inspect", help="print the frames of a sink file or a capture",
                       description="Print the frames of a sink file or a raw capture.",
                       formatter_class=_HelpFormatter)
    p.add_argument("file", help="sink file or capture of frames back to back")
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.add_argument("--rows", type=_integer(0), default=3,
                   help="rows shown per batch in text mode")
    p.set_defaults(run=cmd_inspect)
    return parser


def _error_line(command: str, message: str) -> None:
    print(f"{command}: error: {' '.join(_mask_urls(message).splitlines())}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (usage errors exit 2 from the parser)."""
    args = build_parser().parse_args(argv)
    command = f"fastframe {args.command}"
    try:
        status: int = args.run(args)
        return status
    except CommandError as exc:
        _error_line(command, str(exc))
        return exc.status
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as exc:  # a file or folder the command cannot read or write
        where = f"{exc.filename}: " if exc.filename else ""
        _error_line(command, f"{where}{exc.strerror or exc}")
        return RUNTIME
    except KeyboardInterrupt:
        _error_line(command, "interrupted")
        return 130
