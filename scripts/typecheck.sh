#!/usr/bin/env bash
# Type checks: the package under `mypy --strict` ([tool.mypy] in pyproject.toml),
# the README's asyncio example under `mypy --strict` too, the return types the
# API promises (tests/static_types/api_types.py) under mypy and pyright, and pyright's
# `--verifytypes` completeness of the public API, which must be at least
# FASTFRAME_MIN_TYPE_SCORE percent (default 95). Fails if any of them fails.
#
# Uses the Python it is given (PY=/path/to/python; default: python3), and
# installs mypy and pyright into that environment when they are missing.
# Checks the source tree (src/), whatever fastframe the environment has installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
MIN_SCORE=${FASTFRAME_MIN_TYPE_SCORE:-95}

if ! "$PY" -c "import mypy, pyright" 2>/dev/null; then
  echo "typecheck.sh: installing mypy and pyright into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
  "$PY" -m pip install -q mypy pyright
fi

status=0

echo "== mypy --strict src/fastframe =="
"$PY" -m mypy || status=1

echo "== mypy --strict: the README's asyncio example =="
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The first python block after the "### An asyncio server" heading.
awk '/^### An asyncio server/ {section = 1}
     section && /^```python$/ {inside = 1; next}
     inside && /^```$/ {exit}
     inside {print}' README.md > "$work/readme_asyncio.py"
if [ ! -s "$work/readme_asyncio.py" ]; then
  echo "typecheck.sh: no python block under '### An asyncio server' in README.md" >&2
  status=1
else
  # fastframe itself is checked above: here only the example is.
  MYPYPATH=src "$PY" -m mypy --strict --follow-imports=silent "$work/readme_asyncio.py" || status=1
fi

echo "== mypy --strict and pyright: the API's promised types (tests/static_types) =="
MYPYPATH=src "$PY" -m mypy --strict --follow-imports=silent tests/static_types/api_types.py || status=1
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pyright --pythonpath "$PY" \
  tests/static_types/api_types.py || status=1

echo "== pyright --verifytypes fastframe (at least $MIN_SCORE%) =="
# pyright imports fastframe through the given interpreter; PYTHONPATH puts
# this tree's src/ first. --outputjson carries the score to compare.
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pyright --pythonpath "$PY" \
  --verifytypes fastframe --ignoreexternal --outputjson > "$work/verifytypes.json" || true
"$PY" - "$work/verifytypes.json" "$MIN_SCORE" <<'EOF' || status=1
import json
import sys

path, minimum = sys.argv[1], float(sys.argv[2])
try:
    with open(path) as f:
        report = json.load(f)
    completeness = report["typeCompleteness"]
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"typecheck.sh: no pyright --verifytypes report ({exc!r})")
score = 100 * completeness["completenessScore"]
for symbol in completeness["symbols"]:
    if not symbol["isTypeKnown"] and symbol["isExported"]:
        for diagnostic in symbol.get("diagnostics", [])[:1]:
            print(f"  {symbol['name']}: {diagnostic['message'].splitlines()[0]}")
print(f"type completeness {score:.1f}% (at least {minimum:g}% required)")
if score < minimum:
    sys.exit(1)
EOF

exit $status
