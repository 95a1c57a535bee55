#!/bin/sh
# Fills a migrated lineq database that holds one real execution (an `echo` task tagged
# customer=acme, run by a real worker and orchestrator) with 1,000,000 copies of it, in batches
# of 100,000 (fill.sql), then VACUUM ANALYZE. docs/benchmarks.md, "Console at 1,000,000
# executions".
# Usage: tools/console-bench/fill.sh postgres://USER:PASS@HOST:PORT/DB
set -e
dir=$(dirname "$0")
for b in 0 1 2 3 4 5 6 7 8 9; do
  lo=$((b * 100000 + 1)); hi=$(((b + 1) * 100000))
  psql -X -q "$1" -v lo=$lo -v hi=$hi -f "$dir/fill.sql"
  echo "batch $b done $(date -u +%T)"
done
psql -X -q "$1" -c 'VACUUM ANALYZE lineq.executions' -c 'VACUUM ANALYZE lineq.steps' -c 'VACUUM ANALYZE lineq.events'
