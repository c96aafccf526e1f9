#!/usr/bin/env bash
# Sets up and runs the whole test suite: a virtual environment with the
# package built from source (the Cython extension included) and its test
# extras, a RabbitMQ broker on loopback for the sink tests, then the suite on
# the default (Cython) codec, a short differential fuzz run of both codecs,
# and the suite again on the pure-Python codec.
#
#     bash scripts/test.sh [PYTEST ARGS...]
#
# Each suite run is two pytest runs: every test but the `alone` ones on all
# cores (pytest-xdist; tests/conftest.py keeps the broker tests on one
# worker), then the `alone` ones, which time sends against a baseline, with
# nothing beside them. PYTEST ARGS, when given, make it one plain pytest run
# with them instead.
#
# PYTHON=/path/to/python runs it on that interpreter, in its own venv
# (.venv-<implementation><version>; VENV=DIR overrides). On an interpreter
# other than CPython the package is pure by design (setup.py): the suite runs
# once, on the pure codec, and its Cython cases skip with that reason.
# FASTFRAME_FUZZ_SECONDS (default 90; 0 leaves it out) sets the fuzz run;
# FASTFRAME_PURE_RUN=0 leaves out the second run, on the pure codec.
# FASTFRAME_PUREPYTHON=1 and FASTFRAME_EVENT_LOOP=asyncio, when set, pick the
# first run's codec and loop; the check that the extension is the default
# codec on CPython holds either way.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then
  tag=$("$PYTHON" -c 'import sys; print("%s%d.%d" % ((sys.implementation.name,) + sys.version_info[:2]))')
  VENV=$(realpath -m "${VENV:-.venv-$tag}")
else
  PYTHON=python3
  VENV=$(realpath -m "${VENV:-.venv}")
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q ".[test]"
expected=$("$PY" -c 'import platform; print("c" if platform.python_implementation() == "CPython" else "python")')

# The sinks' RabbitMQ tests need a broker. In CI they must run; elsewhere
# they run when this machine can install one (root with apt) and skip otherwise.
if [ -z "${FASTFRAME_AMQP_URL:-}" ]; then
  source .ci/rabbitmq.sh
  if [ "${CI:-}" = "true" ] || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }; then
    rabbitmq_install
    rabbitmq_start
    trap rabbitmq_stop EXIT
  else
    echo "test.sh: no RabbitMQ broker here; its tests will skip (set FASTFRAME_AMQP_URL)" >&2
  fi
fi

# Leave the source tree so the tests import the installed package.
cd tests
run_suite() {
  if [ "$#" -gt 0 ]; then
    "$PY" -m pytest -q -p no:cacheprovider "$@" .
    return
  fi
  local status=0
  "$PY" -m pytest -q -p no:cacheprovider -n auto -m "not alone" . || status=$?
  "$PY" -m pytest -q -p no:cacheprovider -m alone . || status=$?
  return "$status"
}
# What the package loads when nothing asks for a codec: the extension on CPython.
impl=$(env -u FASTFRAME_PUREPYTHON -u FASTFRAME_IMPL "$PY" -c "import fastframe; print(fastframe.__impl__)")
if [ "$impl" != "$expected" ]; then
  echo "test.sh: the default codec is '$impl', expected '$expected' on $("$PY" -V 2>&1)" >&2
  exit 1
fi
if [ "$expected" = python ]; then
  echo "== test suite, $("$PY" -V 2>&1 | head -n 1): pure-Python codec only =="
  run_suite "$@"
  exit 0
fi

# The caller may pick the run's codec and loop (scripts/test_other_pythons.sh does).
echo "== test suite, $("$PY" -V 2>&1), codec: $("$PY" -c "import fastframe; print(fastframe.__impl__)"), event loop: ${FASTFRAME_EVENT_LOOP:-default (uvloop)} =="
run_suite "$@"
# A short coverage-guided differential fuzz run of both codecs (fuzz/README.md
# has the long run); FASTFRAME_FUZZ_SECONDS=0 leaves it out.
FUZZ_SECONDS=${FASTFRAME_FUZZ_SECONDS:-90}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "== differential fuzzing, ${FUZZ_SECONDS}s =="
  "$PY" -m pip install -q "atheris>=2"
  PYTHON="$PY" bash ../fuzz/run.sh "$FUZZ_SECONDS"
fi

# FASTFRAME_PURE_RUN=0 leaves this second run out (the other Pythons in CI):
# the codec fixture already ran every codec test on both codecs above.
if [ "${FASTFRAME_PURE_RUN:-1}" = 0 ]; then
  exit 0
fi
# This run also takes asyncio's own event loop for the orchestrator, the
# first one uvloop (installed with the test extra): both loops run every test.
echo "== test suite, $("$PY" -V 2>&1), FASTFRAME_PUREPYTHON=1, FASTFRAME_EVENT_LOOP=asyncio =="
FASTFRAME_PUREPYTHON=1 FASTFRAME_EVENT_LOOP=asyncio run_suite "$@"
