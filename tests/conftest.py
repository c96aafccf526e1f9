"""The one fixture every codec test runs through: both implementations.

``codec`` is the implementation module (``fastframe._codec_c`` or
``fastframe._codec_py``) and is also installed as ``fastframe.codec.impl`` for
the test, so the message classes, ``recv_msg`` and the frame readers run on it
too. A missing extension fails the ``c`` cases; it never skips them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import fastframe.codec

IMPLEMENTATIONS = ("c", "python")
# The original system's bytes live beside the repository, not in it.
CONFORMANCE = Path(os.environ.get(
    "FASTFRAME_CONFORMANCE", Path(__file__).resolve().parents[2] / "shared" / "conformance"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "conformance_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.conformance)


@pytest.fixture(params=IMPLEMENTATIONS)
def codec(request, monkeypatch):
    module = fastframe.codec.load(request.param)
    monkeypatch.setattr(fastframe.codec, "impl", module)
    return module


@pytest.fixture(scope="session")
def both_codecs():
    """Both implementations at once, for cross-implementation checks."""
    return {name: fastframe.codec.load(name) for name in IMPLEMENTATIONS}


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.fail(f"conformance data not found at {CONFORMANCE}")
    return CONFORMANCE


# The Go client's captures, read once and only by the tests that ask for them:
# depending on ``conformance_dir`` marks those tests ``conformance``.
@pytest.fixture(scope="session")
def sample_c2s(conformance_dir) -> bytes:
    """The client-to-orchestrator capture: 11 frames, every table then FINISHED."""
    return (conformance_dir / "sample_c2s.bin").read_bytes()


@pytest.fixture(scope="session")
def sample_s2c(conformance_dir) -> bytes:
    """The orchestrator-to-client capture: 10 acks."""
    return (conformance_dir / "sample_s2c.bin").read_bytes()
