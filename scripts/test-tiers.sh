#!/usr/bin/env bash
# make test: every tier. First the end-to-end tier (this machine's engine and swarm) alone: its tests
# measure latencies and rates through Nginx that another tier's load would move, and its first
# `make up` builds the images the lab then copies. Then the lab tier (a swarm of engines of its own,
# scripts/lab.sh) beside the unit and integration tiers (no Docker). One after the other, the tiers
# took CI over an hour. The lab tier's output goes to a file, printed when it is done. Exits non-zero
# if any tier failed.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly PYTEST=${PYTEST:-.venv/bin/pytest}
LAB_PID=""
LAB_LOG=$(mktemp /tmp/wsapp-lab-tier.XXXXXX)

# An interrupted run stops the lab tier too (pytest removes its lab on SIGINT) and keeps its log.
stop_lab() {
  if [[ -n $LAB_PID ]] && kill -0 "$LAB_PID" 2>/dev/null; then
    kill -INT "$LAB_PID" 2>/dev/null || true
    wait "$LAB_PID" 2>/dev/null || true
    echo "lab tier stopped; its output: $LAB_LOG" >&2
  fi
}

main() {
  local status=0 lab_status=0
  trap stop_lab EXIT
  echo "==> $(date -u +%T) the end-to-end tier"
  "$PYTEST" --durations=25 tests/e2e || status=1
  echo "==> $(date -u +%T) the lab tier starts beside the unit and integration tiers; its output follows theirs"
  "$PYTEST" --durations=10 tests/lab >"$LAB_LOG" 2>&1 &
  LAB_PID=$!
  "$PYTEST" --durations=10 tests/unit tests/integration || status=1
  wait "$LAB_PID" || lab_status=1
  LAB_PID=""
  echo "==> $(date -u +%T) lab tier ($LAB_LOG)"
  cat "$LAB_LOG"
  rm -f "$LAB_LOG"
  ((lab_status == 0)) || status=1
  return "$status"
}

main "$@"
