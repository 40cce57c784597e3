#!/usr/bin/env bash
# Install everything (system packages, PostgreSQL, the venv) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
CLOUDFS_TEST_PG="$(scripts/postgres.sh | tail -1)"
export CLOUDFS_TEST_PG
exec .venv/bin/python -m pytest "$@"
