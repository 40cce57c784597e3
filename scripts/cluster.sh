#!/usr/bin/env bash
# A cloudfs cluster on this machine, each part a real process on 127.0.0.1:
# PostgreSQL (scripts/postgres.sh), the S3 stand-in (moto server), N `cloudfs server`
# replicas on one database and one bucket, and HAProxy in front.
#   scripts/cluster.sh up [N]   N replicas (default 3); the balancer's URL is the last line
#   scripts/cluster.sh down     stops everything `up` started and drops its database
# State and logs: $CLOUDFS_CLUSTER_DIR (default /tmp/cloudfs-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    up)
        scripts/setup.sh --cluster >&2
        pg="$(scripts/postgres.sh | tail -1)"
        exec .venv/bin/python scripts/cluster.py up "${2:-3}" --pg "$pg" ;;
    down)
        exec .venv/bin/python scripts/cluster.py down ;;
    *)
        echo "usage: scripts/cluster.sh up [N] | down" >&2
        exit 2 ;;
esac
