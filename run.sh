#!/usr/bin/env bash
# Set up if needed, then serve in the foreground.
#
#   ./run.sh                 serve with the settings in .env / RERANKER_* variables
#   ./run.sh --dev           same, restarting on code changes
#   ./run.sh --port 9000     any option of `python -m reranker_serve --help`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

args=()
for arg in "$@"; do
  case "$arg" in
    --dev) args+=(--reload) ;;
    *) args+=("$arg") ;;
  esac
done
./setup.sh >&2
exec .venv/bin/python -m reranker_serve ${args[@]+"${args[@]}"}
