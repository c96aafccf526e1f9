"""Encoded surrogates (``b"\\xed\\xa0\\x80"`` is U+D800) are not UTF-8, on every interpreter.

CPython's decoder refuses them; PyPy's lets them through (``'ok\\ud800'``).
The pure codec therefore checks for them itself, wherever it decodes UTF-8.
Each case runs on both codecs (same error, same message) and, for the pure
one, also with its decoder swapped for one as lenient as PyPy's: without the
codec's own check those cases would decode.
"""
from __future__ import annotations

import codecs
from typing import Any, Callable, Optional, Tuple

import pytest

from fastframe import _codec_py
from fastframe.errors import CsvError, ProtocolError
from fastframe.schema import TABLES_BY_NAME

from wire import eof_body, frame, table_body

SURROGATE = b"\xed\xa0\x80"  # U+D800, the lowest surrogate
LAST_SURROGATE = b"\xed\xbf\xbf"  # U+DFFF, the highest
LENIENT_UTF8 = "fastframe_test_lenient_utf8"


def _lenient_search(name: str) -> Optional[codecs.CodecInfo]:
    if name != LENIENT_UTF8:
        return None

    def decode(data: Any, errors: str = "strict") -> Tuple[str, int]:
        return codecs.utf_8_decode(data, "surrogatepass", True)

    return codecs.CodecInfo(codecs.utf_8_encode, decode, name=LENIENT_UTF8)


codecs.register(_lenient_search)


@pytest.fixture(params=["interpreter-decoder", "lenient-decoder"])
def pure_decoder(request, monkeypatch, codec):
    """The pure codec's UTF-8 decoder: the interpreter's, or one that takes surrogates."""
    if request.param == "lenient-decoder":
        if codec is not _codec_py:
            pytest.skip("the decoder swap only concerns the pure codec")
        assert str(b"ok" + SURROGATE, LENIENT_UTF8) == "ok\ud800"  # the emulation is lenient
        monkeypatch.setattr(_codec_py, "_UTF8", LENIENT_UTF8)
    return request.param


USERS = TABLES_BY_NAME["users"]
TRANSACTIONS = TABLES_BY_NAME["transactions"]


def _string(raw: bytes) -> bytes:
    return len(raw).to_bytes(4, "little") + raw


def _users_rows(value: bytes, n: int = 3):
    rows = []
    for i in range(n):
        rows.append([("user_id", str(i)), ("gender", value if i == 1 else "F"),
                     ("birthdate", "1990-01-01"), ("registered_at", "2024-01-01")])
    return rows


@pytest.mark.parametrize("surrogate", [SURROGATE, LAST_SURROGATE], ids=["D800", "DFFF"])
def test_read_string(codec, pure_decoder, surrogate):
    with pytest.raises(ProtocolError) as info:
        codec.read_string(_string(b"ok" + surrogate))
    assert (info.value.message, info.value.opcode) == ("invalid UTF-8 in string at offset 0", None)


def test_read_string_map_value(codec, pure_decoder):
    data = (1).to_bytes(4, "little") + _string(b"key") + _string(b"ok" + SURROGATE)
    with pytest.raises(ProtocolError) as info:
        codec.read_string_map(data)
    assert info.value.message == "invalid UTF-8 in string at offset 11"


@pytest.mark.parametrize("row_type", ["object", "dict", "tuple"])
@pytest.mark.parametrize("around", [b"", "Café".encode()], ids=["ascii-body", "utf8-body"])
def test_table_body_value(codec, pure_decoder, row_type, around):
    body = table_body(codec, _users_rows(around + SURROGATE + around))
    with pytest.raises(ProtocolError) as info:
        codec.decode_table_body(USERS.opcode, body, row_type)
    assert info.value.opcode == USERS.opcode
    assert info.value.message.startswith("invalid UTF-8 in string at offset ")
    assert info.value.fatal is False


def test_table_body_rows_in_varying_key_order(codec, pure_decoder):
    rows = _users_rows(SURROGATE)
    rows[2] = rows[2][::-1]  # a row whose keys come in another order: value by value
    with pytest.raises(ProtocolError, match="invalid UTF-8 in string at offset "):
        codec.decode_table_body(USERS.opcode, table_body(codec, rows))


def test_projected_table_body(codec, pure_decoder):
    rows = [[("user_id", str(i)), ("birthdate", SURROGATE if i else "x")] for i in range(2)]
    with pytest.raises(ProtocolError, match="invalid UTF-8 in string at offset "):
        codec.decode_table_body(USERS.opcode, table_body(codec, rows), "dict", None, True)


def test_project_databatch(codec, pure_decoder):
    body = table_body(codec, _users_rows(SURROGATE))
    with pytest.raises(ProtocolError, match="invalid UTF-8 in string at offset "):
        codec.project_databatch(USERS.opcode, body, [8], [4], {}, 1, 0)


def test_eof_table_type(codec, pure_decoder):
    with pytest.raises(ProtocolError) as info:
        codec.decode_eof_body(eof_body(codec, b"users" + SURROGATE))
    assert info.value.message == "invalid UTF-8 in string at offset 31"


def test_decode_frame_through_the_messages(codec, pure_decoder):
    from fastframe import decode_frame

    with pytest.raises(ProtocolError, match="invalid UTF-8 in string at offset "):
        decode_frame(frame(USERS.opcode, table_body(codec, _users_rows(SURROGATE))))


def test_csv_field(codec, pure_decoder):
    data = b"1,F,1990-01-01,2024-01-01\n2,\xed\xa0\x80,1990-01-01,2024-01-01\n"
    with pytest.raises(CsvError) as info:
        codec.encode_csv_batch(USERS.opcode, data, 0, 1, [0, 1, 2, 3], 4, 1, 1000, 1 << 20)
    assert (info.value.message, info.value.line) == ("not UTF-8", 2)


def test_surrogate_lookalikes_are_valid(codec, pure_decoder):
    # 0xED before 0x80..0x9F is U+D000..U+D7FF, and a length prefix may hold
    # the surrogate's byte pattern: neither is a surrogate.
    assert codec.read_string(_string("\ud7ff".encode()))[0] == "\ud7ff"
    value = "é" * 0xA0ED  # its length, 0x0141DA, starts with no 0xED; the next one does
    rows = [[("user_id", "1"), ("gender", "x" * 0xA0ED), ("birthdate", value),
             ("registered_at", "\ud7ff")]]
    _, _, _, decoded = codec.decode_table_body(USERS.opcode, table_body(codec, rows), "tuple")
    assert decoded == [("1", "x" * 0xA0ED, value, "\ud7ff")]
