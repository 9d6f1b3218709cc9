#!/usr/bin/env bash
# The wheel works on its own: build the sdist and wheel (python -m build), install the wheel in a
# fresh virtual environment, and from a directory outside the source tree run `pandaflow --help`,
# check the package data (queue configs, DAG and bps samples, migrations) and run the README's
# parsl example (an embedded server and pilot: the migrations and the default queue file are
# read from the installed package).
#
#   scripts/wheel-check.sh [PYTHON]     (default: the interpreter .venv was built from)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILDER="$REPO/.venv/bin/python"
PYTHON="${1:-$("$BUILDER" -c 'import sys; print(sys._base_executable)')}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pandaflow-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log() { echo "[wheel-check] $*"; }

log "building sdist and wheel into $WORK/dist"
"$BUILDER" -m build --outdir "$WORK/dist" "$REPO" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
wheel="$(ls "$WORK"/dist/pandaflow-*.whl)"
sdist="$(ls "$WORK"/dist/pandaflow-*.tar.gz)"
log "built $(basename "$sdist") and $(basename "$wheel")"

wheel_files="$("$BUILDER" -m zipfile -l "$wheel")"
sdist_files="$(tar tzf "$sdist")"
for wanted in pandaflow/configs/queues/local.json pandaflow/configs/dags/rubin-small.yaml \
              pandaflow/configs/bps/qgraph-local.yaml pandaflow/server/store/migrations/env.py \
              pandaflow/server/store/migrations/versions/0001; do
    grep -q "^$wanted" <<< "$wheel_files" || { log "the wheel lacks $wanted"; exit 1; }
    grep -q "/$wanted" <<< "$sdist_files" || { log "the sdist lacks $wanted"; exit 1; }
done

log "installing the wheel into a fresh virtual environment ($("$PYTHON" --version))"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --progress-bar off "$wheel"

cd "$WORK"   # nothing of the source tree on sys.path from here on
export PANDAFLOW_HOME="$WORK/home"
"$WORK/venv/bin/python" - <<'PY'
import pandaflow, pathlib
where = pathlib.Path(pandaflow.__file__).parent
assert "site-packages" in str(where), f"pandaflow imported from {where}, not from the wheel"
from pandaflow.server.jobs.queues import default_queue_file, load_queues
assert [q.name for q in load_queues(default_queue_file())] == ["local"]
print(f"[wheel-check] pandaflow {pandaflow.__version__} from {where}; package data present")
PY
"$WORK/venv/bin/pandaflow" --help > "$WORK/help.txt"
grep -q "submit" "$WORK/help.txt" || { cat "$WORK/help.txt"; exit 1; }
log "pandaflow --help works"

# The README's parsl example, as written there.
"$REPO/.venv/bin/python" - "$REPO/README.md" > "$WORK/example.py" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text[text.index("## Using it from parsl"):]
print(re.search(r"```python\n(.*?)```", section, re.S).group(1))
PY
out="$(timeout 300 "$WORK/venv/bin/python" "$WORK/example.py")"
[ "$out" = "49" ] || { log "the README example printed '$out', expected 49"; exit 1; }
log "the README's parsl example prints 49 with the installed wheel"
