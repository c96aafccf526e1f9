"""The asyncio server the README shows, run exactly as printed there.

The code block under "### An asyncio server" is read from README.md and
executed; its ``serve()`` is started on a free loopback port and fed the
original client's capture, then streams with malformed frames.
"""
from __future__ import annotations

import asyncio
import re
import struct
from pathlib import Path
from types import SimpleNamespace

from fastframe import BatchRecvFail, BatchRecvSuccess, Finished

from wire import frame, split_frames

README = Path(__file__).resolve().parents[1] / "README.md"
DEADLINE = 20.0  # seconds per conversation; each takes milliseconds
SUCCESS, FAIL = BatchRecvSuccess().to_bytes(), BatchRecvFail().to_bytes()


def readme_example() -> SimpleNamespace:
    text = README.read_text(encoding="utf-8")
    section = text.split("### An asyncio server", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "no python block under '### An asyncio server'"
    namespace: dict = {"__name__": "readme_asyncio_example"}
    exec(compile(code.group(1), f"{README}:asyncio-example", "exec"), namespace)
    return SimpleNamespace(**namespace)


async def _converse(example: SimpleNamespace, stream: bytes) -> bytes:
    server = await example.serve("127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(stream)
        await writer.drain()
        answer = await reader.read()  # until the server closes
        writer.close()
        return answer


def converse(stream: bytes) -> bytes:
    return asyncio.run(asyncio.wait_for(_converse(readme_example(), stream), DEADLINE))


def test_the_example_answers_the_capture_as_the_original_did(codec, sample_c2s, sample_s2c):
    assert converse(sample_c2s) == sample_s2c


def test_the_example_answers_a_stream_in_pieces_in_order(codec, sample_c2s, sample_s2c):
    # The same bytes, but the protocol object fed one odd-sized piece at a time.
    example = readme_example()
    sent = []

    class Transport(asyncio.Transport):
        def write(self, data):
            sent.append(bytes(data))

        def close(self):
            sent.append(b"<close>")

        def is_closing(self):
            return bool(sent) and sent[-1] == b"<close>"

    protocol = example.IngestProtocol()
    protocol.connection_made(Transport())
    for i in range(0, len(sample_c2s), 37):
        protocol.data_received(sample_c2s[i:i + 37])
    assert b"".join(sent[:-1]) == sample_s2c and sent[-1] == b"<close>"
    table_rows = [struct.unpack_from("<i", body)[0]
                  for op, body in split_frames(sample_c2s) if 4 <= op <= 8]
    assert protocol.rows == sum(table_rows) > 0


def test_the_example_fails_a_bad_frame_and_goes_on(codec, sample_c2s):
    frames = [frame(op, body) for op, body in split_frames(sample_c2s)]
    bad = frame(3, b"\x00" * 5)  # FINISHED with a 5-byte body: delimited, consumed
    stream = b"".join(frames[:3]) + bad + b"".join(frames[3:])
    assert converse(stream) == SUCCESS * 3 + FAIL + SUCCESS * 7


def test_the_example_hangs_up_on_an_undelimitable_header(codec, sample_c2s):
    frames = [frame(op, body) for op, body in split_frames(sample_c2s)]
    stream = b"".join(frames[:2]) + struct.pack("<Bi", 200, 0) + b"".join(frames[2:])
    assert converse(stream) == SUCCESS * 2  # then the connection closed


def test_the_example_stops_at_finished(codec):
    assert converse(Finished(7).to_bytes() + SUCCESS) == b""
