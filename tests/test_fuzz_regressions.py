"""Replays the fuzz inputs kept in the repository through the fuzz target's differential check.

``fuzz/regressions/`` holds inputs that exposed bugs and hand-made hostile
ones (fuzz/regressions/README.md says what each is); ``fuzz/seeds/`` is the
seed corpus, which must pass too. Each file is ``[u8 ctl][payload]`` and goes
through ``differential.check`` on both codecs, exactly as ``fuzz/fuzz_codec.py``
runs it: a crash file from a fuzz run becomes a regression test by copying it
into ``fuzz/regressions/``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from differential import check

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
INPUTS = sorted(p for folder in ("regressions", "seeds") if (FUZZ / folder).is_dir()
                for p in (FUZZ / folder).iterdir() if p.is_file() and p.suffix != ".md")


def test_inputs_are_there():
    assert any(p.parent.name == "regressions" for p in INPUTS), f"no regression inputs in {FUZZ}"
    assert any(p.parent.name == "seeds" for p in INPUTS), f"no seeds in {FUZZ} (fuzz/make_seeds.py)"


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_input(both_codecs, path):
    check(path.read_bytes(), both_codecs)
