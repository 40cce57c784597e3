#!/usr/bin/env bash
# Start the Debian PostgreSQL cluster and make sure the test role exists.
# Prints the URL the tests use (CLOUDFS_TEST_PG) on its last line.
set -euo pipefail
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$ver main$"; then
    pg_createcluster "$ver" main >/dev/null
fi
if ! pg_lsclusters -h | grep -q "^$ver *main .* online"; then
    pg_ctlcluster "$ver" main start
fi
for _ in $(seq 1 50); do
    su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
    sleep 0.2
done
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='cloudfs'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"create role cloudfs login createdb password 'cloudfs'\""
port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
echo "postgresql://cloudfs:cloudfs@127.0.0.1:$port/postgres"
