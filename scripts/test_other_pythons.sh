#!/usr/bin/env bash
# The suite on the other Pythons fastframe claims, each in its own venv with
# the package built from source: scripts/test.sh with PYTHON set. On CPython
# the suite runs once, every codec test on both codecs (the codec fixture) and
# the system tests on the default (Cython) one; the second run on the pure
# codec, and the fuzz run, are the 3.11 run's. On PyPy the package is pure
# by design: the whole suite on the pure codec.
#
#     bash scripts/test_other_pythons.sh [PYTHON...]
#
# Without arguments: CPython 3.9, 3.12 and 3.13 from pyenv ($PYENV_ROOT,
# default ~/.pyenv, the newest patch release of each) and Debian's PyPy
# (/usr/bin/pypy3; installed with apt-get when missing, as root). A missing
# interpreter is an error: a version is claimed only where it is proven.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test_other_pythons.sh: %s\n' "$*" >&2; }

# The newest pyenv install of CPython $1 (e.g. 3.12).
pyenv_python() {
  local found
  found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".* 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$found" ] || [ ! -x "$found/bin/python" ]; then
    log "no CPython $1 in ${PYENV_ROOT:-$HOME/.pyenv}/versions (pyenv install $1)"
    return 1
  fi
  echo "$found/bin/python"
}

if [ "$#" -gt 0 ]; then
  pythons=("$@")
else
  pythons=()
  for version in 3.9 3.12 3.13; do
    python=$(pyenv_python "$version")
    pythons+=("$python")
  done
  if [ ! -x /usr/bin/pypy3 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "installing Debian's pypy3"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pypy3 pypy3-venv >/dev/null ||
        { log "apt-get install pypy3 failed: PyPy cannot be tested here"; exit 1; }
    else
      log "no /usr/bin/pypy3, and no root with apt-get to install it: PyPy cannot be tested here"
      exit 1
    fi
  fi
  pythons+=(/usr/bin/pypy3)
fi

failed=()
for python in "${pythons[@]}"; do
  start=$SECONDS
  if PYTHON=$python FASTFRAME_FUZZ_SECONDS=0 FASTFRAME_PURE_RUN=0 bash scripts/test.sh; then
    log "$python: passed in $((SECONDS - start)) s"
  else
    log "$python: FAILED after $((SECONDS - start)) s"
    failed+=("$python")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  log "failed on: ${failed[*]}"
  exit 1
fi
