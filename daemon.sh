#!/usr/bin/env bash
# Run reranker-serve in the background.
#
#   ./daemon.sh start     start (set up first if needed); waits until /ready, or fails with the log tail
#   ./daemon.sh stop      SIGTERM, wait for in-flight requests to drain, SIGKILL after a timeout
#   ./daemon.sh restart   stop, then start
#   ./daemon.sh status    exit 0 only if the process is alive and /health answers
#   ./daemon.sh logs      follow the log
#
# Variables: RERANKER_PIDFILE (run/reranker-serve.pid), RERANKER_LOGFILE (run/reranker-serve.log),
# RERANKER_START_TIMEOUT (600 s: a first start may download the model), RERANKER_STOP_TIMEOUT (40 s),
# and every RERANKER_* setting (or .env) for the server itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

[ -f .env ] && { set -a; . ./.env; set +a; }
PIDFILE=${RERANKER_PIDFILE:-run/reranker-serve.pid}
LOGFILE=${RERANKER_LOGFILE:-run/reranker-serve.log}
START_TIMEOUT=${RERANKER_START_TIMEOUT:-600}
STOP_TIMEOUT=${RERANKER_STOP_TIMEOUT:-40}
HOST=${RERANKER_HOST:-127.0.0.1}
[ "$HOST" = "0.0.0.0" ] && HOST=127.0.0.1
URL="http://$HOST:${RERANKER_PORT:-8000}"

say() { printf 'reranker-serve: %s\n' "$*"; }
pid() { [ -f "$PIDFILE" ] && cat "$PIDFILE" 2>/dev/null || true; }
alive() { local p; p=$(pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
probe() { .venv/bin/python - "$URL$1" <<'PY'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=3).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

start() {
  if alive; then say "already running (pid $(pid))"; return 0; fi
  [ -f "$PIDFILE" ] && { say "removing stale pidfile $PIDFILE"; rm -f "$PIDFILE"; }
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOGFILE")"
  [ -x .venv/bin/python ] || ./setup.sh >>"$LOGFILE" 2>&1
  nohup setsid .venv/bin/python -m reranker_serve >>"$LOGFILE" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  say "started (pid $!), waiting for $URL/ready"
  local waited=0
  while [ "$waited" -lt "$START_TIMEOUT" ]; do
    if ! alive; then
      say "exited during start-up; last log lines:"; tail -n 20 "$LOGFILE" >&2; rm -f "$PIDFILE"; return 1
    fi
    if probe /ready; then say "ready at $URL"; return 0; fi
    sleep 1; waited=$((waited + 1))
  done
  say "not ready after ${START_TIMEOUT}s; last log lines:"; tail -n 20 "$LOGFILE" >&2; return 1
}

stop() {
  if ! alive; then rm -f "$PIDFILE"; say "not running"; return 0; fi
  local p; p=$(pid)
  kill -TERM "$p"
  say "stopping (pid $p), draining in-flight requests"
  local waited=0
  while kill -0 "$p" 2>/dev/null && [ "$waited" -lt "$((STOP_TIMEOUT * 10))" ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$p" 2>/dev/null; then say "still running after ${STOP_TIMEOUT}s: SIGKILL"; kill -KILL "$p"; fi
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  if ! alive; then say "not running"; return 3; fi
  if probe /health; then say "running (pid $(pid)) at $URL"; return 0; fi
  say "process $(pid) is alive but $URL/health does not answer"; return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  logs) touch "$LOGFILE"; exec tail -n 100 -F "$LOGFILE" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
