# shellcheck shell=bash
# Sourced helper: find a Python >= 3.12 and export it as PANDAFLOW_PY.
#
#   source scripts/python.sh            # sets PANDAFLOW_PY or returns 1
#   bash scripts/python.sh              # prints the chosen interpreter
#
# Search order:
#   1. $PANDAFLOW_PYTHON (if set it must work; no fallback)
#   2. python3.12, python3, python3.13 on PATH -- only if they actually run
#      and report >= 3.12 (pyenv shims are on PATH but fail unless
#      PYENV_VERSION selects a matching version, so they are *run*, not trusted)
#   3. pyenv installs: $(pyenv root), $PYENV_ROOT, $HOME/.pyenv
#      versions/3.12* first, then newer ones
#
# This file is sourced into `set -euo pipefail` scripts: it must not exit and
# must not trip `set -e`/`set -u`; it only defines functions/variables.

_pf_py_ok() {
    # Runs the candidate: it must be >= 3.12 and have what a venv + pip needs.
    [ -n "${1:-}" ] || return 1
    "$1" -c 'import sys; assert sys.version_info >= (3, 12); import venv, ensurepip, ssl, sqlite3' \
        >/dev/null 2>&1
}

_pf_py_abs() {
    # Resolve a command name to an absolute interpreter path (sys.executable),
    # so that a pyenv shim is replaced by the real binary behind it.
    "$1" -c 'import sys; print(sys.executable)' 2>/dev/null
}

pandaflow_find_python() {
    local cand root v bin
    local -a roots=()

    if [ -n "${PANDAFLOW_PYTHON:-}" ]; then
        if _pf_py_ok "$PANDAFLOW_PYTHON"; then
            PANDAFLOW_PY="$(_pf_py_abs "$PANDAFLOW_PYTHON")"
            export PANDAFLOW_PY
            return 0
        fi
        echo "error: PANDAFLOW_PYTHON=$PANDAFLOW_PYTHON does not run as Python >= 3.12" \
             "(with venv, ensurepip, ssl, sqlite3)" >&2
        return 1
    fi

    for cand in python3.12 python3 python3.13; do
        if command -v "$cand" >/dev/null 2>&1 && _pf_py_ok "$cand"; then
            PANDAFLOW_PY="$(_pf_py_abs "$cand")"
            export PANDAFLOW_PY
            return 0
        fi
    done

    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root 2>/dev/null || true)"
        [ -n "$root" ] && roots+=("$root")
    fi
    [ -n "${PYENV_ROOT:-}" ] && roots+=("$PYENV_ROOT")
    [ -n "${HOME:-}" ] && roots+=("$HOME/.pyenv")

    for root in "${roots[@]}"; do
        [ -d "$root/versions" ] || continue
        # 3.12 first (the Rubin lsst-* wheels target it), then newer; skip what does not run
        while IFS= read -r v; do
            [ -n "$v" ] || continue
            for bin in "$v/bin/python3" "$v"/bin/python3.1[2-9]; do
                if [ -x "$bin" ] && _pf_py_ok "$bin"; then
                    PANDAFLOW_PY="$bin"
                    export PANDAFLOW_PY
                    return 0
                fi
            done
        done < <(find "$root/versions" -mindepth 1 -maxdepth 1 -name '3.12*' 2>/dev/null | sort -rV
                 find "$root/versions" -mindepth 1 -maxdepth 1 -name '3.1[3-9]*' 2>/dev/null | sort -V)
    done

    cat >&2 <<'EOF'
error: no Python >= 3.12 found (checked $PANDAFLOW_PYTHON, python3.13/python3.12/python3
       on PATH, and pyenv versions). Install one, e.g.:
         apt-get install python3.12 python3.12-venv     (Debian 13 / Ubuntu 24.04)
         pyenv install 3.12 && pyenv global 3.12        (https://github.com/pyenv/pyenv)
       or point PANDAFLOW_PYTHON at an existing interpreter:
         PANDAFLOW_PYTHON=/path/to/python3.12 ./scripts/test.sh
EOF
    return 1
}

# When executed rather than sourced: print the interpreter (or fail).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    pandaflow_find_python
    echo "$PANDAFLOW_PY"
    "$PANDAFLOW_PY" --version
fi
