#!/usr/bin/env bash
# The real server binary: started on an ephemeral loopback port, spoken to
# over bash's /dev/tcp (no HTTP client needed), stopped with SIGTERM while
# a request is in flight (the request must be answered in full and the
# process exit 0), then with SIGINT; a bad flag must exit 2.
set -euo pipefail
server="$1"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

# start <log> <args...>: runs the server in the background; sets pid, port.
start() {
  local log="$1"
  shift
  "$server" --port=0 "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1200); do  # Up to 120 s: sanitizer builds start slowly.
    if port="$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\) .*|\1|p' "$log")" &&
      [[ -n "$port" ]]; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "server died"; exit 1; }
    sleep 0.1
  done
  cat "$log"
  echo "server did not start"
  exit 1
}

# request <method> <path> [body]: one HTTP/1.1 exchange, response on stdout.
request() {
  local body="${3:-}"
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$1" "$2" "${#body}" "$body" >&3
  cat <&3
  exec 3>&-
}

expect() {  # expect <text> <response>
  grep -qF -- "$1" <<<"$2" || { echo "expected '$1' in:"; echo "$2"; exit 1; }
}

start "$tmp/server1.log" --workers=2 --hold_simulate_ms=1500
out="$(request GET /healthz)"
expect "HTTP/1.1 200 OK" "$out"
expect "ok" "$out"
out="$(request POST /aggregate '[1, 2, {"key": "k", "value": 3}]')"
expect "HTTP/1.1 200 OK" "$out"
expect '"count":3' "$out"
expect '"sum":6' "$out"
out="$(request POST /aggregate '[1, 2')"
expect "HTTP/1.1 400" "$out"
out="$(request GET /nothing)"
expect "HTTP/1.1 404" "$out"

# A request in flight when SIGTERM arrives: /simulate is held 1.5 s in
# its handler. Wait until /stats shows it running, then signal.
request GET "/simulate?particles=300&steps=3" >"$tmp/in_flight.txt" &
client=$!
for _ in $(seq 1 1000); do
  stats="$(request GET /stats)"
  grep -qF '"in_flight":2' <<<"$stats" && break  # /stats and /simulate.
  sleep 0.01
done
expect '"in_flight":2' "$stats"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
wait "$client"
cat "$tmp/server1.log"
[[ "$rc" == 0 ]] || { echo "server exited with $rc after SIGTERM"; exit 1; }
expect "HTTP/1.1 200 OK" "$(cat "$tmp/in_flight.txt")"
expect '"particles":300' "$(cat "$tmp/in_flight.txt")"
expect "signal 15: stopping" "$(cat "$tmp/server1.log")"
expect " 2 4xx, 0 5xx, 0 over budget)" "$(cat "$tmp/server1.log")"

# SIGINT, on the httplib pool.
start "$tmp/server2.log" --pool=httplib --workers=2
expect "HTTP/1.1 200 OK" "$(request GET /healthz)"
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[[ "$rc" == 0 ]] || { cat "$tmp/server2.log"; echo "exit $rc after SIGINT"; exit 1; }
expect "signal 2: stopping" "$(cat "$tmp/server2.log")"

# A bad flag: exit 2 with the reason.
rc=0
"$server" --pool=threads >"$tmp/bad.log" 2>&1 || rc=$?
[[ "$rc" == 2 ]] || { cat "$tmp/bad.log"; echo "expected exit 2, got $rc"; exit 1; }
expect "pool must be 'runtime' or 'httplib'" "$(cat "$tmp/bad.log")"
echo PASS
