"""The codec against real bytes of the original system (data/README.md)."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import pytest

from fastframe.schema import MAX_BATCH_FRAME, TABLES_BY_NAME, TABLES_BY_OPCODE
from wire import protocol_error

VECTOR_SETS = ("golden_sample", "golden")
VECTORS = [pytest.param(set_name, table, id=f"{set_name}-{table}")
           for set_name in VECTOR_SETS for table in TABLES_BY_NAME]
C2S_OPCODES = [4, 9, 5, 9, 6, 9, 7, 9, 8, 9, 3]


@lru_cache(maxsize=None)
def read(path: Path) -> bytes:
    return path.read_bytes()


@lru_cache(maxsize=None)
def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def load_vector(conformance_dir: Path, set_name: str, table: str) -> tuple:
    """(folder, the manifest entry of ``table``) for one vector set."""
    folder = conformance_dir / set_name
    (vector,) = [v for v in manifest(folder)["vectors"] if v["table"] == table]
    return folder, vector


@pytest.mark.parametrize("set_name", VECTOR_SETS)
def test_vector_sets_cover_every_table_once(conformance_dir, set_name):
    vectors = manifest(conformance_dir / set_name)["vectors"]
    assert sorted(v["table"] for v in vectors) == sorted(TABLES_BY_NAME)


def split(codec, data: bytes):
    """(opcode, body) for each frame of a capture, delimited with ``read_frame_header``."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, length = codec.read_frame_header(data, pos)
        body = data[pos + 5:pos + 5 + length]
        assert len(body) == length, f"capture cut inside the frame at offset {pos}"
        frames.append((pos, opcode, body))
        pos += 5 + length
    return frames


# -- the client → orchestrator capture ------------------------------------------------------

def test_sample_c2s_frames(codec, conformance_dir):
    data = read(conformance_dir / "sample_c2s.bin")
    frames = split(codec, data)
    assert [op for _, op, _ in frames] == C2S_OPCODES
    tables = []
    for _, opcode, body in frames:
        if opcode in TABLES_BY_OPCODE:
            spec = TABLES_BY_OPCODE[opcode]
            batch, status, keys, rows = codec.decode_table_body(opcode, body)
            assert (batch, status, keys) == (1, 1, spec.required_keys)
            assert rows and all(type(r) is spec.row_class for r in rows)
            assert all(isinstance(v, str) for r in rows for v in r)
            tables.append(spec.name)
        elif opcode == 9:
            # the original client sends EOF with batchNumber 0, right after the table's batch
            assert codec.decode_eof_body(body) == (0, tables[-1])
        else:
            assert codec.decode_finished_body(body) == 1
    assert tables == ["menu_items", "stores", "transaction_items", "transactions", "users"]


def test_sample_c2s_rows_match_an_independent_parse(codec, conformance_dir):
    """decode_table_body's rows equal the rows read one string map at a time."""
    orders = set()
    for _, opcode, body in split(codec, read(conformance_dir / "sample_c2s.bin")):
        if opcode not in TABLES_BY_OPCODE:
            continue
        n_rows = codec.read_i32(body, 0)[0]
        pos, maps = 13, []
        for _ in range(n_rows):
            row, pos = codec.read_string_map(body, pos)
            maps.append(row)
            orders.add((opcode, tuple(row)))
        assert pos == len(body)
        assert codec.decode_table_body(opcode, body, "dict")[3] == maps
        spec = TABLES_BY_OPCODE[opcode]
        assert codec.decode_table_body(opcode, body, "tuple")[3] == [
            tuple(m[k] for k in spec.required_keys) for m in maps]
    # the capture really exercises free key order: some table has rows in several orders
    per_table = {}
    for opcode, order in orders:
        per_table.setdefault(opcode, set()).add(order)
    assert max(len(o) for o in per_table.values()) > 1


def test_sample_c2s_eof_frames_reencode_byte_for_byte(codec, conformance_dir):
    data = read(conformance_dir / "sample_c2s.bin")
    frames = split(codec, data)
    checks = manifest(conformance_dir / "golden_sample")["eof_reserialization_checks"]
    assert len(checks) == 5
    for check in checks:
        pos, opcode, body = frames[check["frame"]]
        assert opcode == 9
        assert codec.encode_eof_frame(0, check["table_type"]) == data[pos:pos + 5 + len(body)]
    finished_at = frames[-1][0]
    assert codec.encode_finished_frame(1) == data[finished_at:]


def test_sample_s2c_is_ten_acks(codec, conformance_dir):
    data = read(conformance_dir / "sample_s2c.bin")
    frames = split(codec, data)
    assert len(frames) == 10
    for _, opcode, body in frames:
        assert opcode == 1
        assert codec.decode_ack_body(opcode, body) is None
    assert data == b"\x01\x00\x00\x00\x00" * 10


