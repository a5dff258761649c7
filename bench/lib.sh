# What the benchmark scripts share: sourced by run.sh and watchdog.sh
# (which set WORK, CONNS and DURATION).

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fs -o /dev/null -X POST -d x "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
# Prints "req/s p50 p99 [errors]" for POSTs of a small body with wrk.
load() {
  cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "hello"
LUA
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$1" > "$WORK/wrk.txt"
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$WORK/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$WORK/wrk.txt")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$WORK/wrk.txt" | tr '\n' ' ')
  echo "$rps $p50 $p99 $errors"
}
ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
