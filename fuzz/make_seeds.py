"""Writes the fuzz seed corpus (fuzz/seeds/) and dictionary (fuzz/fastframe.dict).

Seeds are real frames from the conformance captures (tests/data, or
$FASTFRAME_CONFORMANCE), kept small: the sample capture's frames and the whole
capture as one stream, the golden DataBatch frames, and the big golden frames
cut to their first rows (raw row bytes kept, so the Go client's key order
survives), plus a few hand-made frames the captures lack. Each seed is
``[u8 ctl][frame bytes]`` (see tests/differential.py); ``ctl`` varies so the
seeds start from different argument choices.

    python fuzz/make_seeds.py          # rewrites fuzz/seeds/ and fuzz/fastframe.dict
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("FASTFRAME_PUREPYTHON", "1")

from fastframe import _codec_py as codec  # noqa: E402
from fastframe.schema import EOF_KEY, TABLES, TABLES_BY_OPCODE  # noqa: E402

CONFORMANCE = Path(os.environ.get("FASTFRAME_CONFORMANCE", REPO / "tests" / "data"))
SEEDS = HERE / "seeds"
DICTIONARY = HERE / "fastframe.dict"
ROWS_KEPT = 3
SIZE_BUDGET = 200 * 1024


def split_frames(data: bytes) -> list:
    frames, pos = [], 0
    while pos < len(data):
        _, length = codec.read_frame_header(data, pos)
        frames.append(data[pos:pos + 5 + length])
        pos += 5 + length
    return frames


def first_rows(opcode: int, body: bytes, keep: int) -> bytes:
    """The table body cut to its first ``keep`` rows, each row's bytes as they were."""
    n_rows, batch_number, status = struct.unpack_from("<iqB", body)
    pos = 13
    for _ in range(min(keep, n_rows)):
        _, pos = codec.read_string_map(body, pos)
    return struct.pack("<iqB", min(keep, n_rows), batch_number, status) + body[13:pos]


def non_ascii_row(body: bytes) -> bytes:
    """A one-row body with the first row that has a non-ASCII byte, or ``b""``."""
    n_rows, batch_number, status = struct.unpack_from("<iqB", body)
    pos = 13
    for _ in range(n_rows):
        start = pos
        _, pos = codec.read_string_map(body, pos)
        if not body[start:pos].isascii():
            return struct.pack("<iqB", 1, batch_number, status) + body[start:pos]
    return b""


def cut_databatch(frame: bytes, keep: int) -> bytes:
    """A DataBatch frame whose embedded table keeps its first ``keep`` rows."""
    header = codec.decode_databatch_body(frame[5:])
    inner_opcode, inner_at = header[7], header[8]
    inner = first_rows(inner_opcode, frame[5 + inner_at:], keep)
    return codec.encode_databatch_frame(*header[:7], codec.encode_frame(inner_opcode, inner))


