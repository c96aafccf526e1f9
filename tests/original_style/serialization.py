"""Filtered rows back to a table body, field by field, as the original wrote them."""
import struct
from typing import Dict, List


def _write_string(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    out += struct.pack("<i", len(raw))
    out += raw


def serialize_filtered_rows(rows: List[Dict[str, str]], batch_number: int, status: int) -> bytes:
    """``[i32 nRows][i64 batchNumber][u8 status]`` then each row as a string map."""
    out = bytearray(struct.pack("<iqB", len(rows), batch_number, status))
    for row in rows:
        out += struct.pack("<i", len(row))
        for key, value in row.items():
            _write_string(out, key)
            _write_string(out, value)
    return bytes(out)
