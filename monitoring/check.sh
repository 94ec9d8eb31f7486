#!/usr/bin/env bash
# Validate the monitoring stack offline; CI runs this. Runs every check (so one run
# shows every problem) and exits non-zero if any failed.
#
#   monitoring/check.sh
#
# Needs promtool (Debian: apt-get install prometheus) and docker compose v2 or
# docker-compose v1 (apt-get install docker-compose); no Docker engine is needed.
# Optional: python3 for the dashboard lint (monitoring/check_dashboard.py).
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

failed=0
run() {
  echo "==> $*"
  if ! "$@"; then
    echo "FAILED: $*" >&2
    failed=1
  fi
}

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found (apt-get install prometheus, or a Prometheus release tarball)" >&2
  exit 2
fi

run promtool check config monitoring/prometheus/prometheus.yml
run promtool check rules monitoring/prometheus/rules/*.yml
run promtool test rules monitoring/prometheus/tests/*.yml

# Every recording rule and every alert must appear in the unit tests.
untested() {
  local name status=0
  for name in $(sed -n 's/^ *- record: *//p' monitoring/prometheus/rules/*.yml | sort -u); do
    grep -qF "$name" monitoring/prometheus/tests/*.yml || { echo "recording rule without a test: $name"; status=1; }
  done
  for name in $(sed -n 's/^ *- alert: *//p' monitoring/prometheus/rules/*.yml | sort -u); do
    grep -qE "alertname: *$name\$" monitoring/prometheus/tests/*.yml || { echo "alert without a test: $name"; status=1; }
  done
  return $status
}
run untested

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "neither 'docker compose' nor 'docker-compose' found (apt-get install docker-compose)" >&2
  exit 2
fi
run "${compose[@]}" -f compose.yaml config -q
run "${compose[@]}" -f monitoring/docker-compose.monitoring.yml config -q

if command -v python3 >/dev/null 2>&1; then
  run python3 monitoring/check_dashboard.py
else
  echo "python3 not found: skipping the dashboard lint" >&2
fi

if [ "$failed" -ne 0 ]; then
  echo "monitoring checks FAILED" >&2
  exit 1
fi
echo "monitoring checks passed"
