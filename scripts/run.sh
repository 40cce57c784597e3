#!/usr/bin/env bash
# Install what is needed and run cloudfs's main job on this machine: an embedded
# server (SQLite + a local chunk directory) with one user.
#   CLOUDFS_DATA   server data directory   (default: ~/.local/share/cloudfs)
#   CLOUDFS_PORT   port                    (default: 8470)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
data="${CLOUDFS_DATA:-$HOME/.local/share/cloudfs}"
port="${CLOUDFS_PORT:-8470}"
mkdir -p "$data"
if [[ ! -s "$data/token" ]]; then
    (umask 077; .venv/bin/cloudfs user add "${USER:-me}" --data "$data" | tail -1 > "$data/token")
    echo "run.sh: created user ${USER:-me}; token saved in $data/token"
fi
echo "run.sh: serving on http://127.0.0.1:$port (Ctrl-C stops it)"
exec .venv/bin/cloudfs server --data "$data" --port "$port"
