"""Hand-built wire bytes and small assertions shared by the codec tests.

Bodies are built with the codec's own ``Writer`` (the Go client writes them the
same way, one primitive at a time), but every structural choice the encoders
make for you is explicit here: the row count, each row's pair count and the
order of the pairs. A key or value given as ``bytes`` is written verbatim, so a
body can carry invalid UTF-8 or a key the tables do not know.
"""
from __future__ import annotations

import random
import struct
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import pytest

from fastframe.errors import ProtocolError
from fastframe.schema import TABLES, TableSpec

Text = Union[str, bytes]
Pairs = Sequence[Tuple[Text, Text]]

TABLE_PARAMS = [pytest.param(spec, id=spec.name) for spec in TABLES]
BUFFER_TYPES = [pytest.param(bytes, id="bytes"), pytest.param(bytearray, id="bytearray"),
                pytest.param(memoryview, id="memoryview")]

# Values a real batch carries: empty strings, non-ASCII names, long values, NUL.
_VALUES = ("", "1", "Café", "São Paulo", "Bahnhofstraße 7", "2024-01-01 07:00:00", "☕ x2",
           "日本語", "a\x00b", "x" * 300, "3.117134", "-0.5")


def frame(opcode: int, body: Any) -> bytes:
    """``[u8 opcode][i32 len(body)][body]``, built with ``struct``."""
    return struct.pack("<Bi", opcode, len(body)) + bytes(body)


def write_text(writer: Any, value: Text) -> None:
    """``[i32 n][n bytes]``: a str as UTF-8, bytes verbatim."""
    if isinstance(value, str):
        writer.write_string(value)
    else:
        writer.write_i32(len(value))
        writer.write_bytes(value)


def table_body(codec: Any, rows: Iterable[Union[Pairs, Mapping[Text, Text]]], *,
               batch_number: int = 0, status: int = 0, n_rows: Optional[int] = None,
               pair_counts: Optional[Mapping[int, int]] = None) -> bytes:
    """``[i32 nRows][i64 batchNumber][u8 status]`` then each row as a string map.

    Each row is a mapping or a sequence of ``(key, value)`` pairs, written in
    that order. ``n_rows`` overrides the row count; ``pair_counts`` maps a row
    index to the pair count written for it (the pairs are written regardless).
    """
    rows = [list(r.items()) if isinstance(r, Mapping) else list(r) for r in rows]
    w = codec.Writer()
    w.write_i32(len(rows) if n_rows is None else n_rows)
    w.write_i64(batch_number)
    w.write_u8(status)
    for index, pairs in enumerate(rows):
        w.write_i32((pair_counts or {}).get(index, len(pairs)))
        for key, value in pairs:
            write_text(w, key)
            write_text(w, value)
    return w.getvalue()


def eof_body(codec: Any, table_type: Text = "menu_items", *, batch_number: int = 0,
             status: int = 1, n_rows: int = 1, key: Text = "table_type") -> bytes:
    """An EOF body (PROTOCOL.md §5), every field overridable."""
    return table_body(codec, [[(key, table_type)]], batch_number=batch_number, status=status,
                      n_rows=n_rows)


def databatch_body(codec: Any, embedded: bytes, *, table_ids: Sequence[int] = (1,),
                   query_ids: Sequence[int] = (2,), reserved: int = 0, batch_number: int = 0,
                   meta: Mapping[int, int] = {}, total_shards: int = 0,
                   shard_num: int = 0) -> bytes:
    """A DataBatch body (PROTOCOL.md §6) around ``embedded``, which is not checked."""
    w = codec.Writer()
    w.write_u8_list(list(table_ids))
    w.write_u8_list(list(query_ids))
    w.write_u16(reserved)
    w.write_i64(batch_number)
    w.write_u8_dict(dict(meta))
    w.write_u16(total_shards)
    w.write_u16(shard_num)
    w.write_bytes(embedded)
    return w.getvalue()


def sample_rows(spec: TableSpec, n: int, seed: int = 0) -> List[Dict[str, str]]:
    """``n`` full rows for ``spec`` (dicts in spec key order), deterministic per seed."""
    rng = random.Random(f"{spec.name}/{seed}")
    return [{key: f"{key}-{r}" if rng.random() < 0.3 else rng.choice(_VALUES)
             for key in spec.required_keys} for r in range(n)]


def shuffled(row: Mapping[str, str], rng: random.Random) -> List[Tuple[str, str]]:
    """The row's pairs in a random order, as a Go map would write them."""
    pairs = list(row.items())
    rng.shuffle(pairs)
    return pairs


@contextmanager
def protocol_error(message: str, opcode: Optional[int] = None) -> Iterator[Any]:
    """Expect a ``ProtocolError`` with exactly ``message`` and ``opcode``."""
    with pytest.raises(ProtocolError) as info:
        yield info
    assert str(info.value) == message
    assert info.value.message == message
    assert info.value.opcode == opcode


@contextmanager
def error(exc_type: type, message: str) -> Iterator[Any]:
    """Expect exactly ``exc_type`` (not a subclass) with exactly ``message``."""
    with pytest.raises(exc_type) as info:
        yield info
    assert type(info.value) is exc_type
    assert str(info.value) == message


def split_frames(data: bytes) -> List[Tuple[int, bytes]]:
    """``[u8 opcode][i32 n][n bytes]``* -> ``[(opcode, body)]``, parsed with struct alone.

    An independent parser for expectations; the frames must fill ``data``.
    """
    frames, pos = [], 0
    while pos < len(data):
        opcode, length = struct.unpack_from("<Bi", data, pos)
        frames.append((opcode, data[pos + 5:pos + 5 + length]))
        pos += 5 + length
    assert pos == len(data)
    return frames
