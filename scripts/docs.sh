#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml) with warnings as errors.
#
#   scripts/docs.sh [DIR]    build into DIR (default: a new temporary directory); prints where
#
# Uses the project's virtual environment (.venv, made by scripts/setup.sh; `pip install -e
# '.[docs]'` is enough) or $PY. The reference pages are generated from the code during the build
# (docs/hooks/reference.py, mkdocstrings, mkdocs-click): a broken link, an unknown anchor, a
# docstring griffe cannot parse or a page missing from the nav fails the build. Building again
# into the same DIR replaces what was there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "docs: no Python at $PY: run scripts/setup.sh (or set PY=/path/to/python with pandaflow[docs])" >&2
    exit 2
fi
if ! "$PY" -c "import mkdocs, material, mkdocstrings_handlers.python, mkdocs_click" 2>/dev/null; then
    echo "docs: $PY lacks the documentation tools: pip install -e '$REPO[docs]'" >&2
    exit 2
fi

if [ $# -gt 1 ]; then
    echo "usage: $0 [DIR]" >&2
    exit 2
fi
if [ $# -eq 1 ]; then
    mkdir -p "$1"
    SITE="$(cd "$1" && pwd)"
else
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/pandaflow-site.XXXXXX")"
fi
case "$SITE" in
    "$REPO" | "$REPO/docs" | "$REPO/docs/"* | /)
        echo "docs: refusing to build into $SITE (the build empties it first)" >&2
        exit 2 ;;
esac

cd "$REPO"
start=$(date +%s)
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --clean --config-file "$REPO/mkdocs.yml" --site-dir "$SITE"
# The site must work offline (sites behind firewalls): no page may load a script or a stylesheet
# from elsewhere (a CDN).
remote="$(grep -rlE '<script[^>]+src="(https?:)?//|<link[^>]+href="(https?:)?//[^"]+\.css' "$SITE" --include='*.html' || true)"
if [ -n "$remote" ]; then
    echo "docs: these pages load scripts or stylesheets from other sites (the site must work offline):" >&2
    echo "$remote" >&2
    exit 1
fi
echo "docs: site built in $(( $(date +%s) - start )) s: $SITE/index.html"
