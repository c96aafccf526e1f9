#!/usr/bin/env bash
# Sets up and runs the whole test suite: a virtual environment with the
# package built from source (the Cython extension included) and its test
# extras, a RabbitMQ broker on loopback for the sink tests, then the suite
# twice: on the default (Cython) codec and on the pure-Python one.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(realpath -m "${VENV:-.venv}")
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ".[test]"
PY="$VENV/bin/python"

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
impl=$("$PY" -c "import fastframe; print(fastframe.__impl__)")
if [ "$impl" != "c" ]; then
  echo "test.sh: the default codec is '$impl', expected the Cython one ('c')" >&2
  exit 1
fi
echo "== test suite, default codec (Cython) =="
"$PY" -m pytest -q -p no:cacheprovider "$@" .
# A short coverage-guided differential fuzz run of both codecs (fuzz/README.md
# has the long run); FASTFRAME_FUZZ_SECONDS=0 leaves it out.
FUZZ_SECONDS=${FASTFRAME_FUZZ_SECONDS:-90}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "== differential fuzzing, ${FUZZ_SECONDS}s =="
  "$PY" -m pip install -q "atheris>=2"
  PYTHON="$PY" bash ../fuzz/run.sh "$FUZZ_SECONDS"
fi

echo "== test suite, FASTFRAME_PUREPYTHON=1 =="
FASTFRAME_PUREPYTHON=1 "$PY" -m pytest -q -p no:cacheprovider "$@" .
