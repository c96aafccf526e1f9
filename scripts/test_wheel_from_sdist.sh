#!/usr/bin/env bash
# Builds and tests a wheel the way cibuildwheel does in .github/workflows/wheels.yml:
# the sdist, unpacked in a temporary directory; a wheel built from that
# unpacked tree (not from the repository); the wheel installed with its
# `test` extra into a fresh virtual environment; then [tool.cibuildwheel]
# test-command from pyproject.toml, run from an empty directory against the
# unpacked sdist's tests/ with test-environment (FASTFRAME_IMPL=c). A file the
# tests need and the sdist lacks fails here, as it would fail every wheel job.
#
# Also checks what a release must carry: LICENSE in the sdist and the wheel,
# the extension in the wheel and at most 700 KB (built without debug info).
#
# With a broker (FASTFRAME_AMQP_URL) the tests marked rabbitmq run afterwards,
# on the same wheel.
#
#     bash scripts/test_wheel_from_sdist.sh        # PYTHON=... picks the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
MAX_EXTENSION_BYTES=$((700 * 1024))

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastframe-sdist.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "== sdist, then a wheel from the unpacked sdist =="
"$PYTHON" -m venv "$WORK/build-venv"
BUILD_PY="$WORK/build-venv/bin/python"
"$BUILD_PY" -m pip install -q --upgrade pip
"$BUILD_PY" -m pip install -q build 'tomli; python_version < "3.11"'
"$BUILD_PY" -m build --sdist --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 ||
  { cat "$WORK/build.log" >&2; exit 1; }
sdist=$(echo "$WORK"/dist/*.tar.gz)
mkdir "$WORK/unpacked"
tar -xzf "$sdist" -C "$WORK/unpacked"
project=$(echo "$WORK"/unpacked/*)
"$BUILD_PY" -m build --wheel --outdir "$WORK/wheelhouse" "$project" >>"$WORK/build.log" 2>&1 ||
  { cat "$WORK/build.log" >&2; exit 1; }
if grep -i "deprecat" "$WORK/build.log" >&2; then
  echo "test_wheel_from_sdist.sh: the build printed deprecation warnings (above)" >&2
  exit 1
fi
wheel=$(echo "$WORK"/wheelhouse/*.whl)
echo "built $(basename "$sdist") and $(basename "$wheel")"

# The release contents, and test-command / test-environment, as pyproject.toml has them.
"$BUILD_PY" - "$sdist" "$wheel" "$project/pyproject.toml" "$MAX_EXTENSION_BYTES" \
    >"$WORK/test-command" <<'EOF'
import sys, tarfile, zipfile
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

sdist, wheel, pyproject, max_bytes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
problems = []
with tarfile.open(sdist) as tar:
    if not any(n.endswith("/LICENSE") and n.count("/") == 1 for n in tar.getnames()):
        problems.append(f"no LICENSE in {sdist}")
with zipfile.ZipFile(wheel) as whl:
    infos = whl.infolist()
    if not any(i.filename.endswith(".dist-info/licenses/LICENSE") for i in infos):
        problems.append(f"no LICENSE in {wheel}")
    extensions = [i for i in infos if i.filename.startswith("fastframe/_codec_c.")
                  and i.filename.endswith((".so", ".pyd"))]
    if not extensions:
        problems.append(f"no extension in {wheel}")
    for i in extensions:
        print(f"{i.filename}: {i.file_size} bytes", file=sys.stderr)
        if i.file_size > max_bytes:
            problems.append(f"{i.filename} is {i.file_size} bytes, over {max_bytes}")
if problems:
    sys.exit("test_wheel_from_sdist.sh: " + "; ".join(problems))
config = tomllib.load(open(pyproject, "rb"))["tool"]["cibuildwheel"]
print(config["test-command"])
for name, value in config.get("test-environment", {}).items():
    print(f"{name}={value}")
EOF
test_command=$(head -n 1 "$WORK/test-command")
mapfile -t test_environment < <(tail -n +2 "$WORK/test-command")

echo "== the wheel in a fresh venv, [tool.cibuildwheel] test-command =="
"$PYTHON" -m venv "$WORK/test-venv"
"$WORK/test-venv/bin/python" -m pip install -q --upgrade pip
"$WORK/test-venv/bin/python" -m pip install -q "$wheel[test]"
mkdir "$WORK/cwd"
test_command=${test_command//\{project\}/$project}
test_command=${test_command//\{package\}/$project}
echo "${test_environment[*]} $test_command"
# cibuildwheel runs the command from an empty directory with the venv first on PATH.
(cd "$WORK/cwd" && env "${test_environment[@]}" PATH="$WORK/test-venv/bin:$PATH" \
  bash -c "$test_command")

# The wheel jobs deselect the broker tests (no broker there); with one at hand
# (FASTFRAME_AMQP_URL, as in CI) they run too, so this run is a whole suite.
if [ -n "${FASTFRAME_AMQP_URL:-}" ]; then
  echo "== the wheel with RabbitMQ at $FASTFRAME_AMQP_URL: the broker tests =="
  (cd "$WORK/cwd" && env "${test_environment[@]}" PATH="$WORK/test-venv/bin:$PATH" \
    python -m pytest "$project/tests" -q -p no:cacheprovider -m rabbitmq)
fi
