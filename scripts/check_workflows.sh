#!/usr/bin/env bash
# Validates .github/workflows/*.yml against GitHub's workflow schema, offline:
# check-jsonschema ships the schema (--builtin-schema), in a venv of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(realpath -m "${VENV:-.venv-tools}")
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "check-jsonschema>=0.28"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
