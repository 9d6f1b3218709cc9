#!/usr/bin/env bash
# THE main-job command (README): ./scripts/demo.sh [demo args]
# Builds/refreshes .venv (scripts/setup.sh), then runs the demo parsl workflow
# on the embedded pandaflow server: python -m pandaflow.demo "$@".
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

"$REPO/scripts/setup.sh"

export VIRTUAL_ENV="$REPO/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"   # parsl launches helper scripts by name
exec "$VIRTUAL_ENV/bin/python" -m pandaflow.demo "$@"
