#!/usr/bin/env bash
# Sets up and runs the end-to-end ingest demo: builds and installs fastframe
# into a virtual environment, then `fastframe demo` generates a data set,
# serves it to a local orchestrator with the file sink and checks every row.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(realpath -m "${VENV:-.venv}")
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q .
exec "$VENV/bin/fastframe" demo "$@"
