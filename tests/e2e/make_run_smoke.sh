#!/usr/bin/env bash
# `make run` with neither DATABASE_URL nor NATS_URL: embedded PostgreSQL and NATS start, all
# four services answer /readyz with 200, then SIGINT stops everything and nothing is left.
set -uo pipefail
cd "$(dirname "$0")/../.."
unset DATABASE_URL NATS_URL
log=$(mktemp)
setsid make run >"$log" 2>&1 &
pid=$!
cleanup() { kill -INT -- -"$pid" 2>/dev/null; sleep 5; kill -KILL -- -"$pid" 2>/dev/null; }
trap cleanup EXIT

ok=0
for _ in $(seq 1 240); do
  ok=1
  for port in 8001 8002 8003 8004; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)
    [ "$code" = "200" ] || ok=0
  done
  [ "$ok" = 1 ] && break
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 1
done
if [ "$ok" != 1 ]; then
  echo "FAIL: not all services became ready"; cat "$log"; exit 1
fi
echo "all four services ready on the embedded defaults"
# The runner prints its URLs once it has polled every service ready itself (every 0.2 s), which
# can come a moment after the curls above saw them ready: wait for it rather than race it.
printed=0
for _ in $(seq 1 60); do
  if grep -q "Billing ledger is running" "$log"; then printed=1; break; fi
  sleep 0.5
done
[ "$printed" = 1 ] || { echo "FAIL: URLs not printed within 30 s of the services being ready"; cat "$log"; exit 1; }

kill -INT -- -"$pid"
for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$pid" 2>/dev/null; then echo "FAIL: make run did not stop within 60 s"; cat "$log"; exit 1; fi
wait "$pid"; code=$?
trap - EXIT
leftover=$(pgrep -f "$(pwd)/.run/(nats|pgdata)" || true)
if [ -n "$leftover" ]; then echo "FAIL: processes left running: $leftover"; exit 1; fi
for port in 8001 8002 8003 8004; do
  if curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; then echo "FAIL: port $port still served"; exit 1; fi
done
tail -5 "$log"
echo "make run stopped cleanly (exit $code)"
# 1 passed, 0 failed
[ "$code" = 0 ] || [ "$code" = 130 ] || [ "$code" = 2 ]
