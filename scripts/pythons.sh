# shellcheck shell=bash
# Sourced by the scripts that test other interpreters than the default one.

# The newest pyenv install of CPython $1 (e.g. 3.12): its python's path, or an
# error naming what to install.
pyenv_python() {
  local found
  found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".* 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$found" ] || [ ! -x "$found/bin/python" ]; then
    printf 'no CPython %s in %s/versions (pyenv install %s)\n' "$1" "${PYENV_ROOT:-$HOME/.pyenv}" "$1" >&2
    return 1
  fi
  echo "$found/bin/python"
}
