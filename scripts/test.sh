#!/usr/bin/env bash
# Install everything (system packages, PostgreSQL, the venv) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
CLOUDFS_TEST_PG="$(scripts/postgres.sh | tail -1)"
export CLOUDFS_TEST_PG
# Three workers: the suite mostly waits on mounts, servers and the network, not on the CPU.
# A test file stays on one worker, so its module-scoped server is started once.
exec .venv/bin/python -m pytest -n 3 --dist loadfile "$@"
