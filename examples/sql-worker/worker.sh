#!/usr/bin/env bash
# A lineq worker with no lineq code: bash over psql, speaking the SQL interface
# (docs/sql-api.md). It serves handler `shout` of one namespace: the step's text in upper case.
#
#   worker.sh DATABASE_URL [WORKER_ID] [NAMESPACE]
#
# The text is the input's "text" field (a task's input) or its "input"."text" field (a workflow
# step's). An input with "sleep": N makes the handler take N seconds first. Messages stay hidden
# for VT_SECS (default 30) and are extended while the handler runs; SIGTERM stops after the
# running step.
set -euo pipefail

url=${1:?usage: worker.sh DATABASE_URL [WORKER_ID] [NAMESPACE]}
worker_id=${2:-"sql-worker-$(hostname)-$$"}
namespace=${3:-default}
vt_secs=${VT_SECS:-30}

# Values reach SQL only as psql variables (:'name' quotes them as literals), never spliced in.
sql() {
    psql -X -q -At -v ON_ERROR_STOP=1 -F $'\t' "$url" \
        -v worker_id="$worker_id" -v namespace="$namespace" -v vt="$vt_secs" \
        -v token="${token:-}" "$@"
}

token=$(sql <<'SQL'
SELECT lineq.worker_register(:'worker_id', ARRAY[:'namespace'], '{shout}', :'worker_id',
                             pg_backend_pid(), '1', 'bash');
SQL
)
stopping=0
trap 'stopping=1' TERM INT
echo "worker $worker_id serving shout in $namespace" >&2

while [[ $stopping == 0 ]]; do
    row=$(sql <<'SQL'
SELECT msg_id, delivery, started_event_id,
       coalesce(m -> 'input' -> 'input' ->> 'text', m -> 'input' ->> 'text', ''),
       coalesce(m -> 'input' -> 'input' ->> 'sleep', m -> 'input' ->> 'sleep', '0')
FROM lineq.worker_claim(:'worker_id', :'token', :'namespace', 1, :vt, 5, '{shout}'),
     LATERAL (SELECT message::jsonb AS m) AS body;
SQL
    )
    if [[ -z $row ]]; then
        sql <<'SQL' >/dev/null
SELECT lineq.worker_heartbeat(:'worker_id', :'token');
SQL
        sleep 0.2
        continue
    fi
    IFS=$'\t' read -r msg_id delivery started text nap <<<"$row"
    echo "claimed message $msg_id (delivery $delivery)" >&2
    # The handler, with the message kept hidden while it runs.
    slept=0
    while (( slept < nap )); do
        sleep 1
        slept=$((slept + 1))
        sql -v msg_id="$msg_id" <<'SQL' >/dev/null
SELECT lineq.worker_extend(:'worker_id', :'token', :'namespace', ARRAY[:msg_id]::bigint[], :vt);
SELECT lineq.worker_heartbeat(:'worker_id', :'token');
SQL
    done
    shout=$(tr '[:lower:]' '[:upper:]' <<<"$text")
    sql -v msg_id="$msg_id" -v delivery="$delivery" -v started="$started" -v shout="$shout" <<'SQL' >/dev/null
SELECT * FROM lineq.worker_report(:'worker_id', :'token', :'namespace', jsonb_build_array(
    jsonb_build_object('msg_id', :msg_id, 'delivery', :delivery, 'started_event_id', :'started',
                       'outcome', 'completed', 'output', jsonb_build_object('shout', :'shout'))));
SQL
    echo "reported message $msg_id" >&2
done
sql <<'SQL' >/dev/null
SELECT lineq.worker_stop(:'worker_id', :'token');
SQL
echo "worker $worker_id stopped" >&2