def seeds() -> list:
    """``(name, frame or stream bytes)`` for every seed."""
    out = []
    c2s = (CONFORMANCE / "sample_c2s.bin").read_bytes()
    for i, frame in enumerate(split_frames(c2s)):
        out.append((f"sample-{i:02d}-op{frame[0]}", frame))
    out.append(("sample-c2s-stream", c2s))
    out.append(("sample-s2c-stream", (CONFORMANCE / "sample_s2c.bin").read_bytes()))
    for spec in TABLES:
        golden = (CONFORMANCE / "golden_sample" / f"databatch_{spec.name}.bin").read_bytes()
        out.append((f"golden-sample-databatch-{spec.name}", cut_databatch(golden, ROWS_KEPT)))
        big = (CONFORMANCE / "golden" / f"input_{spec.name}.bin").read_bytes()
        out.append((f"golden-input-{spec.name}-first-rows",
                    codec.encode_frame(big[0], first_rows(big[0], big[5:], ROWS_KEPT))))
        row = non_ascii_row(big[5:])
        if row:
            out.append((f"golden-input-{spec.name}-non-ascii-row", codec.encode_frame(big[0], row)))
        big_db = (CONFORMANCE / "golden" / f"databatch_{spec.name}.bin").read_bytes()
        out.append((f"golden-databatch-{spec.name}-first-rows", cut_databatch(big_db, ROWS_KEPT)))
    # What the captures lack: empty batches, a projection in another column
    # order, a DataBatch around EOF and FINISHED, ACKs, CANCEL, odd header values.
    users = TABLES[4]
    row = {k: f"{k[:2]}1" for k in users.required_keys}
    out.append(("empty-table-batch", codec.encode_table_frame(users.opcode, 7, 2, [])))
    body = codec.encode_table_frame(users.opcode, -1, 0, [row, row])[5:]
    out.append(("projection-reordered", codec.project_databatch(
        users.opcode, body, [2, 255], [4], {1: 2, 3: 4}, 65535, 1,
        columns=("birthdate", "user_id"))))
    eof = codec.encode_eof_frame(3, "transactions")
    out.append(("databatch-eof", codec.encode_databatch_frame([1], [1, 3, 4], 0, 3, {}, 0, 0, eof)))
    finished = codec.encode_finished_frame(-2**31)
    out.append(("databatch-finished",
                codec.encode_databatch_frame([], [], 65535, 0, {0: 0}, 2, 1, finished)))
    out.append(("ack-fail", codec.encode_frame(2, b"")))
    out.append(("numbers-for-decode-columns", codec.encode_table_frame(users.opcode, 1, 1, [
        {"user_id": "-9223372036854775808", "gender": "1e308", "birthdate": ".5",
         "registered_at": ""},
        {"user_id": "+42", "gender": "-0", "birthdate": "1E-5", "registered_at": "7."}])))
    return out


def dictionary() -> list:
    """libFuzzer dictionary entries: wire keys and table names with their length prefix, ..."""
    def wire(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<i", len(raw)) + raw

    words = {wire(EOF_KEY)}
    for spec in TABLES:
        words.add(wire(spec.name))
        words.update(wire(k) for k in spec.required_keys)
    words.update(struct.pack("<i", n) for n in (-1, 0, 1, 2**31 - 1, -2**31, 2**30, 1_000_000))
    words.update(struct.pack("<q", n) for n in (-1, 2**63 - 1))
    # UTF-8 edge cases: 2/3/4-byte forms, an encoded surrogate, overlong, past U+10FFFF.
    words.update([b"\xc3\xa9", b"\xe2\x98\x95", b"\xf0\x9f\x98\x80", b"\xed\xa0\x80",
                  b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x98", b"\x00"])
    lines = []
    for i, word in enumerate(sorted(words)):
        escaped = "".join(chr(b) if 0x20 <= b < 0x7f and chr(b) not in '"\\' else f"\\x{b:02x}"
                          for b in word)
        lines.append(f'w{i}="{escaped}"')
    return lines


def main() -> None:
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    SEEDS.mkdir()
    total = 0
    for i, (name, data) in enumerate(seeds()):
        # one ctl per seed: the dtype mode (bits 0-1) cycles, the rest varies
        content = bytes([(i * 37) & 0xFF]) + data
        digest = hashlib.sha1(content).hexdigest()[:12]
        (SEEDS / f"{name}-{digest}").write_bytes(content)
        total += len(content)
    if total > SIZE_BUDGET:
        raise SystemExit(f"seed corpus is {total} bytes, over the {SIZE_BUDGET} budget")
    DICTIONARY.write_text("# generated by fuzz/make_seeds.py\n" + "\n".join(dictionary()) + "\n")
    print(f"{len(list(SEEDS.iterdir()))} seeds, {total} bytes in {SEEDS}; dictionary {DICTIONARY}")


if __name__ == "__main__":
    main()
