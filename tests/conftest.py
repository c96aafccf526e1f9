"""The one fixture every codec test runs through: both implementations.

``codec`` is the implementation module (``fastframe._codec_c`` or
``fastframe._codec_py``) and is also installed as ``fastframe.codec.impl`` for
the test, so the message classes, ``recv_msg`` and the frame readers run on it
too. A missing extension fails the ``c`` cases; they skip only where the
package is pure by design: on an interpreter other than CPython (setup.py
builds no extension there) and under ``FASTFRAME_NO_EXTENSIONS=1``, the
setting that installs the pure package on purpose. Tests marked
``needs_extension`` skip there too.

Under pytest-xdist (``scripts/test.sh`` runs the suite on every core), the
RabbitMQ tests run one at a time on one worker: some of them stop or kill
the one broker all of them use. The controller sees test ids only, so a test
marked ``rabbitmq`` must say "rabbitmq" in its id (its module's name or its
own); collection fails otherwise.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

import fastframe.codec

IMPLEMENTATIONS = ("c", "python")
BROKER_SCOPE = "rabbitmq"
# The original system's bytes (data/README.md); FASTFRAME_CONFORMANCE points
# the tests at another copy of them.
CONFORMANCE = Path(os.environ.get("FASTFRAME_CONFORMANCE",
                                  Path(__file__).resolve().parent / "data"))

PURE_BY_DESIGN = (platform.python_implementation() != "CPython"
                  or os.environ.get("FASTFRAME_NO_EXTENSIONS", "") not in ("", "0"))
NO_EXTENSION = (f"the Cython codec is not built on {platform.python_implementation()}"
                if platform.python_implementation() != "CPython"
                else "FASTFRAME_NO_EXTENSIONS is set: a pure install, on purpose")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("rabbitmq") and BROKER_SCOPE not in item.nodeid:
            raise pytest.UsageError(f"{item.nodeid} is marked rabbitmq: its id must say "
                                    f"'{BROKER_SCOPE}' so that xdist runs it beside no other "
                                    "broker test (tests/conftest.py)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Each test a unit of its own, except the broker tests: one unit, one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class BrokerTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return BROKER_SCOPE if BROKER_SCOPE in nodeid else nodeid

    return BrokerTestsTogether(config, log)


def pytest_runtest_setup(item):
    if PURE_BY_DESIGN and item.get_closest_marker("needs_extension"):
        pytest.skip(NO_EXTENSION)


@pytest.fixture(params=IMPLEMENTATIONS)
def codec(request, monkeypatch):
    if request.param == "c" and PURE_BY_DESIGN:
        pytest.skip(NO_EXTENSION)
    module = fastframe.codec.load(request.param)
    monkeypatch.setattr(fastframe.codec, "impl", module)
    return module


@pytest.fixture(scope="session")
def both_codecs():
    """Both implementations at once, for cross-implementation checks."""
    if PURE_BY_DESIGN:
        pytest.skip(NO_EXTENSION)
    return {name: fastframe.codec.load(name) for name in IMPLEMENTATIONS}


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The folder of the original system's recorded bytes."""
    if not CONFORMANCE.is_dir():
        pytest.fail(f"conformance data not found at {CONFORMANCE}")
    return CONFORMANCE


# The Go client's captures, read once and only by the tests that ask for them.
@pytest.fixture(scope="session")
def sample_c2s(conformance_dir) -> bytes:
    """The client-to-orchestrator capture: 11 frames, every table then FINISHED."""
    return (conformance_dir / "sample_c2s.bin").read_bytes()


@pytest.fixture(scope="session")
def sample_s2c(conformance_dir) -> bytes:
    """The orchestrator-to-client capture: 10 acks."""
    return (conformance_dir / "sample_s2c.bin").read_bytes()
