"""The pure-Python codec.

The twin of ``_codec_c.pyx``: same names, same signatures, same results, same
exceptions with the same messages (the parity tests hold both to that). It is
also the type source for the public codec API.

Reading functions take any buffer (bytes, bytearray, memoryview) and an offset
and return ``(value, next_offset)``; offsets in error messages are relative to
the buffer given. Encoders return whole frames as ``bytes``.
"""
from __future__ import annotations

import functools
import itertools
import operator
import re
import struct
from typing import (
    TYPE_CHECKING, Any, Callable, Dict, FrozenSet, List, Literal, Mapping, Optional,
    Sequence, Tuple, Union, overload,
)

from ._buffers import byte_view
from .errors import CsvError, ProtocolError
from .rows import DictRow, RowType, TableRow, TupleRow
from .schema import (
    DEFAULT_MAX_FRAME, EOF_KEY, TABLES_BY_NAME, TABLES_BY_OPCODE, BatchStatus, Opcodes, TableSpec,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "read_u8", "read_u16", "read_i32", "read_i64", "read_string", "read_string_map",
    "read_u8_list", "read_u8_dict", "Writer", "read_frame_header", "decode_table_body",
    "decode_eof_body", "decode_finished_body", "decode_ack_body", "decode_databatch_body",
    "encode_frame", "encode_table_frame", "encode_eof_frame", "encode_finished_frame",
    "encode_databatch_header", "encode_databatch_frame", "check_embedded", "project_databatch",
    "decode_columns", "encode_csv_batch", "decode_arrow",
]

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_TABLE_HEADER = struct.Struct("<iqB")
_FRAME_HEADER = struct.Struct("<Bi")
_unpack_i32 = _I32.unpack_from
_pack_i32 = _I32.pack

_ROW_TYPES = ("object", "dict", "tuple")
# Every UTF-8 decode names its codec here (a test swaps in a decoder as lenient
# as PyPy's, which lets encoded surrogates through).
_UTF8 = "utf-8"
# An encoded surrogate (U+D800..U+DFFF): not UTF-8, though some decoders take
# it. In valid UTF-8, 0xED followed by 0xA0..0xBF is nothing else.
_SURROGATE = re.compile(b"\xed[\xa0-\xbf]")
_MAX_OPCODE = max(Opcodes)
_ACK_NAMES: Dict[int, str] = {Opcodes.BATCH_RECV_SUCCESS: "BATCH_RECV_SUCCESS",
              Opcodes.BATCH_RECV_FAIL: "BATCH_RECV_FAIL"}
# Wire key bytes -> the one str object used for that key in every row.
_KEY_LOOKUP: Dict[int, Dict[bytes, str]] = {
    op: {k.encode(): k for k in spec.required_keys} for op, spec in TABLES_BY_OPCODE.items()
}
_KEY_INDEX: Dict[int, Dict[str, int]] = {
    op: {k: i for i, k in enumerate(spec.required_keys)} for op, spec in TABLES_BY_OPCODE.items()
}
# A key's whole wire string ([i32 n][n bytes]) -> its position in the required
# keys: one slice and one lookup per key on the fast path.
_KEY_POSITION: Dict[int, Dict[bytes, int]] = {
    op: {_I32.pack(len(k)) + k.encode(): i for i, k in enumerate(spec.required_keys)}
    for op, spec in TABLES_BY_OPCODE.items()
}


# -- primitives -------------------------------------------------------------

def _truncated(need: int, offset: int, size: int, opcode: Optional[int]) -> ProtocolError:
    return ProtocolError(
        f"truncated: need {need} bytes at offset {offset}, have {max(size - offset, 0)}", opcode)


def _bytes_of(buf: Any) -> Any:
    """``buf`` as a sequence of its bytes: ``len`` and offsets count bytes, not items."""
    if type(buf) is bytes or type(buf) is bytearray:
        return buf
    return byte_view(buf)


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")


def _read_fixed(st: struct.Struct, buf: Any, offset: int, opcode: Optional[int]) -> Tuple[int, int]:
    _check_offset(offset)
    data = _bytes_of(buf)
    end = offset + st.size
    if end > len(data):
        raise _truncated(st.size, offset, len(data), opcode)
    return st.unpack_from(data, offset)[0], end


def read_u8(buf: Buffer, offset: int = 0) -> Tuple[int, int]:
    """``[u8]`` at ``offset`` -> ``(value, offset + 1)``."""
    return _read_fixed(_U8, buf, offset, None)


def read_u16(buf: Buffer, offset: int = 0) -> Tuple[int, int]:
    """``[u16 LE]`` at ``offset`` -> ``(value, offset + 2)``."""
    return _read_fixed(_U16, buf, offset, None)


def read_i32(buf: Buffer, offset: int = 0) -> Tuple[int, int]:
    """``[i32 LE]`` at ``offset`` -> ``(value, offset + 4)``."""
    return _read_fixed(_I32, buf, offset, None)


def read_i64(buf: Buffer, offset: int = 0) -> Tuple[int, int]:
    """``[i64 LE]`` at ``offset`` -> ``(value, offset + 8)``."""
    return _read_fixed(_I64, buf, offset, None)


def _read_string_bytes(buf: Any, offset: int, size: int, opcode: Optional[int]) -> Tuple[Any, int]:
    """``[i32 n][n bytes]`` -> the n bytes (not decoded) and the next offset."""
    if offset + 4 > size:
        raise _truncated(4, offset, size, opcode)
    n = _unpack_i32(buf, offset)[0]
    if n < 0:
        raise ProtocolError(f"negative string length {n} at offset {offset}", opcode)
    start = offset + 4
    end = start + n
    if end > size:
        raise _truncated(n, start, size, opcode)
    return buf[start:end], end


def _utf8(raw: Any, offset: int, opcode: Optional[int]) -> str:
    if _SURROGATE.search(raw) is None:  # checked, not left to the interpreter's decoder
        try:
            return str(raw, _UTF8)
        except UnicodeDecodeError:
            pass
    raise ProtocolError(f"invalid UTF-8 in string at offset {offset}", opcode)


def read_string(buf: Buffer, offset: int = 0) -> Tuple[str, int]:
    """``[i32 n][n bytes of UTF-8]`` -> ``(str, next_offset)``."""
    data = _bytes_of(buf)
    _check_offset(offset)
    raw, end = _read_string_bytes(data, offset, len(data), None)
    return _utf8(raw, offset, None), end


def read_string_map(buf: Buffer, offset: int = 0) -> Tuple[Dict[str, str], int]:
    """``[i32 nPairs]([key string][value string]) * nPairs`` -> ``(dict, next_offset)``.

    A repeated key is an error (a map has one value per key).
    """
    data = _bytes_of(buf)
    _check_offset(offset)
    size = len(data)
    if offset + 4 > size:
        raise _truncated(4, offset, size, None)
    n = _unpack_i32(data, offset)[0]
    if n < 0:
        raise ProtocolError(f"negative pair count {n} at offset {offset}")
    pos = offset + 4
    result: Dict[str, str] = {}
    for _ in range(n):
        start = pos
        raw, pos = _read_string_bytes(data, pos, size, None)
        key = _utf8(raw, start, None)
        start = pos
        raw, pos = _read_string_bytes(data, pos, size, None)
        value = _utf8(raw, start, None)
        if key in result:
            raise ProtocolError(f"duplicate key {key!r} in string map at offset {offset}")
        result[key] = value
    return result, pos


