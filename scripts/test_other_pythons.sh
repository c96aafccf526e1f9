#!/usr/bin/env bash
# The suite on the other Pythons fastframe claims, each in its own venv with
# the package built from source: scripts/test.sh with PYTHON set, once per
# interpreter (no second run, no fuzzing: those are the 3.11 run's). On
# CPython every codec test runs on both codecs wherever it runs (the codec
# fixture); what each run adds is the default codec and event loop the
# system tests (orchestrator, client, sinks) run on:
#
#   3.11  Cython codec, uvloop         scripts/test.sh (README), and fuzzing
#   3.9   Cython codec, uvloop         here
#   3.10  Cython codec, asyncio's loop here (FASTFRAME_EVENT_LOOP=asyncio)
#   3.12  Cython codec, uvloop         scripts/test_wheel_from_sdist.sh: the wheel
#   3.13  pure codec, asyncio's loop   here (FASTFRAME_PUREPYTHON=1,
#                                      FASTFRAME_EVENT_LOOP=asyncio)
#   PyPy  pure codec, asyncio's loop   here: the package is pure by design there
#
#     bash scripts/test_other_pythons.sh [PYTHON...]
#
# Without arguments, that matrix: CPython 3.9, 3.10 and 3.13 from pyenv ($PYENV_ROOT,
# default ~/.pyenv, the newest patch release of each) and Debian's PyPy
# (/usr/bin/pypy3; installed with apt-get when missing, as root). With
# arguments, each PYTHON on the defaults. A missing interpreter is an error:
# a version is claimed only where it is proven.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pythons.sh

log() { printf 'test_other_pythons.sh: %s\n' "$*" >&2; }

# Parallel arrays: each interpreter and the settings of its run.
pythons=()
settings=()
if [ "$#" -gt 0 ]; then
  for python in "$@"; do
    pythons+=("$python")
    settings+=("")
  done
else
  pythons+=("$(pyenv_python 3.9)")
  settings+=("")
  pythons+=("$(pyenv_python 3.10)")
  settings+=("FASTFRAME_EVENT_LOOP=asyncio")
  pythons+=("$(pyenv_python 3.13)")
  settings+=("FASTFRAME_PUREPYTHON=1 FASTFRAME_EVENT_LOOP=asyncio")
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
  settings+=("")
fi

failed=()
for i in "${!pythons[@]}"; do
  python=${pythons[$i]}
  read -r -a extra <<<"${settings[$i]}"
  start=$SECONDS
  if env "${extra[@]}" PYTHON="$python" FASTFRAME_FUZZ_SECONDS=0 FASTFRAME_PURE_RUN=0 \
      bash scripts/test.sh; then
    log "$python${settings[$i]:+ ${settings[$i]}}: passed in $((SECONDS - start)) s"
  else
    log "$python${settings[$i]:+ ${settings[$i]}}: FAILED after $((SECONDS - start)) s"
    failed+=("$python")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  log "failed on: ${failed[*]}"
  exit 1
fi
