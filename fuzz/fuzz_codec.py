"""Coverage-guided differential fuzz target for the fastframe codecs (atheris).

Each input is ``[u8 ctl][payload]`` and goes through ``tests/differential.py``'s
``check``: every decoder entry point (frame header, table/EOF/FINISHED/ACK/
DataBatch bodies in every row type, projected or not, ``project_databatch``,
``decode_columns``, ``decode_arrow``, ``decode_frame``, ``FrameDecoder.feed`` with random
chunking, ``FrameReader`` and ``recv_msg`` over a fake socket) on the Cython
and the pure-Python codec. A divergence, an exception other than
``ProtocolError`` or a broken stream invariant raises, which atheris reports
as a crash (the input is written to ``-artifact_prefix``).

Usage (see fuzz/README.md; fuzz/run.sh is the bounded CI run)::

    python fuzz/fuzz_codec.py [libFuzzer flags] CORPUS_DIR [SEED_DIR ...]
    python fuzz/fuzz_codec.py CRASH_FILE          # replay one input

Environment: ``FASTFRAME_FUZZ_SKIP=stream-consistency,...`` leaves out checks
(for a known finding while it is open); ``FASTFRAME_FUZZ_IMPLS=python`` fuzzes
the pure codec alone (no differential) when the extension is not built.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import atheris

# Python-level coverage of the codec (the pure twin drives the corpus). The
# Cython module is a C extension: its edges are seen only when it is built
# with clang -fsanitize=fuzzer-no-link (fuzz/README.md, optional).
with atheris.instrument_imports(include=["fastframe"]):
    import fastframe
    import fastframe._codec_py
    import fastframe.framing
    import fastframe.messages

try:
    import numpy  # noqa: F401  (decode_columns imports it lazily; keep that out of the loop)
except ImportError:
    pass
try:
    import pyarrow  # noqa: F401  (so does decode_arrow in the pure codec)
except ImportError:
    pass


def _load_differential():
    """``tests/differential.py``, the one implementation of the check, loaded by path."""
    path = Path(__file__).resolve().parents[1] / "tests" / "differential.py"
    spec = importlib.util.spec_from_file_location("fastframe_differential", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


differential = _load_differential()
IMPLS = [n for n in os.environ.get("FASTFRAME_FUZZ_IMPLS", "c,python").split(",") if n]
SKIP = [n for n in os.environ.get("FASTFRAME_FUZZ_SKIP", "").split(",") if n]
CODECS = differential.load_codecs(IMPLS)


def TestOneInput(data: bytes) -> None:
    differential.check(data, CODECS, SKIP)


def main() -> None:
    print(f"fuzz_codec: fastframe from {os.path.dirname(fastframe.__file__)}; codecs "
          f"{', '.join(f'{n}={m.__file__}' for n, m in CODECS.items())}; skipping {SKIP or 'none'}",
          file=sys.stderr, flush=True)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
