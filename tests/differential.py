"""The differential check: one input through every decoder, on both codecs.

Used by the fuzz target (``fuzz/fuzz_codec.py`` loads this file by path) and by
``test_fuzz_regressions.py``, so a fuzzer finding replays as a test unchanged.

An input is ``[u8 ctl][payload]``. ``payload`` is read as one frame (its body
goes to the body decoders of its opcode byte, modulo 10 so that any byte picks
some decoder) and as a stream of frames (``FrameDecoder``, ``FrameReader``,
``recv_msg``, ``read_from``). ``ctl`` picks the variable arguments: bits 0-1 the
``decode_columns`` dtypes (none, all float64, all int64, random), and seeds a
``random.Random`` for the rest (buffer type, columns, DataBatch header values,
chunk sizes, ``max_frame``, reader buffer size).

For every call the implementations must return equal values of the same
types, or raise the same exception type with the same message and ``opcode``;
and the only exception decoding bytes may raise is ``ProtocolError`` (plus
``ValueError`` from ``decode_columns`` and ``decode_arrow``, which document
it for unparsable numbers and columns not in the batch, and ``EOFError`` for a
stream closed mid-frame). ``decode_arrow``'s batches are compared as pyarrow
reads them through the PyCapsule interface. On top of parity,
per implementation: a stream gives the same messages and errors however it is
cut and whichever reader reads it ("stream-consistency"), a decoded frame
re-encodes to a frame that decodes to the same message ("round-trip"), and
``decode_frame`` gives for a bytearray or memoryview (of bytes or of wider
items) what it gives for the same bytes ("buffer-type"; the codec functions
are held to that by parity, the Cython codec reading every buffer as bytes).
Any violation raises ``Finding``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import random
import struct
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import fastframe.codec
from fastframe import framing, messages
from fastframe.errors import ProtocolError
from fastframe.schema import DEFAULT_MAX_FRAME, TABLES_BY_OPCODE

IMPLEMENTATIONS = ("c", "python")
# decode_arrow is compared where pyarrow is installed (the pure codec needs it).
_HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None
CHECKS = ("parity", "exceptions", "stream-consistency", "round-trip", "buffer-type")
ROW_TYPES = ("object", "dict", "tuple")
_DTYPE_MODES = (None, "float64", "int64", "random")


class Finding(AssertionError):
    """A divergence between the codecs, an unexpected exception type, or a broken invariant."""


def load_codecs(names: Sequence[str] = IMPLEMENTATIONS) -> Dict[str, Any]:
    return {name: fastframe.codec.load(name) for name in names}


@contextlib.contextmanager
def using(module: Any) -> Iterator[None]:
    """Run the message classes and frame readers on ``module`` (they read ``codec.impl``)."""
    saved = fastframe.codec.impl
    fastframe.codec.impl = module
    try:
        yield
    finally:
        fastframe.codec.impl = saved


# -- comparable outcomes -----------------------------------------------------------------------

class Events(list):
    """A stream's messages and errors, each already normalized."""


