#!/usr/bin/env bash
# Install what is needed and run cloudfs's main job on this machine: an embedded
# server (SQLite + a local chunk directory) with one user, and the drive mounted.
#   CLOUDFS_DATA    server data directory   (default: ~/.local/share/cloudfs)
#   CLOUDFS_PORT    port                    (default: 8470)
#   CLOUDFS_MOUNT   where the drive appears (default: ~/cloudfs)
# Ctrl-C (or SIGTERM) uploads what is pending, unmounts and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
data="${CLOUDFS_DATA:-$HOME/.local/share/cloudfs}"
port="${CLOUDFS_PORT:-8470}"
mnt="${CLOUDFS_MOUNT:-$HOME/cloudfs}"
url="http://127.0.0.1:$port"
mkdir -p "$data" "$mnt"
if [[ ! -s "$data/token" ]]; then
    (umask 077; .venv/bin/cloudfs user add "${USER:-me}" --data "$data" | tail -1 > "$data/token")
    echo "run.sh: created user ${USER:-me}; token saved in $data/token"
fi

.venv/bin/cloudfs server --data "$data" --port "$port" &
server=$!
stop() {
    trap - INT TERM EXIT
    .venv/bin/cloudfs umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || true
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap stop INT TERM EXIT
for _ in $(seq 1 100); do
    curl -fsS "$url/health" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { echo "run.sh: the server did not start" >&2; exit 1; }
    sleep 0.1
done
CLOUDFS_TOKEN="$(cat "$data/token")" .venv/bin/cloudfs mount "$url" "$mnt"
echo "run.sh: the drive is mounted on $mnt (server $url); Ctrl-C unmounts and stops"
wait "$server"
