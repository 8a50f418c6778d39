#!/usr/bin/env bash
# Installs the service in .venv and runs it on the embedded defaults (or on whatever .env / the environment sets).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/python -m server "$@"
