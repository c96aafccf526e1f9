#!/usr/bin/env bash
# Bounded differential fuzz run of the fastframe codecs (atheris):
#
#     fuzz/run.sh [SECONDS]        # default 120
#
# Runs on the *installed* package (pip install ".[test]" atheris, or ".[fuzz]"),
# never on src/: the target runs from fuzz/findings/, where `import fastframe`
# cannot pick up the source tree, and a fastframe imported from src/ is refused.
# Exits non-zero on a finding (or a hang past the hard cap), with the input in
# fuzz/findings/ (crash-*, timeout-*, oom-*); new corpus inputs go to
# fuzz/findings/corpus/. FASTFRAME_FUZZ_SKIP=check,... leaves out checks of
# tests/differential.py (for a known finding while it is open).
set -euo pipefail

SECS=${1:-120}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-python3}
FINDINGS="$HERE/findings"

mkdir -p "$FINDINGS/corpus"
cd "$FINDINGS"
where=$("$PY" -c 'import fastframe, os; print(os.path.dirname(os.path.realpath(fastframe.__file__)))')
if [ "$where" = "$(realpath "$REPO/src/fastframe")" ] && [ -z "${FASTFRAME_FUZZ_ALLOW_SRC:-}" ]; then
  echo "fuzz/run.sh: fastframe comes from the source tree ($where), not an install;" \
       "pip install '.[test]' atheris (or set FASTFRAME_FUZZ_ALLOW_SRC=1)" >&2
  exit 2
fi
"$PY" -c 'import fastframe.codec; fastframe.codec.load("c")' || {
  echo "fuzz/run.sh: the Cython codec is not importable; the differential needs both" >&2
  exit 2
}

status=0
timeout --kill-after=15 $((SECS + 60)) "$PY" "$HERE/fuzz_codec.py" \
  -max_total_time="$SECS" -timeout=20 -rss_limit_mb=2048 -max_len=8192 \
  -dict="$HERE/fastframe.dict" -artifact_prefix="$FINDINGS/" -print_final_stats=1 \
  "$FINDINGS/corpus" "$HERE/seeds" "$HERE/regressions" || status=$?
if [ "$status" -ne 0 ]; then
  echo "fuzz/run.sh: finding (exit $status); input(s) in $FINDINGS:" >&2
  ls -1 "$FINDINGS" | grep -v '^corpus$' >&2 || true
  echo "replay: python fuzz/fuzz_codec.py FILE; keep it: copy it to fuzz/regressions/" >&2
fi
exit "$status"
