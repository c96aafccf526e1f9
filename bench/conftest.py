"""Fixtures for the pytest-benchmark cases: both codecs, one workload.

``codec`` is the implementation module (``"c"`` or ``"python"``, loaded with
``fastframe.codec.load``) and is also installed as ``fastframe.codec.impl``
for the case, as the tests do, so ``FrameReader`` runs on it too. The cases
run on the installed package (``pip install '.[bench]'`` builds the Cython
codec). Unlike the tests, a Cython codec that does not import *skips* its
cases, with the reason in the ``-ra`` summary.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import fastframe.codec

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402  (bench/ is not a package)

IMPLEMENTATIONS = ("c", "python")


@pytest.fixture(params=IMPLEMENTATIONS)
def codec(request, monkeypatch):
    try:
        module = fastframe.codec.load(request.param)
    except ImportError as exc:
        pytest.skip(f"codec {request.param!r} not importable: {exc}")
    monkeypatch.setattr(fastframe.codec, "impl", module)
    return module


@pytest.fixture(scope="session")
def bench_workload() -> workload.Workload:
    """Generated rows (``fastframe gen``, fixed seed) cut into 1 MiB batches."""
    return workload.prepare()
