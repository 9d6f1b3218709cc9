#!/usr/bin/env bash
# Run parsl's own test suite (from the installed parsl package) against
# PandaExecutor, using the config in tests/parsl_config.py (fresh_config()).
#
#   scripts/parsl-tests.sh [--htex] [extra pytest args...]
#
#   --htex   same selection, but with parsl's own
#            parsl/tests/configs/htex_local.py (for comparison; not used in CI)
#
# Uses the `python` first on PATH (scripts/test.sh puts .venv/bin first; parsl's
# tests also need the venv's console scripts such as process_worker_pool.py on
# PATH). Falls back to <repo>/.venv if that python cannot import parsl.
#
# Env: PARSL_TESTS_TIMEOUT (overall seconds, default 1500),
#      PARSL_TESTS_PER_TEST_TIMEOUT (seconds, default 120)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

mode=panda
if [ "${1:-}" = "--htex" ]; then
    mode=htex
    shift
fi

if ! python -c 'import parsl' >/dev/null 2>&1; then
    if [ -x "$REPO/.venv/bin/python" ]; then
        export PATH="$REPO/.venv/bin:$PATH"
    else
        echo "[parsl-tests] error: no python with parsl on PATH; run scripts/setup.sh first" >&2
        exit 2
    fi
fi
# parsl's tests launch helper executables (process_worker_pool.py, ...) by name:
# make sure the bin dir of this interpreter comes first.
PYBIN="$(dirname "$(python -c 'import sys; print(sys.executable)')")"
export PATH="$PYBIN:$PATH"

PARSL_DIR="$(cd / && python -c 'import parsl, os; print(os.path.dirname(parsl.__file__))')"
PARSL_VERSION="$(cd / && python -c 'import parsl; print(parsl.__version__)')"

EXTRA=()
if [ "$mode" = htex ]; then
    CONFIG="$PARSL_DIR/tests/configs/htex_local.py"
else
    CONFIG="$REPO/tests/parsl_config.py"
    # test_resource_spec.py::test_resource (marked issue_3620 upstream) asserts that only
    # HTEX, WorkQueue and ThreadPool raise InvalidResourceSpecification for an unknown key.
    # PandaExecutor must raise it too (its own contract, tested in
    # tests/executors/test_panda_executor.py), so that one parsl test cannot pass for it:
    # it is left out here rather than weakening the contract. See README.
    EXTRA+=(--deselect "test_error_handling/test_resource_spec.py::test_resource")
fi
# Two of parsl's own tests race on timing whatever the executor: test_staging_stdout's zip test
# reads the zip while parsl's stderr stage-out may still be appending to it (BadZipFile), and
# test_timeout's 5 ms timer can fire late on a loaded machine (AppTimeout). Only those errors
# are retried, once, and pytest reports each rerun ("R" and "N rerun" in the summary).
EXTRA+=(--reruns 1 --only-rerun BadZipFile --only-rerun AppTimeout)
if [ ! -f "$CONFIG" ]; then
    echo "[parsl-tests] error: config $CONFIG does not exist" >&2
    exit 2
fi

SCRATCH="$REPO/.test-services/parsl-tests/$mode"
mkdir -p "$SCRATCH"
cd "$SCRATCH"
# An empty ini file in the scratch dir keeps the repository's own pytest
# settings (pyproject.toml is an ancestor of .venv/...) away from parsl's suite.
printf '[pytest]\n' >"$SCRATCH/pytest.ini"
LOG="$SCRATCH/pytest.log"

overall="${PARSL_TESTS_TIMEOUT:-1500}"
per_test="${PARSL_TESTS_PER_TEST_TIMEOUT:-120}"

echo "[parsl-tests] parsl $PARSL_VERSION from $PARSL_DIR" >&2
echo "[parsl-tests] config: $CONFIG; scratch: $SCRATCH; log: $LOG" >&2
echo "[parsl-tests] limits: ${per_test}s per test, ${overall}s overall" >&2

start=$(date +%s)
: >"$LOG"
# `timeout` puts pytest (and everything parsl starts) in its own process
# group and kills that whole group when the time is up. Because that group is
# not ours, forward INT/TERM/HUP to it so Ctrl-C / CI cancellation still
# reaches pytest and its workers.
timeout --kill-after=60 "$overall" \
    python -m pytest "$PARSL_DIR/tests" \
        --config "$CONFIG" \
        -c "$SCRATCH/pytest.ini" --rootdir "$PARSL_DIR/tests" \
        -k "not cleannet and not unix_filesystem_permissions_required" \
        "${EXTRA[@]}" \
        -p no:cacheprovider -p no:randomly \
        --timeout "$per_test" \
        -q "$@" </dev/null >"$LOG" 2>&1 &
tpid=$!
tail -n +1 -f --pid="$tpid" "$LOG" &
tailpid=$!
# shellcheck disable=SC2317  # invoked via trap
forward() {
    echo "[parsl-tests] got SIG$1, stopping pytest (process group $tpid)" >&2
    kill -"$1" -- "-$tpid" 2>/dev/null || kill -"$1" "$tpid" 2>/dev/null || true
}
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward HUP' HUP
rc=0
wait "$tpid" || rc=$?
# a trapped signal interrupts `wait`: keep waiting for pytest to finish
while kill -0 "$tpid" 2>/dev/null; do
    rc=0
    wait "$tpid" || rc=$?
done
wait "$tailpid" 2>/dev/null || true
trap - INT TERM HUP
elapsed=$(( $(date +%s) - start ))

# Counts from pytest's final summary line, e.g.
# "143 passed, 250 skipped, 8 deselected, 3 warnings in 512.34s (0:08:32)"
summary="$(grep -E '^=*\s*[0-9]+ (passed|failed|error|errors|skipped|deselected)|no tests ran' "$LOG" | tail -n 1 || true)"
count() { grep -oE "[0-9]+ $1" <<<"$summary" | grep -oE '^[0-9]+' || echo 0; }
passed=$(count passed); failed=$(count failed); skipped=$(count skipped)
errors=$(count 'errors?'); deselected=$(count deselected)
if [ -z "$summary" ]; then
    # no final summary (timed out / killed): count pytest's progress letters
    progress="$(grep -E '^[.FEsxX]+ *(\[ *[0-9]+%\])?$' "$LOG" | sed -E 's/ *\[.*$//' | tr -d '\n' || true)"
    letters() { tr -cd "$1" <<<"$progress" | wc -c; }
    passed=$(letters '.'); failed=$(letters 'F'); errors=$(letters 'E'); skipped=$(letters 's')
fi

[ -n "$(tail -c 1 "$LOG")" ] && echo   # finish a cut-off progress line
status=ok
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMED OUT after ${overall}s"
elif [ "$rc" -ne 0 ]; then
    status="FAILED (pytest exit $rc)"
fi
echo "[parsl-tests] $mode: passed=$passed failed=$failed errors=$errors skipped=$skipped" \
     "deselected=$deselected in ${elapsed}s -- $status" >&2
exit "$rc"
