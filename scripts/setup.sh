#!/usr/bin/env bash
# Create/update the development venv at <repo>/.venv:
#   - interpreter: Python >= 3.12 found by scripts/python.sh
#     (override with PANDAFLOW_PYTHON=/path/to/python)
#   - pip install -e '.[test]'
# Idempotent: skipped when .venv/.pandaflow-setup-stamp matches the hash of
# pyproject.toml + interpreter version. Force with PANDAFLOW_SETUP_FORCE=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="$REPO/.venv"
STAMP="$VENV/.pandaflow-setup-stamp"

log() { echo "[setup] $*" >&2; }

# Serialise concurrent runs (test.sh and demo.sh may be started together).
mkdir -p "$REPO/.test-services"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$REPO/.test-services/setup.lock"
    flock 9
fi

# shellcheck source=scripts/python.sh
source "$REPO/scripts/python.sh"
pandaflow_find_python
PY_VERSION="$("$PANDAFLOW_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# Recreate the venv if it is missing, broken, or built from another minor version.
if [ -x "$VENV/bin/python" ] \
   && venv_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
   && [ "$venv_version" = "$PY_VERSION" ]; then
    :
else
    if [ -e "$VENV" ]; then
        log "removing unusable/mismatched $VENV (want Python $PY_VERSION)"
        rm -rf "$VENV"
    fi
    log "creating $VENV with $PANDAFLOW_PY (Python $PY_VERSION)"
    "$PANDAFLOW_PY" -m venv "$VENV"
fi

want_stamp="$( { cat pyproject.toml; "$VENV/bin/python" -VV; } | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"

if [ "${PANDAFLOW_SETUP_FORCE:-0}" != 1 ] && [ "$want_stamp" = "$have_stamp" ] \
   && (cd / && "$VENV/bin/python" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("pandaflow", "parsl", "pytest", "psycopg")))') \
        >/dev/null 2>&1; then
    log "venv up to date: $VENV ($("$VENV/bin/python" -V 2>&1)); nothing to do"
    exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
log "upgrading pip in $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
log "pip install -e '.[test]' (Python $PY_VERSION)"
"$VENV/bin/python" -m pip install --progress-bar off -e '.[test]'
echo "$want_stamp" >"$STAMP"
log "done: $VENV ($("$VENV/bin/python" -V 2>&1))"