def test_golden_sample_inputs_are_frames_of_the_capture(conformance_dir):
    data = read(conformance_dir / "sample_c2s.bin")
    golden_sample = manifest(conformance_dir / "golden_sample")
    assert hashlib.sha256(data).hexdigest() == golden_sample["source_capture_sha256"]
    for vector in golden_sample["vectors"]:
        raw = read(conformance_dir / "golden_sample" / vector["input_file"])
        assert data[vector["capture_offset"]:vector["capture_offset"] + len(raw)] == raw


# -- golden vectors: input frame → DataBatch ---------------------------------------------------

@pytest.mark.parametrize("set_name,table", VECTORS)
def test_project_databatch_matches_the_original_orchestrator(codec, conformance_dir, set_name,
                                                             table):
    folder, vector = load_vector(conformance_dir, set_name, table)
    raw = read(folder / vector["input_file"])
    expected = read(folder / vector["databatch_file"])
    assert hashlib.sha256(raw).hexdigest() == vector["input_sha256"]
    assert hashlib.sha256(expected).hexdigest() == vector["databatch_sha256"]
    assert len(raw) == vector["input_bytes"] <= MAX_BATCH_FRAME
    opcode, length = codec.read_frame_header(raw)
    assert (opcode, length) == (vector["opcode"], len(raw) - 5)
    meta = {int(k): v for k, v in vector["meta"].items()}
    out = codec.project_databatch(opcode, raw[5:], vector["table_ids"], vector["query_ids"], meta,
                                  vector["total_shards"], vector["shard_num"])
    assert out == expected
    # the same from a memoryview of the frame, as a receiver holds it
    assert codec.project_databatch(opcode, memoryview(raw)[5:], vector["table_ids"],
                                   vector["query_ids"], meta, vector["total_shards"],
                                   vector["shard_num"]) == expected


@pytest.mark.parametrize("set_name,table", VECTORS)
def test_golden_databatch_decodes(codec, conformance_dir, set_name, table):
    folder, vector = load_vector(conformance_dir, set_name, table)
    data = read(folder / vector["databatch_file"])
    assert len(data) == vector["databatch_bytes"]
    opcode, length = codec.read_frame_header(data)
    assert (opcode, length) == (0, vector["databatch_body_length_field"])
    body = memoryview(data)[5:]
    (table_ids, query_ids, reserved, batch_number, meta, total_shards, shard_num, inner_opcode,
     inner_offset) = codec.decode_databatch_body(body)
    assert table_ids == vector["table_ids"]
    assert query_ids == vector["query_ids"]
    assert reserved == vector["reserved_u16"]
    assert batch_number == vector["batch_number"]
    assert meta == {int(k): v for k, v in vector["meta"].items()}
    assert (total_shards, shard_num) == (vector["total_shards"], vector["shard_num"])
    assert inner_opcode == vector["opcode"]
    assert len(body) - inner_offset == vector["embedded_body_bytes"]
    assert len(body) - inner_offset + 5 == vector["embedded_frame_bytes"]
    inner = body[inner_offset:]
    batch, status, keys, rows = codec.decode_table_body(inner_opcode, inner, "dict", projected=True)
    assert (batch, status) == (vector["batch_number"], vector["status"])
    assert keys == tuple(vector["filtered_keys"])
    assert keys == TABLES_BY_OPCODE[inner_opcode].kept_columns
    assert len(rows) == vector["n_rows"]
    assert rows[0] == vector["first_filtered_row"]
    assert list(rows[0]) == vector["filtered_keys"]
    # a full-batch decode rejects it: a projection is not a client batch
    n_keys = len(TABLES_BY_OPCODE[inner_opcode].required_keys)
    with protocol_error(f"row 0: expected {n_keys} pairs, got {len(keys)}", inner_opcode):
        codec.decode_table_body(inner_opcode, inner)


@pytest.mark.parametrize("set_name,table", VECTORS)
def test_golden_databatch_rows_are_the_projected_input_rows(codec, conformance_dir, set_name,
                                                            table):
    folder, vector = load_vector(conformance_dir, set_name, table)
    raw = read(folder / vector["input_file"])
    batch, status, _, full = codec.decode_table_body(vector["opcode"], raw[5:], "dict")
    assert (batch, status) == (vector["batch_number"], vector["status"])
    assert len(full) == vector["n_rows"]
    data = read(folder / vector["databatch_file"])
    inner_offset = codec.decode_databatch_body(data[5:])[8]
    keys = vector["filtered_keys"]
    inner = data[5 + inner_offset:]
    objects = codec.decode_table_body(vector["opcode"], inner, "object", projected=True)[3]
    spec = TABLES_BY_OPCODE[vector["opcode"]]
    assert objects == [spec.row_class(**{k: row[k] if k in keys else None
                                         for k in spec.required_keys}) for row in full]
