#!/usr/bin/env bash
# A real Rubin quantum graph through `bps submit` on pandaflow, with nothing configured:
#
#   examples/rubin_qgraph/run.sh [DIR]
#
# 1. makes a throwaway butler repository and its quantum graph in DIR/repo (make_repo.py; DIR
#    defaults to a new temporary directory, kept afterwards for inspection);
# 2. submits the graph with `bps submit configs/bps/qgraph-local.yaml`, which starts a local
#    pandaflow server and pilot in the background under $PANDAFLOW_HOME (DIR/pandaflow-home
#    unless PANDAFLOW_HOME is set; see docs/bps.md, "Which server");
# 3. waits for the run to end, prints `bps report` and the output datasets (`butler
#    query-datasets`);
# 4. stops the local server and pilot this submission started (their pids are in
#    $PANDAFLOW_HOME/bps-local.json), whatever happened above.
#
# Exit status 0 only if every job succeeded and the outputs are in the butler. Needs the bps
# extra (pip install 'pandaflow[bps]'): bps, pipetask and butler on PATH.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUBMIT_YAML="$(cd "$HERE/../.." && pwd)/configs/bps/qgraph-local.yaml"
WAIT_S="${RUBIN_QGRAPH_TIMEOUT:-900}"  # how long the run may take

fail() { echo "Error: $*" >&2; exit 1; }
say() { printf '\n==> %s\n' "$*"; }

[ $# -le 1 ] || fail "usage: $0 [DIR]   (DIR: a new or empty directory for the repository and the run)"
if [ $# -eq 1 ] && [ -e "$1" ]; then
    [ -d "$1" ] && [ -z "$(ls -A "$1")" ] || fail "$1 is not an empty directory: name a new or empty one"
fi
for tool in python bps pipetask butler pandaflow; do
    command -v "$tool" >/dev/null \
        || fail "'$tool' is not on PATH: activate the environment that has pandaflow[bps] (source .venv/bin/activate)"
done
python -c 'import lsst.ctrl.bps, pandaflow.bps' 2>/dev/null \
    || fail "the python on PATH ($(command -v python)) lacks lsst-ctrl-bps or pandaflow: pip install 'pandaflow[bps]'"

if [ $# -eq 1 ]; then
    mkdir -p "$1"
    DIR="$(cd "$1" && pwd)"
else
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/pandaflow-rubin-qgraph.XXXXXX")"
fi
export PANDAFLOW_HOME="${PANDAFLOW_HOME:-$DIR/pandaflow-home}"
mkdir -p "$PANDAFLOW_HOME"
LOCAL_STATE="$PANDAFLOW_HOME/bps-local.json"

# The pids bps-local.json records: "server_pid pilot_pid" (0 for none).
local_pids() {
    python - "$LOCAL_STATE" <<'EOF'
import json, sys
try:
    state = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    state = {}
print(state.get("server_pid") or 0, state.get("pilot_pid") or 0)
EOF
}
read -r SERVER_BEFORE PILOT_BEFORE < <(local_pids)

# Stop what this run's submission started (a server or pilot that was there before is left
# alone): each is the leader of its own process group, so payloads still running go too.
stop_started() {
    local server pilot pid gone
    read -r server pilot < <(local_pids)
    for pid in "$pilot" "$server"; do
        [ "$pid" != 0 ] && [ "$pid" != "$SERVER_BEFORE" ] && [ "$pid" != "$PILOT_BEFORE" ] || continue
        grep -qa pandaflow "/proc/$pid/cmdline" 2>/dev/null || continue  # ended, or not ours
        kill -TERM -- "-$pid" 2>/dev/null || true
        gone=0
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || { gone=1; break; }
            sleep 0.1
        done
        [ "$gone" = 1 ] || kill -KILL -- "-$pid" 2>/dev/null || true
        echo "stopped the local pandaflow $([ "$pid" = "$server" ] && echo server || echo pilot) (pid $pid)"
    done
}
trap stop_started EXIT

say "1. a butler repository and its quantum graph in $DIR/repo"
python "$HERE/make_repo.py" "$DIR/repo"
export REPO="$DIR/repo" QGRAPH="$DIR/repo/demo.qg"
OPERATOR="$(python -c 'import getpass; print(getpass.getuser())')"  # bps's default operator
OUTPUT="u/$OPERATOR/demo"  # the output collection: u/{operator}/{payloadName}

say "2. bps submit $SUBMIT_YAML (PANDAFLOW_HOME=$PANDAFLOW_HOME)"
cd "$DIR"  # the submit yaml puts the submit directory under ${PWD}
if ! bps submit "$SUBMIT_YAML" > "$DIR/bps-submit.log" 2>&1; then
    tail -n 30 "$DIR/bps-submit.log" >&2
    fail "bps submit failed (its whole output: $DIR/bps-submit.log)"
fi
RUN_ID="$(sed -n 's/^Run Id: \([0-9][0-9]*\)$/\1/p' "$DIR/bps-submit.log")"
[ -n "$RUN_ID" ] || fail "bps submit printed no Run Id (its output: $DIR/bps-submit.log)"
read -r SERVER_NOW PILOT_NOW < <(local_pids)
echo "Run Id: $RUN_ID (pandaflow workflow $RUN_ID; local server pid $SERVER_NOW, pilot pid $PILOT_NOW)"

say "3. waiting for run $RUN_ID to end (pandaflow report --wait)"
status=0
pandaflow report --wait --timeout "$WAIT_S" "$RUN_ID" > "$DIR/pandaflow-report.txt" || status=$?
case "$status" in
    0) echo "run $RUN_ID SUCCEEDED" ;;
    1) echo "run $RUN_ID ended, not every job succeeded" ;;
    2) echo "run $RUN_ID had not ended after $WAIT_S s (RUBIN_QGRAPH_TIMEOUT)" ;;
    *) cat "$DIR/pandaflow-report.txt"; fail "pandaflow report exited $status" ;;
esac
bps report --id "$RUN_ID" --wms-service-class pandaflow.bps.PandaflowService

say "4. the outputs in $REPO, collection $OUTPUT"
butler query-datasets "$REPO" 'add*_dataset[123]' --collections "$OUTPUT" > "$DIR/datasets.txt" 2>&1 || true
cat "$DIR/datasets.txt"
if [ "$status" != 0 ]; then
    pandaflow jobs --workflow "$RUN_ID" --status failed >&2 || true
    echo "a job's log: pandaflow --db sqlite:///$PANDAFLOW_HOME/pandaflow.db logs JOB_ID" >&2
    fail "run $RUN_ID did not succeed"
fi
# each task writes add_datasetN and add2_datasetN (N = 1, 2, 3) for each of the 2 detectors
found="$(grep -cE '^add2?_dataset[123] ' "$DIR/datasets.txt" || true)"
[ "$found" = 12 ] || fail "$found of the 12 output datasets are in $OUTPUT (expected add_dataset1..3 and add2_dataset1..3 of 2 detectors)"
stop_started
trap - EXIT
say "done: the repository, the submit directory and the logs are in $DIR (remove it when done)"
