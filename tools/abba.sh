#!/usr/bin/env bash
# Compares two lineq builds with `lineq bench`, alternating them (A B B A A B by default) on a
# fresh database per run, on a PostgreSQL server running on this machine.
#
#   DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres \
#     tools/abba.sh /path/to/lineq-A /path/to/lineq-B [A B B A A B]
#
# Besides the bench's own figures it measures the CPU time of the server processes working for
# the run's database (backends and autovacuum workers, found by their process titles under the
# postmaster, sampled every 0.2 s from /proc). Other work on the machine does not enter it, so it
# compares builds on a busy machine where throughput cannot. It covers the whole bench run (raw
# PGMQ, both lineq rows, the latency samples and the lineage check), the same work for both
# builds: the difference between two builds, divided by the executions of the lineq rows
# (2 × ABBA_EXECUTIONS), is what one execution costs the server more or less.
set -euo pipefail

a_bin=${1:?lineq build A}
b_bin=${2:?lineq build B}
shift 2
order=("$@")
[[ ${#order[@]} -gt 0 ]] || order=(A B B A A B)
admin=${DATABASE_URL:?DATABASE_URL: an admin connection to a local server}
executions=${ABBA_EXECUTIONS:-20000}
out=${ABBA_OUT:-$(mktemp -d /tmp/lineq-abba-XXXXXX)}
mkdir -p "$out"

# The postmaster's pid: the first line of its postmaster.pid (read as a superuser).
postmaster=$(psql -X "$admin" -Atc "SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1)")
[[ -r /proc/$postmaster/stat ]] || { echo "the server is not on this machine" >&2; exit 2; }

# Prints the CPU seconds the server's processes for database $2 used until file $3 appears.
sampler() {
    python3 - "$@" <<'PY'
import os, sys, time
postmaster, db, stop = sys.argv[1], sys.argv[2], sys.argv[3]
clk = os.sysconf("SC_CLK_TCK")
# No process works for the database before the run: every one seen is counted from its start.
last = {}
while True:
    done = os.path.exists(stop)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[1] != postmaster:
                continue
            title = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
        except OSError:
            continue
        if f" {db} " not in title + " ":
            continue
        ticks = int(fields[11]) + int(fields[12])
        last[pid] = ticks
    if done:
        break
    time.sleep(0.2)
print(sum(last.values()) / clk)
PY
}

base=${admin%/*}
printf '%-4s %-3s %10s %14s %12s %10s %11s %11s\n' run bin 'execs/s' 'server CPU s' 'lineq CPU s' 'WAL B/ex' 'pickup p50' '4-step p50'
i=0
for which in "${order[@]}"; do
    i=$((i + 1))
    case $which in A) bin=$a_bin ;; B) bin=$b_bin ;; *) echo "order: A or B, not $which" >&2; exit 2 ;; esac
    db=lineq_abba_$i
    psql -X "$admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
    url="$base/$db"
    "$bin" --database-url "$url" migrate >/dev/null 2>&1
    # Only the plain row is compared: a build whose bench has other rows skips them, so both
    # builds' plain rows run on a database with the same history behind them.
    extra=()
    "$bin" bench --help | grep -q -- --no-keyed-row && extra+=(--no-keyed-row)
    rm -f "$out/stop-$i"
    sampler "$postmaster" "$db" "$out/stop-$i" >"$out/server-$i" &
    sampling=$!
    /usr/bin/time -f '%U %S' -o "$out/time-$i" \
        "$bin" --database-url "$url" bench --executions "$executions" --no-tracing-row --no-floor-row "${extra[@]}" \
        --latency-samples 200 --no-progress --format json >"$out/bench-$i.json" 2>"$out/bench-$i.err"
    touch "$out/stop-$i"
    wait "$sampling"
    psql -X "$admin" -qc "DROP DATABASE IF EXISTS $db" 2>/dev/null
    python3 - "$out/bench-$i.json" "$out/time-$i" "$i" "$which" "$out/server-$i" <<'PY'
import json, sys
path, timef, i, which, serverf = sys.argv[1:]
d = json.load(open(path))
row = d["throughput"][0]
user, system = (float(x) for x in open(timef).read().split()[-2:])
server = float(open(serverf).read())
print(f"{i:<4} {which:<3} {row['per_second']:10.0f} {server:14.1f} {user + system:12.1f} "
      f"{row['cost_per_execution']['wal_bytes']:10.0f} {d['pickup_latency_ms']['p50']:9.2f}ms "
      f"{d['workflow_latency_ms']['p50']:9.1f}ms")
PY
done
echo "(outputs in $out)"