def read_u8_list(buf: Buffer, offset: int = 0) -> Tuple[List[int], int]:
    """``[u8 n][n x u8]`` -> ``(list, next_offset)``."""
    data = _bytes_of(buf)
    n, pos = read_u8(data, offset)
    if pos + n > len(data):
        raise _truncated(n, pos, len(data), None)
    return list(bytes(data[pos:pos + n])), pos + n


def read_u8_dict(buf: Buffer, offset: int = 0) -> Tuple[Dict[int, int], int]:
    """``[u8 n]([key u8][value u8]) * n`` -> ``(dict, next_offset)``; a repeated key is an error."""
    data = _bytes_of(buf)
    n, pos = read_u8(data, offset)
    if pos + 2 * n > len(data):
        raise _truncated(2 * n, pos, len(data), None)
    raw = bytes(data[pos:pos + 2 * n])
    result: Dict[int, int] = {}
    for i in range(0, 2 * n, 2):
        if raw[i] in result:
            raise ProtocolError(f"duplicate key {raw[i]} in u8 dict at offset {offset}")
        result[raw[i]] = raw[i + 1]
    return result, pos + 2 * n


# -- writer -----------------------------------------------------------------

def _check_range(name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} out of range [{low}, {high}]: {value}")
    return value


class Writer:
    """A growable output buffer with the protocol's primitive writers.

    ``getvalue()`` returns the bytes written so far. Values out of range raise
    ``ValueError``; values of the wrong type raise ``TypeError``.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def getvalue(self) -> bytes:
        return bytes(self._buf)

    def write_u8(self, value: int) -> None:
        self._buf += _U8.pack(_check_range("u8", value, 0, 0xFF))

    def write_u16(self, value: int) -> None:
        self._buf += _U16.pack(_check_range("u16", value, 0, 0xFFFF))

    def write_i32(self, value: int) -> None:
        self._buf += _I32.pack(_check_range("i32", value, -(1 << 31), (1 << 31) - 1))

    def write_i64(self, value: int) -> None:
        self._buf += _I64.pack(_check_range("i64", value, -(1 << 63), (1 << 63) - 1))

    def write_bytes(self, data: Buffer) -> None:
        self._buf += data

    def write_string(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"string must be str, not {type(value).__name__}")
        raw = value.encode("utf-8")
        self._buf += _pack_i32(len(raw))
        self._buf += raw

    def write_string_map(self, mapping: Mapping[str, str]) -> None:
        self._buf += _pack_i32(len(mapping))
        for key, value in mapping.items():
            self.write_string(key)
            self.write_string(value)

    def write_u8_list(self, values: Sequence[int]) -> None:
        if len(values) > 0xFF:
            raise ValueError(f"u8 list too long: {len(values)} items, at most 255")
        for v in values:
            _check_range("u8 list item", v, 0, 0xFF)
        self._buf.append(len(values))
        self._buf += bytes(values)

    def write_u8_dict(self, mapping: Mapping[int, int]) -> None:
        if len(mapping) > 0xFF:
            raise ValueError(f"u8 dict too long: {len(mapping)} items, at most 255")
        self._buf.append(len(mapping))
        for key, value in mapping.items():
            self._buf.append(_check_range("u8 dict key", key, 0, 0xFF))
            self._buf.append(_check_range("u8 dict value", value, 0, 0xFF))


# -- frames -----------------------------------------------------------------

def read_frame_header(buf: Buffer, offset: int = 0,
                      max_length: int = DEFAULT_MAX_FRAME) -> Tuple[int, int]:
    """``[u8 opcode][i32 length]`` -> ``(opcode, length)``.

    Fewer than 5 bytes, an unknown opcode, a negative length or one over
    ``max_length`` is a fatal ``ProtocolError`` (``fatal=True``): such a frame
    cannot be delimited or must not be read.
    """
    data = _bytes_of(buf)
    _check_offset(offset)
    if offset + 5 > len(data):
        error = _truncated(5, offset, len(data), None)
        error.fatal = True
        raise error
    opcode, length = _FRAME_HEADER.unpack_from(data, offset)
    if opcode > _MAX_OPCODE:
        raise ProtocolError(f"unknown opcode {opcode}", opcode, True)
    if length < 0:
        raise ProtocolError(f"negative frame length {length}", opcode, True)
    if length > max_length:
        raise ProtocolError(f"frame length {length} exceeds the limit of {max_length} bytes",
                            opcode, True)
    return opcode, length


def encode_frame(opcode: int, body: Buffer) -> bytes:
    """``[u8 opcode][i32 len(body)][body]``."""
    data = _bytes_of(body)
    _check_range("opcode", opcode, 0, 0xFF)
    if len(data) > 0x7FFFFFFF:
        raise ValueError(f"frame body too long: {len(data)} bytes")
    return _FRAME_HEADER.pack(opcode, len(data)) + bytes(data)


# -- table bodies -----------------------------------------------------------

def _table_spec(opcode: int) -> TableSpec:
    spec = TABLES_BY_OPCODE.get(opcode) if isinstance(opcode, int) else None
    if spec is None:
        raise ValueError(f"not a table opcode: {opcode!r}")
    return spec


def _column_indexes(spec: TableSpec, columns: Optional[Sequence[str]]) -> Tuple[int, ...]:
    if columns is None:
        return tuple(range(len(spec.required_keys)))
    index = _KEY_INDEX[spec.opcode]
    seen = set()
    out: List[int] = []
    for c in columns:
        i = index.get(c) if isinstance(c, str) else None
        if i is None:
            raise ValueError(f"unknown column {c!r} for table {spec.name}")
        if i in seen:
            raise ValueError(f"duplicate column {c!r}")
        seen.add(i)
        out.append(i)
    return tuple(out)


def _read_table_header(body: Any, size: int, opcode: int) -> Tuple[int, int, int]:
    if size < 13:
        raise _truncated(13, 0, size, opcode)
    n_rows, batch_number, status = _TABLE_HEADER.unpack_from(body, 0)
    if n_rows < 0:
        raise ProtocolError(f"negative row count {n_rows}", opcode)
    if status > BatchStatus.CANCEL:
        raise ProtocolError(f"invalid batch status {status}", opcode)
    return n_rows, batch_number, status


def _scan_rows(opcode: int, body: Any,
               projected: bool) -> Tuple[int, int, Tuple[str, ...], List[List[Any]]]:
    """Validate a table body; yield nothing, return ``(batch, status, keys, rows)``.

    ``rows`` is a list of lists of value strings, one list per row, indexed like
    the table's required keys (``None`` where a projection left a key out);
    ``keys`` are the keys present, in the first row's order (the required keys,
    in spec order, for a full batch).
    """
    spec = TABLES_BY_OPCODE[opcode]
    lookup = _KEY_LOOKUP[opcode]
    index = _KEY_INDEX[opcode]
    n_keys = len(spec.required_keys)
    size = len(body)
    n_rows, batch_number, status = _read_table_header(body, size, opcode)
    # Every row takes at least its 4-byte pair count: reject impossible counts
    # before building anything proportional to them.
    if n_rows > (size - 13) // 4:
        raise ProtocolError(f"row count {n_rows} exceeds what {size - 13} body bytes can hold",
                            opcode)
    pos = 13
    # A full batch must carry the required keys; a projection, row 0's keys.
    present: Optional[List[str]] = None if projected else list(spec.required_keys)
    present_set: FrozenSet[str] = frozenset()
    expected = n_keys
    rows: List[List[Any]] = []
    for r in range(n_rows):
        if pos + 4 > size:
            raise _truncated(4, pos, size, opcode)
        n_pairs = _unpack_i32(body, pos)[0]
        if present is not None and n_pairs != expected:
            raise ProtocolError(f"row {r}: expected {expected} pairs, got {n_pairs}", opcode)
        if n_pairs < 0 or n_pairs > n_keys:
            raise ProtocolError(f"row {r}: expected at most {n_keys} pairs, got {n_pairs}", opcode)
        pos += 4
        values: List[Any] = [None] * n_keys
        order: List[str] = []
        for _ in range(n_pairs):
            start = pos
            raw, pos = _read_string_bytes(body, pos, size, opcode)
            key = lookup.get(bytes(raw))
            if key is None:
                key = _utf8(raw, start, opcode)
                raise ProtocolError(f"row {r}: unknown key {key!r}", opcode)
            i = index[key]
            if values[i] is not None:
                raise ProtocolError(f"row {r}: duplicate key {key!r}", opcode)
            if projected and present is not None and key not in present_set:
                raise ProtocolError(f"row {r}: key {key!r} not in the batch's columns", opcode)
            start = pos
            raw, pos = _read_string_bytes(body, pos, size, opcode)
            values[i] = _utf8(raw, start, opcode)
            order.append(key)
        if present is None:
            present = order
            present_set = frozenset(order)
            expected = n_pairs
        rows.append(values)
    if pos != size:
        raise ProtocolError(f"{size - pos} trailing bytes after {n_rows} rows", opcode)
    keys = tuple(present) if present is not None else ()
    return batch_number, status, keys, rows


def _picker(picks: Tuple[int, ...]) -> Callable[[Sequence[Any]], Tuple[Any, ...]]:
    """A callable taking a row's values at ``picks`` as a tuple (itemgetter gives a
    bare value for one pick, so fewer than two take the slow road)."""
    if len(picks) > 1:
        return operator.itemgetter(*picks)
    return lambda values: tuple([values[i] for i in picks])


def _row_order(opcode: int, body: bytes, pos: int,
               n_keys: int) -> Tuple[Optional[Tuple[int, ...]], int]:
    """The keys of the full row at ``pos`` as positions in the required keys, and
    where the row ends; ``(None, pos)`` if it is not a full row."""
    position = _KEY_POSITION[opcode]
    order = []
    try:
        if _U32.unpack_from(body, pos)[0] != n_keys:
            return None, pos
        end = pos + 4
        for _ in range(n_keys):
            # Keys are shorter than 256 bytes: the low length byte is the
            # length, and the lookup rejects any other prefix.
            start = end + 4 + body[end]
            order.append(position[body[end:start]])
            end = start + 4 + _U32.unpack_from(body, start)[0]
    except (struct.error, KeyError, IndexError):
        return None, pos
    return (tuple(order), end) if len(set(order)) == n_keys else (None, pos)


@functools.lru_cache(maxsize=64)  # bounded: a peer picks the key orders
def _row_pattern(opcode: int, order: Tuple[int, ...]) -> Tuple[
        re.Pattern[str], int, Callable[[Sequence[Any]], Tuple[Any, ...]],
        Callable[[Sequence[Any]], Tuple[Any, ...]]]:
    """``(regex, fixed, values_of, lengths_of)`` for full rows whose keys come in ``order``.

    The regex matches one row of the body decoded as Latin-1, with each value's
    low length byte and the value as groups: a value is a run of characters
    from U+0020 up, so it ends where the next key's length prefix (a byte
    below 0x20: keys are short) begins. ``fixed`` is a row's length less its
    values; ``values_of`` / ``lengths_of`` take a match's values / length
    characters in the table's key order.
    """
    keys = [TABLES_BY_OPCODE[opcode].required_keys[i] for i in order]
    parts = [re.escape(_pack_i32(len(keys)).decode("latin-1"))]
    fixed = 4
    for key in keys:
        wire_key = (_pack_i32(len(key)) + key.encode()).decode("latin-1")
        parts.append(re.escape(wire_key) + "(.)\\x00\\x00\\x00([^\\x00-\\x1f]*)")
        fixed += len(wire_key) + 4
    slots = [order.index(i) for i in range(len(order))]  # key i's place on the wire
    return (re.compile("".join(parts), re.DOTALL), fixed,
            _picker(tuple(2 * j + 1 for j in slots)), _picker(tuple(2 * j for j in slots)))


def _rows_by_pattern(opcode: int, body: bytes, n_rows: int, n_keys: int,
                     order: Tuple[int, ...]) -> Optional[List[Any]]:
    """The rows (tuples) of a valid full-key body whose rows all list their keys
    in ``order``, or ``None`` if anything is off.

    Optimistic and per batch, not per value: one regex pass finds every row
    in that order, each value shorter than 256 bytes and free of control
    characters (the common case); then the value lengths, the row count and
    the total size are compared with the wire in bulk. When all agree, each
    value's length prefix was right, so the regex parsed exactly what a
    byte-by-byte reader would.
    """
    regex, fixed, values_of, lengths_of = _row_pattern(opcode, order)
    text = body.decode("latin-1")
    found = regex.findall(text, 13)
    if len(found) != n_rows:
        return None
    rows = list(map(values_of, found))
    lengths = "".join(itertools.chain.from_iterable(map(lengths_of, found))).encode("latin-1")
    try:
        if lengths != bytes(map(len, itertools.chain.from_iterable(rows))):
            return None  # some length prefix disagrees with its value
    except ValueError:
        return None  # a value of 256 bytes or more
    if 13 + fixed * n_rows + sum(lengths) != len(body):
        return None  # the rows do not cover the body: a gap or trailing bytes
    if not body[13:].isascii():  # then values are Latin-1 text of UTF-8 bytes
        if _SURROGATE.search(body, 13) is not None:
            return None
        try:
            values = list(map(bytes.decode, map(str.encode, itertools.chain.from_iterable(rows),
                                                itertools.repeat("latin-1")),
                              itertools.repeat(_UTF8)))
        except UnicodeDecodeError:
            return None
        rows = list(zip(*[iter(values)] * n_keys))
    return rows


def _rows_by_value(opcode: int, body: bytes, n_rows: int, n_keys: int) -> Optional[List[Any]]:
    """The rows (lists) of a valid full-key body in any key order, or ``None``
    if anything is off.

    Optimistic like ``_rows_by_pattern`` but value by value, for what the
    pattern does not take: rows in varying key orders (a Go client writes a
    map's keys in random order), long values, control characters. An ASCII
    body is decoded once and sliced, one object per value.
    """
    position = _KEY_POSITION[opcode]
    # Lengths read unsigned: a negative one becomes a huge one, which runs past
    # the end, and every overrun ends in an exception or in ``pos != size``.
    unpack = _U32.unpack_from
    text: Any = body.decode("latin-1") if body[13:].isascii() else None
    if text is None and _SURROGATE.search(body, 13) is not None:
        return None
    rows: List[Any] = []
    append = rows.append
    pos = 13
    try:
        for _ in range(n_rows):
            if unpack(body, pos)[0] != n_keys:
                return None
            pos += 4
            values: List[Any] = [None] * n_keys
            for _ in range(n_keys):
                start = pos + 4 + body[pos]  # short keys, as in _row_order
                i = position[body[pos:start]]
                pos = start + 4 + unpack(body, start)[0]
                values[i] = (text[start + 4:pos] if text is not None
                             else body[start + 4:pos].decode(_UTF8))
            if None in values:
                return None
            append(values)
    except (struct.error, KeyError, IndexError, UnicodeDecodeError):
        return None
    return rows if pos == len(body) else None


def _fast_rows(opcode: int, body: bytes, n_rows: int, n_keys: int) -> Optional[List[Any]]:
    """The rows of a valid full-key body, or ``None`` for ``_scan_rows`` to name
    the first error: one regex pass when rows 0 and 1 list their keys alike,
    else (or if that pass fails) value by value."""
    order, end = _row_order(opcode, body, 13, n_keys)
    if order is not None and (n_rows < 2 or _row_order(opcode, body, end, n_keys)[0] == order):
        rows = _rows_by_pattern(opcode, body, n_rows, n_keys, order)
        if rows is not None:
            return rows
    return _rows_by_value(opcode, body, n_rows, n_keys)


def _table_rows(opcode: int, body: Any,
                projected: bool) -> Tuple[int, int, Tuple[str, ...], List[Any]]:
    """``_scan_rows``'s result, through a fast path when one applies."""
    # One copy of the body, then every read is of bytes: linear on any
    # interpreter, whatever view the caller passed (_buffers.byte_view).
    data = body if type(body) is bytes else bytes(body)
    if not projected:
        n_rows, batch_number, status = _read_table_header(data, len(data), opcode)
        if n_rows <= (len(data) - 13) // 4:
            spec = TABLES_BY_OPCODE[opcode]
            rows = _fast_rows(opcode, data, n_rows, len(spec.required_keys))
            if rows is not None:
                return batch_number, status, spec.required_keys, rows
    return _scan_rows(opcode, data, projected)


@overload
def decode_table_body(opcode: int, body: Buffer, row_type: Literal["object"] = ...,
                      columns: Optional[Sequence[str]] = ...,
                      projected: bool = ...) -> Tuple[int, int, Tuple[str, ...], List[TableRow]]:
    ...
@overload
def decode_table_body(opcode: int, body: Buffer, row_type: Literal["dict"],
                      columns: Optional[Sequence[str]] = ...,
                      projected: bool = ...) -> Tuple[int, int, Tuple[str, ...], List[DictRow]]:
    ...
@overload
def decode_table_body(opcode: int, body: Buffer, row_type: Literal["tuple"],
                      columns: Optional[Sequence[str]] = ...,
                      projected: bool = ...) -> Tuple[int, int, Tuple[str, ...], List[TupleRow]]:
    ...
@overload
def decode_table_body(
        opcode: int, body: Buffer, row_type: RowType = ...,
        columns: Optional[Sequence[str]] = ..., projected: bool = ...,
) -> Tuple[int, int, Tuple[str, ...], Union[List[TableRow], List[DictRow], List[TupleRow]]]:
    ...
def decode_table_body(
        opcode: int, body: Buffer, row_type: RowType = "object",
        columns: Optional[Sequence[str]] = None, projected: bool = False,
) -> Tuple[int, int, Tuple[str, ...], Union[List[TableRow], List[DictRow], List[TupleRow]]]:
    """Decode a table body (PROTOCOL.md §4) -> ``(batch_number, status, keys, rows)``.

    Layout: ``[i32 nRows][i64 batchNumber][u8 status][string map] * nRows``.

    ``row_type`` picks the row shape: ``"object"`` (the table's row class,
    e.g. ``RawTransaction``), ``"dict"`` (keys in ``keys`` order) or ``"tuple"``
    (values in ``columns`` order, default the table's required keys). Every
    row must carry exactly the table's required keys; with ``projected=True``
    (a DataBatch's embedded body, §6) every row must carry the same subset of
    them instead, and a key left out reads as ``None`` in objects and tuples.
    ``keys`` are the keys the rows carry.
    """
    data = _bytes_of(body)
    spec = _table_spec(opcode)
    if row_type not in _ROW_TYPES:
        raise ValueError(f"row_type must be 'object', 'dict' or 'tuple', not {row_type!r}")
    picks = _column_indexes(spec, columns) if row_type == "tuple" else ()
    batch_number, status, keys, raw_rows = _table_rows(opcode, data, projected)
    # Rows are built with map() over C callables: no Python frame per row.
    rows: List[Any]
    if row_type == "object":
        rows = list(map(tuple.__new__, itertools.repeat(spec.row_class), raw_rows))
    elif row_type == "tuple":
        rows = list(map(tuple if picks == tuple(range(len(spec.required_keys)))
                        else _picker(picks), raw_rows))
    else:
        picks = tuple(_KEY_INDEX[opcode][k] for k in keys)
        if picks != tuple(range(len(picks))):
            raw_rows = list(map(_picker(picks), raw_rows))
        rows = list(map(dict, map(zip, itertools.repeat(keys), raw_rows)))
    return batch_number, status, keys, rows


def decode_eof_body(body: Any) -> Tuple[int, str]:
    """Decode an EOF body (PROTOCOL.md §5) -> ``(batch_number, table_type)``."""
    data = _bytes_of(body)
    opcode = Opcodes.EOF
    size = len(data)
    n_rows, batch_number, status = _read_table_header(data, size, opcode)
    if n_rows != 1:
        raise ProtocolError(f"EOF: expected 1 row, got {n_rows}", opcode)
    if status != BatchStatus.EOF:
        raise ProtocolError(f"EOF: expected status 1 (EOF), got {status}", opcode)
    if 17 > size:
        raise _truncated(4, 13, size, opcode)
    n_pairs = _unpack_i32(data, 13)[0]
    if n_pairs != 1:
        raise ProtocolError(f"EOF: expected 1 pair, got {n_pairs}", opcode)
    raw, pos = _read_string_bytes(data, 17, size, opcode)
    key = _utf8(raw, 17, opcode)
    if key != EOF_KEY:
        raise ProtocolError(f"EOF: expected key 'table_type', got {key!r}", opcode)
    start = pos
    raw, pos = _read_string_bytes(data, pos, size, opcode)
    table_type = _utf8(raw, start, opcode)
    if table_type not in TABLES_BY_NAME:
        raise ProtocolError(f"EOF: unknown table type {table_type!r}", opcode)
    if pos != size:
        raise ProtocolError(f"{size - pos} trailing bytes after 1 rows", opcode)
    return batch_number, TABLES_BY_NAME[table_type].name


def decode_finished_body(body: Any) -> int:
    """Decode a FINISHED body ``[i32 agency_id]`` -> ``agency_id``."""
    data = _bytes_of(body)
    if len(data) != 4:
        raise ProtocolError(f"FINISHED body must be 4 bytes, got {len(data)}", Opcodes.FINISHED)
    agency_id: int = _unpack_i32(data, 0)[0]
    return agency_id


def decode_ack_body(opcode: int, body: Any) -> None:
    """Check an ACK body (opcodes 1 and 2): it must be empty."""
    data = _bytes_of(body)
    name = _ACK_NAMES.get(opcode)
    if name is None:
        raise ValueError(f"not an ACK opcode: {opcode!r}")
    if len(data) != 0:
        raise ProtocolError(f"{name} body must be empty, got {len(data)} bytes", opcode)


# -- DataBatch --------------------------------------------------------------

def decode_databatch_body(body: Buffer) -> Tuple[List[int], List[int], int, int, Dict[int, int],
                                                 int, int, int, int]:
    """Decode a DataBatch body (PROTOCOL.md §6).

    Layout: ``[u8 list table_ids][u8 list query_ids][u16 reserved][i64 batch_number]
    [u8 dict meta][u16 total_shards][u16 shard_num][u8 opcode][i32 length][body]``.

    Returns ``(table_ids, query_ids, reserved, batch_number, meta, total_shards,
    shard_num, inner_opcode, inner_offset)``; the embedded body is
    ``body[inner_offset:]``, which this function has checked is exactly
    ``length`` bytes long. It does not decode the embedded body.
    """
    data = _bytes_of(body)
    opcode = Opcodes.DATA_BATCH
    size = len(data)
    try:
        table_ids, pos = read_u8_list(data, 0)
        query_ids, pos = read_u8_list(data, pos)
        reserved, pos = read_u16(data, pos)
        batch_number, pos = read_i64(data, pos)
        meta, pos = read_u8_dict(data, pos)
        total_shards, pos = read_u16(data, pos)
        shard_num, pos = read_u16(data, pos)
    except ProtocolError as exc:
        raise ProtocolError(exc.message, opcode) from None
    if pos + 5 > size:
        raise _truncated(5, pos, size, opcode)
    inner_opcode, inner_length = _FRAME_HEADER.unpack_from(data, pos)
    if inner_opcode == Opcodes.DATA_BATCH:
        raise ProtocolError("nested DataBatch", opcode)
    if inner_opcode > _MAX_OPCODE:
        raise ProtocolError(f"unknown opcode {inner_opcode}", opcode)
    if inner_opcode in _ACK_NAMES:
        raise ProtocolError(f"DataBatch cannot embed opcode {inner_opcode}", opcode)
    pos += 5
    if inner_length != size - pos:
        raise ProtocolError(
            f"embedded frame length {inner_length} does not match the {size - pos} bytes left",
            opcode)
    return (table_ids, query_ids, reserved, batch_number, meta, total_shards, shard_num,
            inner_opcode, pos)


def encode_databatch_header(table_ids: Sequence[int], query_ids: Sequence[int], reserved: int,
                            batch_number: int, meta: Mapping[int, int], total_shards: int,
                            shard_num: int) -> bytes:
    """Encode a DataBatch body's header, everything before the embedded frame.

    Invalid values raise ``ValueError`` (out of range, too many items) or
    ``TypeError`` (not an int).
    """
    return bytes(_databatch_header(table_ids, query_ids, reserved, batch_number, meta,
                                   total_shards, shard_num)._buf)


def _databatch_header(table_ids: Sequence[int], query_ids: Sequence[int], reserved: int,
                      batch_number: int, meta: Mapping[int, int], total_shards: int,
                      shard_num: int) -> Writer:
    w = Writer()
    w.write_u8_list(table_ids)
    w.write_u8_list(query_ids)
    w.write_u16(reserved)
    w.write_i64(batch_number)
    w.write_u8_dict(meta)
    w.write_u16(total_shards)
    w.write_u16(shard_num)
    return w


def check_embedded(embedded: Any) -> None:
    """Check that ``embedded`` is one well-framed message a DataBatch may carry.

    Raises ``ValueError`` otherwise: ``[u8 opcode][i32 n][n bytes]``, exactly,
    and not itself a DataBatch.
    """
    data = _bytes_of(embedded)
    size = len(data)
    if size < 5 or _unpack_i32(data, 1)[0] != size - 5:
        raise ValueError("embedded bytes are not one well-framed message ([u8][i32 n][n bytes])")
    inner_opcode = data[0]
    if inner_opcode == Opcodes.DATA_BATCH:
        raise ValueError("a DataBatch cannot embed a DataBatch")
    if not Opcodes.FINISHED <= inner_opcode <= Opcodes.EOF:
        raise ValueError(f"a DataBatch cannot embed opcode {inner_opcode}")


def encode_databatch_frame(table_ids: Sequence[int], query_ids: Sequence[int], reserved: int,
                           batch_number: int, meta: Mapping[int, int], total_shards: int,
                           shard_num: int, embedded: Any) -> bytes:
    """Encode a whole DataBatch frame around ``embedded``, an already framed message.

    Invalid header values or an embedded value that is not one well-framed
    message raise ``ValueError``.
    """
    w = _databatch_header(table_ids, query_ids, reserved, batch_number, meta,
                          total_shards, shard_num)
    check_embedded(embedded)
    w.write_bytes(embedded)
    return encode_frame(Opcodes.DATA_BATCH, w._buf)


# -- encoders ---------------------------------------------------------------

def _row_values(spec: TableSpec, row: Any, r: int, columns: Sequence[str],
                picks: Tuple[int, ...]) -> List[Any]:
    if isinstance(row, spec.row_class):
        return [row[i] for i in picks]
    if isinstance(row, Mapping):
        if len(row) != len(columns):
            raise ValueError(f"row {r}: expected keys {list(columns)}, got {list(row)}")
        try:
            return [row[c] for c in columns]
        except KeyError as exc:
            raise ValueError(f"row {r}: missing key {exc.args[0]!r}") from None
    if isinstance(row, (tuple, list)):
        if len(row) != len(columns):
            raise ValueError(f"row {r}: expected {len(columns)} values, got {len(row)}")
        return list(row)
    raise TypeError(f"row {r}: expected a mapping, a {spec.row_class.__name__} or a sequence, "
                    f"not {type(row).__name__}")


def encode_table_frame(opcode: int, batch_number: int, status: int, rows: Sequence[Any],
                       columns: Optional[Sequence[str]] = None) -> bytes:
    """Encode a table batch frame: ``[u8 opcode][i32 len][table body]`` (PROTOCOL.md §4).

    Each row is a mapping (key -> str), an instance of the table's row class,
    or a sequence of values in ``columns`` order. ``columns`` (default: the
    table's required keys, in spec order) are the keys written, in that order;
    a subset makes a projected body (§8).
    """
    spec = _table_spec(opcode)
    picks = _column_indexes(spec, columns)
    names = [spec.required_keys[i] for i in picks]
    _check_range("batch_number", batch_number, -(1 << 63), (1 << 63) - 1)
    if status not in (0, 1, 2):
        raise ValueError(f"invalid batch status {status!r}")
    if not isinstance(status, int):  # 1.0 == 1, but a status byte is an int
        raise TypeError(f"'{type(status).__name__}' object cannot be interpreted as an integer")
    if len(rows) > 0x7FFFFFFF:
        raise ValueError(f"too many rows: {len(rows)}")
    encoded_keys = [_pack_i32(len(k)) + k.encode() for k in names]
    parts = [b"", _TABLE_HEADER.pack(len(rows), batch_number, status)]
    n_pairs = _pack_i32(len(names))
    for r, row in enumerate(rows):
        values = _row_values(spec, row, r, names, picks)
        parts.append(n_pairs)
        for key, name, value in zip(encoded_keys, names, values):
            if not isinstance(value, str):
                raise TypeError(f"row {r}: value of {name!r} must be str, not "
                                f"{type(value).__name__}")
            raw = value.encode("utf-8")
            parts.append(key)
            parts.append(_pack_i32(len(raw)))
            parts.append(raw)
    body_size = sum(map(len, parts))
    if body_size > 0x7FFFFFFF:
        raise ValueError(f"frame body too long: {body_size} bytes")
    parts[0] = _FRAME_HEADER.pack(opcode, body_size)
    return b"".join(parts)


def encode_eof_frame(batch_number: int, table_type: str) -> bytes:
    """Encode an EOF frame (PROTOCOL.md §5) for ``table_type``."""
    if table_type not in TABLES_BY_NAME:
        raise ValueError(f"unknown table type {table_type!r}")
    _check_range("batch_number", batch_number, -(1 << 63), (1 << 63) - 1)
    w = Writer()
    w.write_bytes(_TABLE_HEADER.pack(1, batch_number, BatchStatus.EOF))
    w.write_string_map({EOF_KEY: table_type})
    return encode_frame(Opcodes.EOF, w._buf)


def encode_finished_frame(agency_id: int) -> bytes:
    """Encode a FINISHED frame: ``[u8 3][i32 4][i32 agency_id]``."""
    _check_range("agency_id", agency_id, -(1 << 31), (1 << 31) - 1)
    return _FRAME_HEADER.pack(Opcodes.FINISHED, 4) + _pack_i32(agency_id)


def project_databatch(opcode: int, body: Any, table_ids: Sequence[int],
                      query_ids: Sequence[int], meta: Mapping[int, int], total_shards: int,
                      shard_num: int, reserved: int = 0,
                      columns: Optional[Sequence[str]] = None) -> bytes:
    """Validate a client table body and wrap its projection in a DataBatch frame.

    The one step the orchestrator does per batch (PROTOCOL.md §8): the body
    is validated exactly as ``decode_table_body`` does (same errors), the
    rows keep ``columns`` (default: the table's kept columns, in §8 order),
    and the result is a whole DataBatch frame whose ``batch_number`` is the
    batch's own, embedding the projected table frame.
    """
    data = _bytes_of(body)
    spec = _table_spec(opcode)
    picks = _column_indexes(spec, spec.kept_columns if columns is None else columns)
    # Header arguments are checked before the body; the batch number is patched in.
    header = _databatch_header(table_ids, query_ids, reserved, 0, meta, total_shards, shard_num)
    data = data if type(data) is bytes else bytes(data)
    n_rows, batch_number, status = _read_table_header(data, len(data), opcode)
    rows = None
    if n_rows <= (len(data) - 13) // 4:
        rows = _fast_projection(opcode, data, n_rows, len(spec.required_keys), picks)
    if rows is None:
        batch_number, status, _, raw_rows = _scan_rows(opcode, data, False)
        names = [spec.required_keys[i] for i in picks]
        embedded = encode_table_frame(opcode, batch_number, status,
                                      [[values[i] for i in picks] for values in raw_rows], names)
    else:
        table_body = b"".join([_TABLE_HEADER.pack(n_rows, batch_number, status), *rows])
        embedded = _FRAME_HEADER.pack(opcode, len(table_body)) + table_body
    number_at = 1 + len(table_ids) + 1 + len(query_ids) + 2
    header._buf[number_at:number_at + 8] = _I64.pack(batch_number)
    header.write_bytes(embedded)
    return encode_frame(Opcodes.DATA_BATCH, header._buf)


def _fast_projection(opcode: int, body: bytes, n_rows: int, n_keys: int,
                     picks: Tuple[int, ...]) -> Optional[List[bytes]]:
    """Each projected row's wire bytes, copied from ``body``; ``None`` if anything is off.

    Optimistic like ``_rows_by_value``: each key is one slice and one lookup,
    each value is sliced as a wire string (length prefix included) and never
    decoded, only checked as UTF-8 where the body is not ASCII. Naming the
    first error is left to ``_scan_rows``.
    """
    position = _KEY_POSITION[opcode]
    # Lengths read unsigned: a negative one becomes a huge one, which runs past
    # the end, and every overrun ends in an exception or in ``pos != len(body)``.
    unpack = _U32.unpack_from
    # Valid UTF-8 only needs checking where some byte is not ASCII.
    check_utf8 = not body[13:].isascii()
    if check_utf8 and _SURROGATE.search(body, 13) is not None:
        return None
    wire_keys = {i: key for key, i in position.items()}
    kept = [(wire_keys[i], i) for i in picks]
    row_head = _pack_i32(len(picks))
    rows: List[bytes] = []
    append = rows.append
    pos = 13
    try:
        for _ in range(n_rows):
            if unpack(body, pos)[0] != n_keys:
                return None
            pos += 4
            spans: List[Any] = [None] * n_keys
            for _ in range(n_keys):
                # Keys are shorter than 256 bytes: the low length byte is the
                # length, and the lookup rejects any other prefix.
                start = pos + 4 + body[pos]
                i = position[body[pos:start]]
                pos = start + 4 + unpack(body, start)[0]
                spans[i] = body[start:pos]
                if check_utf8:
                    spans[i][4:].decode(_UTF8)
            if None in spans:
                return None
            append(row_head + b"".join([part for key, i in kept for part in (key, spans[i])]))
    except (struct.error, KeyError, IndexError, UnicodeDecodeError):
        return None
    return rows if pos == len(body) else None


# -- columns ----------------------------------------------------------------

# The number grammar both codecs accept: plain decimal, no spaces, no "_",
# no inf/nan words; an empty float field is NaN.
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_COLUMN_DTYPES = ("object", "float64", "int64")


def _column_dtype(name: str, dtype: Any) -> str:
    # A name, a Python type, a numpy scalar type (np.float64) or a numpy dtype.
    if isinstance(dtype, str):
        text = dtype
    elif isinstance(dtype, type):
        text = {float: "float64", int: "int64", str: "object", object: "object"}.get(
            dtype, dtype.__name__)
    else:
        text = str(getattr(dtype, "name", None))
    if text not in _COLUMN_DTYPES:
        raise ValueError(f"dtype of column {name!r} must be float64, int64 or object, "
                         f"not {dtype!r}")
    return text


def _parse_number(name: str, r: int, value: str, dtype: str) -> Any:
    if dtype == "float64":
        if value == "":
            return float("nan")
        if _FLOAT_TEXT.fullmatch(value):
            return float(value)
    elif _INT_TEXT.fullmatch(value):
        number = int(value)
        if -(1 << 63) <= number < (1 << 63):
            return number
    raise ValueError(f"column {name!r}, row {r}: cannot parse {value!r} as {dtype}")


def _table_batch(frame: Any, consumer: str) -> Tuple[int, memoryview, bool]:
    """A table frame, or a DataBatch frame embedding one -> ``(opcode, body, projected)``."""
    opcode, length = read_frame_header(frame, 0, 0x7FFFFFFF)
    view = byte_view(frame)
    if len(view) != 5 + length:
        raise ProtocolError(f"frame length {length} does not match the {len(view) - 5} "
                            f"bytes given", opcode)
    body = view[5:]
    projected = opcode == Opcodes.DATA_BATCH
    if projected:
        header = decode_databatch_body(body)
        opcode, body = header[7], body[header[8]:]
    if opcode not in TABLES_BY_OPCODE:
        raise ProtocolError(f"{consumer} needs a table batch, got opcode {opcode}", opcode)
    return opcode, body, projected


def decode_columns(frame: Any, columns: Optional[Sequence[str]] = None,
                   dtypes: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Decode a table frame, or a DataBatch frame embedding one, into numpy columns.

    Returns ``{column: array}`` for ``columns`` (default: every key the rows
    carry, in order). Arrays hold ``str`` objects, except the columns that
    ``dtypes`` maps to ``"float64"`` (an empty field is NaN) or ``"int64"``,
    which are parsed from plain decimal text (``ValueError`` otherwise).
    """
    import numpy as np

    opcode, body, projected = _table_batch(frame, "decode_columns")
    _, _, keys, rows = decode_table_body(opcode, body, "dict", None, projected)
    names = list(keys) if columns is None else list(columns)
    kinds = {name: "object" for name in names}
    for name, dtype in (dtypes or {}).items():
        if name not in kinds:
            raise ValueError(f"dtype given for column {name!r}, which is not decoded")
        kinds[name] = _column_dtype(name, dtype)
    result = {}
    for name in names:
        if name not in keys:
            raise ValueError(f"column {name!r} is not in the batch; it has {list(keys)}")
        values = [row[name] for row in rows]
        kind = kinds[name]
        if kind == "object":
            array = np.empty(len(values), dtype=object)
            array[:] = values
        else:
            array = np.array([_parse_number(name, r, v, kind) for r, v in enumerate(values)],
                             dtype=kind)
        result[name] = array
    return result


# -- CSV to frames (the client's encoder) ----------------------------------------

_CSV_EMPTY_FRAME = 5 + 13  # frame header + table header: a batch of no rows

def _csv_record(data: bytes, pos: int, line: int) -> Tuple[List[bytes], int, int]:
    """One RFC 4180 record at ``pos`` -> ``(raw fields, next pos, lines it spans)``.

    Strict: a quote may only open a field and close it (``""`` inside a quoted
    field is one quote), a closing quote must be followed by ``,`` or the line
    end (``\n`` or ``\r\n``), and a quoted field must close before the data
    ends. Errors name ``line``, where the record starts.
    """
    end = data.find(b"\n", pos)
    if end < 0:
        end = len(data)
    raw = data[pos:end]
    if raw.endswith(b"\r"):  # "\r\n", or "\r" ending the data, ends the line
        raw = raw[:-1]
    if b'"' not in raw:  # the common record: no quoting at all
        return raw.split(b","), end + 1, 1
    fields: List[bytes] = []
    size = len(data)
    spans = 1
    i = pos
    while True:
        if i < size and data[i] == 0x22:  # a quoted field
            value = bytearray()
            i += 1
            while True:
                close = data.find(b'"', i)
                if close < 0:
                    raise CsvError("unterminated quoted field", line)
                spans += data.count(b"\n", i, close)
                value += data[i:close]
                if data[close + 1:close + 2] == b'"':
                    value += b'"'
                    i = close + 2
                    continue
                i = close + 1
                break
            fields.append(bytes(value))
        else:
            stop = i
            while stop < size and data[stop] not in b',"\n':
                stop += 1
            if stop < size and data[stop] == 0x22:
                raise CsvError("quote inside an unquoted field", line)
            field = data[i:stop]
            if field.endswith(b"\r") and (stop >= size or data[stop] == 0x0A):
                field = field[:-1]
            fields.append(field)
            i = stop
        if i >= size:
            return fields, size + 1, spans
        if data[i] == 0x2C:  # ","
            i += 1
            continue
        if data[i] == 0x0A:
            return fields, i + 1, spans
        if data[i] == 0x0D and data[i + 1:i + 2] in (b"\n", b""):
            return fields, i + 2, spans
        raise CsvError("unexpected character after a closing quote", line)


def _valid_utf8(value: bytes) -> bool:
    """UTF-8 as the Cython codec checks it: encoded surrogates are invalid too."""
    try:
        value.decode(_UTF8)
    except UnicodeDecodeError:
        return False
    return _SURROGATE.search(value) is None


def _blank_line(data: bytes, pos: int) -> int:
    """Length of the empty line at ``pos`` ("\n", "\r\n", or "\r" ending the data), else 0."""
    head = data[pos:pos + 2]
    if head[:1] == b"\n":
        return 1
    if head == b"\r\n":
        return 2
    return 1 if head == b"\r" and pos + 1 == len(data) else 0


def encode_csv_batch(opcode: int, data: bytes, offset: int, line: int, picks: Sequence[int],
                     width: int, batch_number: int, max_rows: int,
                     max_bytes: int) -> Tuple[bytes, int, int, int]:
    """Encode CSV records of ``data`` from ``offset`` into one table frame.

    ``data`` holds a CSV file's records (UTF-8, RFC 4180, header line
    excluded); ``offset`` starts a record on line ``line``. Each record has
    ``width`` fields and field ``picks[i]`` carries the table's i-th required
    key. Records are taken while the frame stays within ``max_rows`` rows and
    ``max_bytes`` bytes; blank lines are skipped. Returns ``(frame,
    next_offset, rows, next_line)``; the frame's status is EOF when it takes
    the data to its end, else CONTINUE. A malformed record, a wrong field
    count, text that is not UTF-8 or one record larger than ``max_bytes``
    raises ``CsvError`` with the record's line.

    Arguments are checked first, in this order: the opcode, then ``offset``,
    ``line``, ``width``, ``max_rows`` and ``max_bytes`` must be ints
    (``TypeError``), ``picks`` ints in range, ``max_rows`` >= 1, ``max_bytes``
    at least an empty batch frame (18), ``offset`` >= 0 (``ValueError``), then
    ``batch_number`` as ``encode_table_frame`` checks it. ``data`` is any
    buffer.
    """
    spec = _table_spec(opcode)
    for name, value in (("offset", offset), ("line", line), ("width", width),
                        ("max_rows", max_rows), ("max_bytes", max_bytes)):
        if not isinstance(value, int):
            raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if len(picks) != len(spec.required_keys) or not all(
            isinstance(p, int) and 0 <= p < width for p in picks):
        raise ValueError(f"picks must give a field below {width} for each of "
                         f"{len(spec.required_keys)} keys")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, not {max_rows}")
    if max_bytes < _CSV_EMPTY_FRAME:
        raise ValueError(f"max_bytes must be >= {_CSV_EMPTY_FRAME} (an empty batch frame), "
                         f"not {max_bytes}")
    _check_offset(offset)
    _check_range("batch_number", batch_number, -(1 << 63), (1 << 63) - 1)
    # The scan uses bytes methods (find, count, split): other buffers are copied once.
    data = data if type(data) is bytes else bytes(_bytes_of(data))
    size = len(data)
    wire_keys = [_pack_i32(len(k)) + k.encode() for k in spec.required_keys]
    overhead = 4 + sum(len(k) + 4 for k in wire_keys)
    n_pairs = _pack_i32(len(wire_keys))
    empty = _CSV_EMPTY_FRAME
    total = empty
    parts = [b"", b""]
    rows = 0
    pos = offset
    while pos < size and rows < max_rows:
        blank = _blank_line(data, pos)
        if blank:
            pos += blank
            line += 1
            continue
        fields, next_pos, spans = _csv_record(data, pos, line)
        if len(fields) != width:
            raise CsvError(f"expected {width} fields, got {len(fields)}", line)
        values = [fields[p] for p in picks]
        row_size = overhead + sum(map(len, values))
        if empty + row_size > max_bytes:
            raise CsvError(f"row of {row_size} bytes does not fit a {max_bytes}-byte batch",
                           line)
        if total + row_size > max_bytes:
            break
        for field in values:
            if not field.isascii() and not _valid_utf8(field):
                raise CsvError("not UTF-8", line)
        parts.append(n_pairs)
        for key, field in zip(wire_keys, values):
            parts += (key, _pack_i32(len(field)), field)
        total += row_size
        rows += 1
        pos, line = next_pos, line + spans
    # Trailing blank lines belong to this batch: the data may end with it.
    blank = _blank_line(data, pos)
    while blank:
        pos += blank
        line += 1
        blank = _blank_line(data, pos)
    pos = min(pos, size)
    status = BatchStatus.EOF if pos >= size else BatchStatus.CONTINUE
    parts[0] = _FRAME_HEADER.pack(opcode, total - 5)
    parts[1] = _TABLE_HEADER.pack(rows, batch_number, status)
    return b"".join(parts), pos, rows, line


# -- Arrow ------------------------------------------------------------------

def _arrow_column_names(keys: Tuple[str, ...],
                        requested: Optional[List[str]]) -> Tuple[str, ...]:
    """The columns to export: the batch's keys, or those requested, checked as
    ``decode_columns`` checks them (and each at most once)."""
    if requested is None:
        return keys
    names: List[str] = []
    for name in requested:
        if name not in keys:
            raise ValueError(f"column {name!r} is not in the batch; it has {list(keys)}")
        if name in names:
            raise ValueError(f"duplicate column {name!r}")
        names.append(name)
    return tuple(names)


class ArrowBatch:
    """A decoded table batch as Arrow utf8 columns: what ``decode_arrow`` returns.

    Implements the Arrow PyCapsule interface (a struct array, one non-nullable
    utf8 child per column, and a stream of that one array), so
    ``pyarrow.record_batch(batch)``, ``polars.DataFrame(batch)`` and DuckDB
    read it without copying the values. This twin holds a ``pyarrow.RecordBatch``.
    """

    __slots__ = ("_batch",)

    def __init__(self, batch: Any) -> None:
        self._batch = batch

    @property
    def num_rows(self) -> int:
        """The number of rows."""
        return int(self._batch.num_rows)

    @property
    def column_names(self) -> Tuple[str, ...]:
        """The columns, in order."""
        return tuple(self._batch.schema.names)

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"<ArrowBatch of {self.num_rows} rows: {', '.join(self.column_names)}>"

    def __arrow_c_schema__(self) -> Any:
        """A capsule named "arrow_schema" holding the batch's ArrowSchema."""
        return self._batch.schema.__arrow_c_schema__()

    def __arrow_c_array__(self, requested_schema: Any = None) -> Tuple[Any, Any]:
        """``(schema capsule, array capsule)``: the struct array of the columns.

        ``requested_schema`` is a request the interface lets a producer decline:
        the batch always gives its own schema, which consumers check.
        """
        return self._batch.__arrow_c_array__()  # type: ignore[no-any-return]

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """A capsule named "arrow_array_stream": a stream of this one batch,
        for consumers that read streams only (DuckDB before 2.0). The
        ``requested_schema`` is declined as in ``__arrow_c_array__``."""
        import pyarrow  # type: ignore[import-untyped, unused-ignore]  # no stubs

        reader = pyarrow.RecordBatchReader.from_batches(self._batch.schema, [self._batch])
        return reader.__arrow_c_stream__()

    def to_pyarrow(self) -> Any:
        """The batch as a ``pyarrow.RecordBatch`` (sharing its memory); needs pyarrow."""
        return self._batch


def decode_arrow(frame: Any, columns: Optional[Sequence[str]] = None) -> ArrowBatch:
    """Decode a table frame, or a DataBatch frame embedding one, into Arrow utf8 columns.

    Returns an ``ArrowBatch`` of ``columns`` (default: every key the rows
    carry, in order; each at most once), which any Arrow PyCapsule consumer
    reads: ``pyarrow.record_batch(b)``, ``polars.DataFrame(b)``,
    ``duckdb.sql("select * from b")``. The frame is validated as
    ``decode_columns`` validates it, with the same errors. The C codec builds
    the Arrow buffers straight from the wire; this one needs pyarrow
    (``pip install fastframe[arrow]``).
    """
    requested = None if columns is None else list(columns)
    try:
        import pyarrow  # type: ignore[import-untyped, unused-ignore]  # no stubs
    except ImportError as exc:
        raise ImportError("decode_arrow in the pure-Python codec needs pyarrow: "
                          "pip install fastframe[arrow]") from exc
    opcode, body, projected = _table_batch(frame, "decode_arrow")
    _, _, keys, rows = decode_table_body(opcode, body, "dict", None, projected)
    names = _arrow_column_names(keys, requested)
    utf8 = pyarrow.string()
    fields = [pyarrow.field(name, utf8, nullable=False) for name in names]
    children = [pyarrow.array([row[name] for row in rows], utf8) for name in names]
    # Built from a struct array, a batch of no columns still has its rows.
    struct = pyarrow.StructArray.from_buffers(pyarrow.struct(fields), len(rows), [None],
                                              children=children)
    return ArrowBatch(pyarrow.RecordBatch.from_struct_array(struct))
