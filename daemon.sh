#!/usr/bin/env bash
# Run reranker-serve in the background.
#
#   ./daemon.sh start     start (set up first if needed); waits until /ready, or fails with the log tail
#   ./daemon.sh stop      SIGTERM, wait for in-flight requests to drain, SIGKILL after a timeout
#   ./daemon.sh restart   stop, then start with the settings the running server was started with
#   ./daemon.sh status    exit 0 only if the process is alive and it is what answers /health
#   ./daemon.sh logs      follow the log
#
# Variables: RERANKER_PIDFILE (run/reranker-serve.pid), RERANKER_LOGFILE (run/reranker-serve.log),
# RERANKER_START_TIMEOUT (600 s: a first start may download the model), RERANKER_STOP_TIMEOUT (40 s),
# and every RERANKER_* setting (or .env, which the server reads itself) for the server.
# `start` records the RERANKER_* and HF_* variables it started with next to the pidfile (*.env);
# `restart` starts again with those, whatever the shell that runs it exports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# A variable from the environment, else from .env (the server's own precedence), else a default.
setting() {
  local value=${!1:-}
  if [ -z "$value" ] && [ -f .env ] && [ -x .venv/bin/python ]; then
    value=$(.venv/bin/python -c 'import sys; from dotenv import dotenv_values; print(dotenv_values(".env").get(sys.argv[1]) or "")' "$1" 2>/dev/null || true)
  fi
  printf '%s' "${value:-$2}"
}
PIDFILE=$(setting RERANKER_PIDFILE run/reranker-serve.pid)
LOGFILE=$(setting RERANKER_LOGFILE run/reranker-serve.log)
STATEFILE="${PIDFILE%.pid}.env"
START_TIMEOUT=$(setting RERANKER_START_TIMEOUT 600)
STOP_TIMEOUT=$(setting RERANKER_STOP_TIMEOUT 40)

say() { printf 'reranker-serve: %s\n' "$*"; }
pid() { [ -f "$PIDFILE" ] && cat "$PIDFILE" 2>/dev/null || true; }
alive() { local p; p=$(pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
# A variable as the running server was started with it (empty when it was not set then).
recorded() { [ -f "$STATEFILE" ] && ( . "$STATEFILE"; printf '%s' "${!1:-}" ) || true; }
url() {
  local host="" port=""
  if alive; then host=$(recorded RERANKER_HOST); port=$(recorded RERANKER_PORT); fi
  host=${host:-$(setting RERANKER_HOST 127.0.0.1)}
  case "$host" in 0.0.0.0|::|'[::]') host=127.0.0.1 ;; esac
  printf 'http://%s:%s' "$host" "${port:-$(setting RERANKER_PORT 8000)}"
}
# 0 when URL answers 200 *and* is the server this daemon started (its instance id), 2 when another
# server answers there, 1 when nothing answers (yet).
probe() { .venv/bin/python - "$(url)$1" "${RERANKER_INSTANCE_ID:-}" <<'PY'
import json, sys, urllib.request
try:
    reply = urllib.request.urlopen(sys.argv[1], timeout=3)
    ours = not sys.argv[2] or json.load(reply).get("instance") == sys.argv[2]
    sys.exit(0 if reply.status == 200 and ours else 2)
except Exception:
    sys.exit(1)
PY
}

start() {
  if alive; then say "already running (pid $(pid))"; return 0; fi
  [ -f "$PIDFILE" ] && { say "removing stale pidfile $PIDFILE"; rm -f "$PIDFILE"; }
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOGFILE")"
  [ -x .venv/bin/python ] || ./setup.sh >>"$LOGFILE" 2>&1
  # A fresh id per start: the readiness check below must hear this server, not another one that
  # happens to own the port while ours is failing to bind.
  export RERANKER_INSTANCE_ID="daemon-$$-$(date +%s)"
  local name
  for name in $(compgen -e); do
    case "$name" in RERANKER_*|HF_*) printf 'export %s=%q\n' "$name" "${!name}" ;; esac
  done > "$STATEFILE"
  nohup setsid .venv/bin/python -m reranker_serve >>"$LOGFILE" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  say "started (pid $!), waiting for $(url)/ready"
  local waited=0 answer
  while [ "$waited" -lt "$START_TIMEOUT" ]; do
    if ! alive; then
      say "exited during start-up; last log lines:"; tail -n 20 "$LOGFILE" >&2; rm -f "$PIDFILE"; return 1
    fi
    answer=0; probe /ready || answer=$?
    if [ "$answer" = 0 ]; then say "ready at $(url)"; return 0; fi
    sleep 1; waited=$((waited + 1))
  done
  say "not ready after ${START_TIMEOUT}s; last log lines:"; tail -n 20 "$LOGFILE" >&2; return 1
}

restart() {
  stop
  if [ -f "$STATEFILE" ]; then
    # The settings of the last start, not the ones this shell exports.
    local name
    for name in $(compgen -e); do
      case "$name" in RERANKER_PIDFILE|RERANKER_LOGFILE) ;; RERANKER_*|HF_*) unset "$name" ;; esac
    done
    # shellcheck disable=SC1090
    . "$STATEFILE"
    say "restarting with the settings recorded at the last start ($STATEFILE)"
  fi
  start
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
  local answer=0
  RERANKER_INSTANCE_ID=$(recorded RERANKER_INSTANCE_ID) probe /health || answer=$?
  case "$answer" in
    0) say "running (pid $(pid)) at $(url)"; return 0 ;;
    2) say "process $(pid) is alive, but another server answers at $(url)"; return 1 ;;
    *) say "process $(pid) is alive but $(url)/health does not answer"; return 1 ;;
  esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  status) status ;;
  logs) touch "$LOGFILE"; exec tail -n 100 -F "$LOGFILE" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