def normalize(value: Any) -> Any:
    """A comparable form that keeps types: row classes, dict order, exact scalar types, arrays."""
    if isinstance(value, Events):
        return ("events", list(value))
    if isinstance(value, dict):
        return ("dict", [(normalize(k), normalize(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [normalize(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, memoryview):
        return ("memoryview", value.tobytes())
    if isinstance(value, messages._Message):
        fields = [(f, normalize(getattr(value, f))) for f in value._fields]
        if isinstance(value, messages.DataBatch):
            fields.append(("batch_msg", normalize(value.batch_msg)))
        return (type(value).__name__, fields)
    if type(value).__name__ == "ndarray":
        return ("ndarray", value.dtype.str, normalize(value.tolist()))
    if type(value).__name__ == "ArrowBatch":
        # read through the PyCapsule interface, as a consumer reads it
        import pyarrow

        batch = pyarrow.record_batch(value)
        return ("ArrowBatch", len(value), value.column_names, str(batch.schema),
                normalize(batch.to_pydict()))
    return (type(value).__name__, value)


def error_event(exc: BaseException) -> tuple:
    # ``fatal`` too: both codecs must agree on whether the stream survived.
    return ("raise", type(exc).__name__, str(exc), getattr(exc, "opcode", None),
            getattr(exc, "fatal", None))


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple:
    try:
        return ("ok", normalize(fn(*args, **kwargs)))
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome being compared
        return error_event(exc)


# -- the calls made for one input ----------------------------------------------------------------

class Plan:
    """The arguments ``ctl`` picks; built once per input and shared by both implementations."""

    def __init__(self, ctl: int, payload: bytes) -> None:
        rng = random.Random(ctl)
        self.buffer_kind = rng.choice(["bytes", "bytearray", "memoryview", "offset-memoryview",
                                       "wide-memoryview"])
        self.offset = rng.choice([0, 0, 1, 4, 5, rng.randint(0, 16)])
        self.small_max = rng.choice([0, 5, 64, len(payload), max(len(payload) - 6, 0)])
        self.dtype_mode = _DTYPE_MODES[ctl & 3]
        self.dtype_seed = rng.random()
        self.column_seed = rng.random()
        self.table_ids = rng.sample(range(256), rng.choice([0, 1, 1, 3]))
        self.query_ids = rng.sample(range(256), rng.choice([0, 1, 3]))
        self.meta = {rng.randrange(256): rng.randrange(256) for _ in range(rng.choice([0, 0, 2]))}
        self.shards = (rng.randrange(65536), rng.randrange(65536), rng.choice([0, 0, 65535]))
        self.max_frame = rng.choice([DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME, 64, len(payload)])
        self.max_chunk = rng.choice([1, 2, 3, 7, 64, 1 << 30])
        self.chunk_seed = rng.random()
        self.reader_buffer = rng.choice([5, 16, 300, 256 * 1024])
        self.row_type = rng.choice(ROW_TYPES)
        self.row_factory = rng.random() < 0.3
        self.columns_for_arrays = rng.random() < 0.3

    def buffer(self, data: bytes) -> Any:
        """``data`` in the buffer type the plan picked (an offset view starts inside a bigger one)."""
        if self.buffer_kind == "bytearray":
            return bytearray(data)
        if self.buffer_kind == "memoryview":
            return memoryview(data)
        if self.buffer_kind == "offset-memoryview":
            return memoryview(b"\xa5" * 3 + data)[3:]
        if self.buffer_kind == "wide-memoryview" and len(data) % 2 == 0:
            return memoryview(data).cast("H")  # items of 2 bytes: lengths count bytes all the same
        return data

    def columns(self, opcode: int, salt: int) -> Optional[Tuple[str, ...]]:
        """``None`` (the default) or a shuffled subset of the table's keys, fixed per plan."""
        keys = list(TABLES_BY_OPCODE[opcode].required_keys)
        rng = random.Random(f"{self.column_seed}/{opcode}/{salt}")
        if rng.random() < 0.3:
            return None
        rng.shuffle(keys)
        return tuple(keys[:rng.randint(0 if salt else 1, len(keys))])

    def dtypes(self, codec: Any, frame: bytes) -> Optional[Dict[str, str]]:
        """dtypes for ``decode_columns``: numeric for every column the frame carries, or a mix."""
        if self.dtype_mode is None:
            return None
        keys = _frame_keys(codec, frame)
        if self.dtype_mode != "random":
            return {k: self.dtype_mode for k in keys}
        rng = random.Random(self.dtype_seed)
        return {k: rng.choice(["object", "float64", "int64"]) for k in keys if rng.random() < 0.6}

    def chunks(self, data: bytes) -> List[bytes]:
        rng = random.Random(self.chunk_seed)
        pieces, pos = [], 0
        while pos < len(data):
            n = rng.randint(1, self.max_chunk)
            pieces.append(data[pos:pos + n])
            pos += n
        return pieces


def _frame_keys(codec: Any, frame: bytes) -> Tuple[str, ...]:
    """The keys the frame's rows carry (reference decoder), or none if it does not decode."""
    try:
        return tuple(codec.decode_columns(frame).keys())
    except Exception:  # noqa: BLE001 - no keys to pick dtypes for
        return ()


def split_input(data: bytes) -> Tuple[int, bytes]:
    return (data[0], data[1:]) if data else (0, b"")


def first_frame(payload: bytes) -> Tuple[Optional[int], bytes]:
    """The first frame's body as its length field delimits it, or all the rest when it cannot."""
    if len(payload) < 5:
        return None, b""
    opcode, length = struct.unpack_from("<Bi", payload)
    if 0 <= length <= len(payload) - 5:
        return opcode, payload[5:5 + length]
    return opcode, payload[5:]


def body_calls(plan: Plan, opcode: int, body: Any,
               depth: int = 0) -> List[Tuple[str, Callable[[Any], Any]]]:
    """Each body decoder that applies to ``opcode``, as ``(name, fn(codec))``.

    A table body is decoded as a client's (``projected=False``) and as a
    DataBatch's (``projected=True``), in every row type, and projected.
    """
    op = opcode % 10
    name = f"op{opcode}"
    if op in (1, 2):
        return [(f"decode_ack_body[{name}]", lambda c: c.decode_ack_body(op, body))]
    if op == 3:
        return [(f"decode_finished_body[{name}]", lambda c: c.decode_finished_body(body))]
    if op == 9:
        return [(f"decode_eof_body[{name}]", lambda c: c.decode_eof_body(body))]
    if op == 0:
        calls = [(f"decode_databatch_body[{name}]", lambda c: c.decode_databatch_body(body))]
        if depth == 0:
            ref = _reference()
            try:
                inner_opcode, inner_at = ref.decode_databatch_body(body)[7:9]
            except Exception:  # noqa: BLE001 - both implementations are compared on it above
                return calls
            calls += body_calls(plan, inner_opcode, body[inner_at:], depth + 1)
        return calls
    calls = []
    for projected in (False, True):
        for row_type in ROW_TYPES:
            columns = plan.columns(op, 0) if row_type == "tuple" else None
            calls.append((
                f"decode_table_body[{name},{row_type},columns={columns},projected={projected}]",
                lambda c, rt=row_type, cols=columns, pf=projected:
                    c.decode_table_body(op, body, rt, cols, pf)))
    columns = plan.columns(op, 1)
    table_ids, query_ids, meta = plan.table_ids, plan.query_ids, plan.meta
    total, shard, reserved = plan.shards
    calls.append((f"project_databatch[{name},columns={columns}]",
                  lambda c: c.project_databatch(op, body, table_ids, query_ids, meta, total, shard,
                                                reserved, columns)))
    return calls


def _reference() -> Any:
    return fastframe.codec.load("python")


# -- streams ---------------------------------------------------------------------------------------

class FakeSocket:
    """``recv_into`` serving ``pieces`` one per call, then 0 (a clean close)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = [memoryview(p) for p in pieces if p]
        self._current = memoryview(b"")

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        if not self._current and self._pieces:
            self._current = self._pieces.pop(0)
        size = len(buf) if nbytes == 0 else min(nbytes, len(buf))
        n = min(size, len(self._current))
        buf[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def settimeout(self, timeout: Optional[float]) -> None:
        pass


def decoder_events(pieces: Sequence[bytes], max_frame: int, row_type: str) -> Events:
    """What ``FrameDecoder.feed`` gives for ``pieces``: messages and errors, in order.

    After a call that returned messages or raised, and at the end, the decoder
    is fed ``b""`` until a call returns nothing before the next piece: an
    error found after the messages a call returned comes from the next call,
    and the messages after an error from the call after it. A fatal error (a
    header that cannot be delimited) must come again from every later call:
    the stream is dead there.
    """
    decoder = framing.FrameDecoder(max_frame=max_frame, row_type=row_type)
    events = Events()
    queue = list(pieces)
    while True:
        data = queue.pop(0) if queue else b""
        try:
            got = decoder.feed(data)
        except ProtocolError as exc:
            event = error_event(exc)
            events.append(event)
            if exc.fatal:
                try:
                    decoder.feed(b"")
                except ProtocolError as again:
                    if error_event(again) == event:
                        return Events(events + [("dead",)])
                return Events(events + [("fatal error not raised again",)])
            queue.insert(0, b"")
            continue
        events.extend(normalize(m) for m in got)
        if got:
            queue.insert(0, b"")  # an error may follow them
        elif not (queue or data):
            return Events(events + [("end", decoder.pending)])


def reader_events(pieces: Sequence[bytes], max_frame: int, row_type: str,
                  buffer_size: int) -> Events:
    """What ``FrameReader`` gives over a socket serving ``pieces``, each frame decoded."""
    reader = framing.FrameReader(FakeSocket(pieces), max_frame=max_frame, buffer_size=buffer_size)
    events = Events()
    while True:
        try:
            frame = reader.read_frame()
        except ProtocolError as exc:
            return Events(events + [error_event(exc), ("dead",)])
        except EOFError:
            return Events(events + [("end", reader._buf.end - reader._buf.start)])
        if frame is None:
            return Events(events + [("end", 0)])
        try:
            events.append(normalize(messages.decode_message(frame[0], frame[1], row_type)))
        except ProtocolError as exc:
            events.append(error_event(exc))


def recv_msg_events(pieces: Sequence[bytes], max_frame: int, row_type: str) -> Events:
    """``recv_msg`` until the first exception (after which the stream may be misaligned)."""
    sock = FakeSocket(pieces)
    events = Events()
    while True:
        try:
            events.append(normalize(messages.recv_msg(sock, max_frame, row_type)))
        except (ProtocolError, EOFError) as exc:
            return Events(events + [error_event(exc)])


def read_from_events(pieces: Sequence[bytes], factory: bool) -> Events:
    """The original orchestrator's loop: read ``[u8 opcode][i32 length]``, then ``cls().read_from``.

    ``read_from`` checks the length itself (negative, or over the default
    ``max_frame``); after such an error the stream cannot be resynchronised.
    Table classes get ``row_factory=dict`` when ``factory`` is set.
    """
    sock = FakeSocket(pieces)
    events = Events()
    while True:
        try:
            opcode, length = struct.unpack("<Bi", messages._recv_exactly(sock, 5))
        except EOFError as exc:
            return Events(events + [error_event(exc)])
        cls = messages._TABLE_CLASSES.get(opcode) or messages._SIMPLE_CLASSES.get(opcode)
        if cls is None:
            return Events(events + [("stop", opcode, length)])
        msg = cls(row_factory=dict) if factory and opcode in messages._TABLE_CLASSES else cls()
        try:
            msg.read_from(sock, length)
        except (ProtocolError, EOFError) as exc:
            events.append(error_event(exc))
            if isinstance(exc, EOFError) or not 0 <= length <= DEFAULT_MAX_FRAME:
                return events
            continue
        events.append(normalize(msg))


# -- the check -------------------------------------------------------------------------------------

def check(data: bytes, codecs: Dict[str, Any], skip: Iterable[str] = ()) -> None:
    """Run ``data`` (``[u8 ctl][payload]``) through every decoder on every codec in ``codecs``.

    Raises ``Finding`` on the first violation; ``skip`` names checks of
    ``CHECKS`` to leave out (for a known, reported finding while it is open).
    """
    skip = set(skip)
    unknown = skip - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {CHECKS}")
    ctl, payload = split_input(data)
    plan = Plan(ctl, payload)
    results = _Results(data, codecs, skip)
    buf = plan.buffer(payload)

    results.compare("read_frame_header", lambda c: c.read_frame_header(buf))
    results.compare(f"read_frame_header[offset={plan.offset},max={plan.small_max}]",
                    lambda c: c.read_frame_header(buf, plan.offset, plan.small_max))
    for reader in ("read_string", "read_string_map", "read_u8_list", "read_u8_dict"):
        results.compare(f"{reader}[offset={plan.offset}]",
                        lambda c, r=reader: getattr(c, r)(buf, plan.offset))

    opcode, body = first_frame(payload)
    if opcode is not None:
        body_buf = plan.buffer(body)
        for name, call in body_calls(plan, opcode, body_buf):
            results.compare(name, call)

    for row_type in ROW_TYPES:
        got = results.compare(f"decode_frame[{row_type}]",
                              lambda c, rt=row_type: messages.decode_frame(buf, row_type=rt),
                              messages_api=True)
        if row_type == "object" and plan.buffer_kind != "bytes":
            results.buffer_type(f"decode_frame({plan.buffer_kind})", got,
                                lambda: messages.decode_frame(payload))
    results.round_trip()
    if all(hasattr(c, "decode_columns") for c in codecs.values()):
        dtypes = plan.dtypes(_reference(), payload)
        columns = None
        if plan.columns_for_arrays and opcode is not None:
            table = opcode % 10 if opcode % 10 in TABLES_BY_OPCODE else 8
            columns = plan.columns(table, 2)
        results.compare(f"decode_columns[columns={columns},dtypes={dtypes}]",
                        lambda c: c.decode_columns(buf, columns, dtypes), allowed=(ValueError,))
        if _HAVE_PYARROW:
            results.compare(f"decode_arrow[columns={columns}]",
                            lambda c: c.decode_arrow(buf, columns), allowed=(ValueError,))

    pieces = plan.chunks(payload)
    streams = {
        "FrameDecoder.feed[whole]": lambda: decoder_events([payload], plan.max_frame, plan.row_type),
        f"FrameDecoder.feed[chunks<={plan.max_chunk}]":
            lambda: decoder_events(pieces, plan.max_frame, plan.row_type),
        f"FrameReader[chunks<={plan.max_chunk},buffer={plan.reader_buffer}]":
            lambda: reader_events(pieces, plan.max_frame, plan.row_type, plan.reader_buffer),
    }
    per_codec: Dict[str, List[Any]] = {name: [] for name in codecs}
    for name, run in streams.items():
        for codec_name, events in results.compare(name, lambda c, r=run: r(),
                                                  messages_api=True).items():
            per_codec[codec_name].append((name, events))
    results.compare(f"recv_msg[chunks<={plan.max_chunk}]",
                    lambda c: recv_msg_events(pieces, plan.max_frame, plan.row_type),
                    messages_api=True)
    results.compare(f"read_from[chunks<={plan.max_chunk},row_factory={plan.row_factory}]",
                    lambda c: read_from_events(pieces, plan.row_factory),
                    messages_api=True)
    if "stream-consistency" not in skip:
        for codec_name, runs in per_codec.items():
            (first_name, first), *others = runs
            for other_name, other in others:
                if other != first:
                    raise Finding(
                        f"stream-consistency on {codec_name}: {first_name} and {other_name} "
                        f"disagree\n  {first_name}: {_short(first)}\n  {other_name}: "
                        f"{_short(other)}\n  input: {data.hex()}")


class _Results:
    """Runs each call on every codec and enforces the rules the module docstring states."""

    def __init__(self, data: bytes, codecs: Dict[str, Any], skip: set) -> None:
        self.data = data
        self.codecs = codecs
        self.skip = skip

    def compare(self, name: str, call: Callable[[Any], Any], allowed: tuple = (),
                messages_api: bool = False) -> Dict[str, Any]:
        got = {}
        for codec_name, module in self.codecs.items():
            with using(module) if messages_api else contextlib.nullcontext():
                got[codec_name] = outcome(call, module)
        ok_types = {"ProtocolError", *(t.__name__ for t in allowed)}
        if "exceptions" not in self.skip:
            for codec_name, result in got.items():
                if result[0] == "raise" and result[1] not in ok_types:
                    raise Finding(f"{name} on {codec_name} raised {result[1]}: {result[2]}\n"
                                  f"  input: {self.data.hex()}")
        if "parity" not in self.skip and len(set(map(repr, got.values()))) > 1:
            lines = "\n".join(f"  {n}: {_short(r)}" for n, r in got.items())
            raise Finding(f"{name}: the implementations disagree\n{lines}\n"
                          f"  input: {self.data.hex()}")
        return {n: r[1] if r[0] == "ok" else r for n, r in got.items()}

    def buffer_type(self, name: str, decoded: Dict[str, Any], call: Callable[[], Any]) -> None:
        """The same bytes in another buffer type (``decoded``) decode as they do from ``bytes``."""
        if "buffer-type" in self.skip:
            return
        for codec_name, module in self.codecs.items():
            with using(module):
                expected = outcome(call)
            got = decoded[codec_name]
            if (("ok", got) if got[:1] != ("raise",) else got) != expected:
                raise Finding(f"buffer-type on {codec_name}: {name} gives {_short(got)}, but "
                              f"{_short(expected)} from bytes\n  input: {self.data.hex()}")

    def round_trip(self) -> None:
        """A message ``decode_frame`` returns re-encodes to a frame that decodes to it again."""
        if "round-trip" in self.skip:
            return
        for codec_name, module in self.codecs.items():
            with using(module):
                try:
                    msg = messages.decode_frame(self.data[1:])
                except Exception:  # noqa: BLE001 - compared already; nothing to round-trip
                    continue
                decoded = ("ok", normalize(msg))
                again = outcome(lambda: messages.decode_frame(msg.to_bytes()))
                rebuilt = again
                if isinstance(msg, messages.DataBatch):
                    rebuilt = outcome(lambda: messages.DataBatch(
                        table_ids=msg.table_ids, query_ids=msg.query_ids, meta=msg.meta,
                        total_shards=msg.total_shards, shard_num=msg.shard_num,
                        reserved_u16=msg.reserved_u16, batch_bytes=msg.batch_bytes,
                        batch_number=msg.batch_number))
            for how, got in (("decode_frame(to_bytes())", again), ("DataBatch(...)", rebuilt)):
                if got != decoded:
                    raise Finding(f"round-trip on {codec_name}: {how} gives {_short(got)}, "
                                  f"not {_short(decoded)}\n  input: {self.data.hex()}")


def _short(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
