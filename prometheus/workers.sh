#!/bin/sh
# Writes TEMPLATE to OUT with the chat job's metrics port repeated for every worker of a chat
# replica: ROOMHUB_WORKERS=N (default 1) scrapes 9100, 9101, ... 9100+N-1, worker i's port
# (ROOMHUB_METRICS_PORT + i), each as its own instance. docker-compose.yml runs it before
# Prometheus starts (Prometheus itself reads no environment variables).
#
#   ROOMHUB_WORKERS=4 sh prometheus/workers.sh prometheus/prometheus.yml /tmp/prometheus.yml
set -eu
template=$1
out=$2
workers=${ROOMHUB_WORKERS:-1}
case $workers in
  '' | *[!0-9]* | 0*)
    echo "ROOMHUB_WORKERS must be a whole number >= 1, got '$workers'" >&2
    exit 2
    ;;
esac
awk -v workers="$workers" '
  { print }
  /port: 9100,/ {
    for (i = 1; i < workers; i++) { line = $0; sub(/9100/, 9100 + i, line); print line }
  }
' "$template" > "$out"
