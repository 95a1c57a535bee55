#!/usr/bin/env bash
# The worker protocol's two statements measured alone: on a fresh database migrated by the given
# lineq build, 10,000 one-step executions are submitted, then `pgbench -c 1 -r` runs 300 turns of
# a claim of 32 (`lineq.worker_claim`) and its report (`lineq.worker_report`) and prints each
# statement's average latency. Alternate two builds to compare their SQL:
#
#   DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres \
#     tools/claim_report.sh /path/to/lineq-A /path/to/lineq-B [A B B A]
set -euo pipefail

a_bin=${1:?lineq build A}
b_bin=${2:?lineq build B}
shift 2
order=("$@")
[[ ${#order[@]} -gt 0 ]] || order=(A B B A)
admin=${DATABASE_URL:?DATABASE_URL: an admin connection to a local server}
base=${admin%/*}
work=$(mktemp -d /tmp/lineq-claim-report-XXXXXX)

printf '%-4s %-3s %14s %14s %10s\n' run bin 'claim of 32' 'its report' reported
i=0
for which in "${order[@]}"; do
    i=$((i + 1))
    case $which in A) bin=$a_bin ;; B) bin=$b_bin ;; *) echo "order: A or B, not $which" >&2; exit 2 ;; esac
    db=lineq_claim_report_$i
    psql -X "$admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
    url="$base/$db"
    "$bin" --database-url "$url" migrate >/dev/null 2>&1
    token=$(psql -X "$url" -Atq <<'SQL'
SELECT count(*) FROM generate_series(1, 20) i, LATERAL (
    SELECT * FROM lineq.submit_many((SELECT jsonb_agg(jsonb_build_object(
        'target', 'echo', 'input', jsonb_build_object('i', g, 'batch', i)))
        FROM generate_series(1, 500) g))) s \g /dev/null
SELECT lineq.worker_register('bench-1', ARRAY['default'], ARRAY['echo'], 'bench', 1, 'bench');
SQL
)
    # The token is hex; pgbench substitutes :outs into the report's literal.
    cat >"$work/turn.sql" <<SQL
SELECT coalesce(jsonb_agg(jsonb_build_object('msg_id', msg_id, 'delivery', delivery, 'started_event_id', started_event_id, 'outcome', 'completed')), '[]')::text AS outs FROM lineq.worker_claim('bench-1', '$token', 'default', 32, 300, 5, '{echo}') \\gset
SELECT count(*) FROM lineq.worker_report('bench-1', '$token', 'default', ':outs'::jsonb);
SQL
    psql -X "$url" -qc CHECKPOINT
    pgbench -n -r -c 1 -t 300 -f "$work/turn.sql" "$url" >"$work/pgbench-$i.txt" 2>/dev/null
    # The two statement latencies, in file order: the claim's, then the report's.
    mapfile -t ms < <(awk '/statement latencies/ {on = 1; next} on && NF > 2 {print $1}' "$work/pgbench-$i.txt")
    reported=$(psql -X "$url" -Atc "SELECT count(*) FROM lineq.events WHERE event_type = 'step_result'")
    psql -X "$admin" -qc "DROP DATABASE IF EXISTS $db" 2>/dev/null
    printf '%-4s %-3s %11s ms %11s ms %10s\n' "$i" "$which" "${ms[0]}" "${ms[1]}" "$reported"
done
