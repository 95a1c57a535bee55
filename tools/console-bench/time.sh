#!/bin/sh
# Times console pages against a `lineq serve` at BASE: one warm-up and 20 timed requests per URL
# (curl time_total), median and max. PARENT is an execution with a child. docs/benchmarks.md.
# Usage: tools/console-bench/time.sh http://127.0.0.1:18090 PARENT_ID
BASE=$1; P=$2
SINCE=$(date -u -d '-20 hours' +%Y-%m-%dT%H:%M:%SZ); UNTIL=$(date -u -d '-19 hours' +%Y-%m-%dT%H:%M:%SZ)
for path in \
  "/" \
  "/?status=failed" \
  "/?status=running" \
  "/?workflow=handler_7" \
  "/?workflow=no-such-handler" \
  "/?tag=customer%3Dc42" \
  "/?tag=region%3Deu" \
  "/?has_tag=vip" \
  "/?metadata=%7B%22order%22%3A%7B%22id%22%3A%22500000%22%7D%7D" \
  "/?parent=$P" \
  "/?root=$P" \
  "/?since=$SINCE&until=$UNTIL" \
  "/executions/$P" \
  "/fleet" ; do
  curl -s -o /dev/null "$BASE$path"
  times=$(for i in $(seq 1 20); do curl -s -o /dev/null -w '%{time_total}\n' "$BASE$path"; done | sort -n)
  code=$(curl -s -o /dev/null -w '%{http_code}' "$BASE$path")
  med=$(echo "$times" | sed -n 10p); max=$(echo "$times" | tail -1)
  printf '%-72s %s  median %6.1f ms  max %6.1f ms\n' "$path" "$code" "$(echo "$med*1000" | bc)" "$(echo "$max*1000" | bc)"
done
