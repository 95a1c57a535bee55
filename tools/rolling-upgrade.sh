#!/bin/bash
# A rolling upgrade on a live fleet. The previous release (PREVIOUS_LINEQ_BINARY) migrates a new
# database and runs an orchestrator and a worker under load; this release (NEW_LINEQ_BINARY)
# migrates the database under them, then adds its own orchestrator and worker, so all four work
# the same queue. It prints how long the migration took, the longest pause between finished
# executions, who ran the steps, and lineage checks of 30 random trees; everything must complete.
# DATABASE_URL: a role that may create databases (the database lineq_rolling_upgrade is made anew).
set -u
PREV=${1:?usage: tools/rolling-upgrade.sh PREVIOUS_LINEQ_BINARY NEW_LINEQ_BINARY}
NEW=${2:?usage: tools/rolling-upgrade.sh PREVIOUS_LINEQ_BINARY NEW_LINEQ_BINARY}
ADMIN=${DATABASE_URL:?set DATABASE_URL to a role that may create databases}
DB=lineq_rolling_upgrade
U="${ADMIN%/*}/$DB"
psql -X $ADMIN -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" 2>/dev/null
$PREV --database-url $U migrate | tail -1
L=$(mktemp -d)
echo "logs in $L"
$PREV --database-url $U orchestrator > $L/prev-orch.log 2>&1 & P1=$!
$PREV --database-url $U worker --worker-id prev-w > $L/prev-worker.log 2>&1 & P2=$!
sleep 2
# The load: 20 executions every 50 ms, submitted through the SQL interface.
( while [ ! -f $L/stop ]; do
    psql -X $U -qAtc "SELECT count(*) FROM lineq.submit_many((SELECT jsonb_agg(jsonb_build_object('target','echo','input',jsonb_build_object('n',g))) FROM generate_series(1,20) g))" >/dev/null
    sleep 0.05
  done ) & LOAD=$!
sleep 8
echo "migrate starts $(date +%T.%N)"
/usr/bin/time -f "migrate took %e s" $NEW --database-url $U migrate 2>&1 | tail -2
echo "migrate ended $(date +%T.%N)"
$NEW --database-url $U orchestrator > $L/new-orch.log 2>&1 & P3=$!
$NEW --database-url $U worker --worker-id new-w > $L/new-worker.log 2>&1 & P4=$!
sleep 12
touch $L/stop; wait $LOAD
for i in $(seq 1 60); do
  left=$(psql -X $U -qAtc "SELECT count(*) FROM lineq.executions WHERE status NOT IN ('completed')")
  [ "$left" = 0 ] && break; sleep 1
done
psql -X $U -c "SELECT status, count(*) FROM lineq.executions GROUP BY 1" -c "SELECT worker_id, count(*) AS steps_run FROM lineq.events WHERE event_type = 'action_completed' GROUP BY 1 ORDER BY 1" -c "SELECT worker_id, language, version FROM lineq.workers ORDER BY 1"
# the longest pause in finishing executions while the migration ran (100 ms buckets)
psql -X $U -c "WITH f AS (SELECT finished_at FROM lineq.executions ORDER BY finished_at), g AS (SELECT finished_at - lag(finished_at) OVER (ORDER BY finished_at) AS gap, finished_at FROM f) SELECT max(gap) AS longest_gap_between_finishes, (SELECT finished_at FROM g ORDER BY gap DESC NULLS LAST LIMIT 1) AS at FROM g"
bad=0
for r in $(psql -X $U -qAtc "SELECT execution_id FROM lineq.executions ORDER BY random() LIMIT 30"); do
  $NEW --database-url $U lineage check $r >/dev/null 2>&1 || bad=$((bad+1))
done
echo "lineage check failures in 30 random trees: $bad"
kill -TERM $P1 $P2 $P3 $P4; wait
echo "log lines with ERROR or panic:"
grep -ciE "error|panic" "$L"/*.log
[ "$left" = 0 ] && [ "$bad" = 0 ]
