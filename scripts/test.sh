#!/usr/bin/env bash
# Installs everything the tests need (Python deps in .venv, Azurite from npm in .tools/) and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
    mkdir -p .tools
    npm install --prefix .tools --no-save --no-audit --no-fund --loglevel=error azurite@3.35.0
fi
exec .venv/bin/python -m pytest "$@"
