#!/usr/bin/env bash
# Set up reranker-serve in ./.venv: the right torch for this machine, then the requirements.
#
#   ./setup.sh          runtime dependencies
#   ./setup.sh --dev    also the test dependencies
#
# Idempotent: a second run with unchanged requirements does nothing. Variables:
#   PYTHON=python3.11   interpreter for the venv        TORCH_VERSION=2.13.0   torch release
#   TORCH_INDEX_URL=…   force a torch wheel index (e.g. https://download.pytorch.org/whl/cu128)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=.venv
say() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
log="$VENV/setup.log"
# pip install, saying what it fetches and installs as it goes (one line a package, not pip's
# whole chatter); the full output is kept in $log and its tail shown if pip fails.
progress() {
  local line
  while IFS= read -r line; do
    line="${line#"${line%%[![:space:]]*}"}"  # pip indents some lines
    case "$line" in
      Collecting*|Downloading*) printf '[setup]   %s\n' "${line%% (*}" ;;
      "Installing collected packages"*) printf '[setup]   installing %s packages\n' "$(tr ',' '\n' <<<"${line#*: }" | wc -l)" ;;
    esac
  done
}
pip_install() {
  if "$py" -m pip --disable-pip-version-check install --progress-bar off "$@" 2>&1 | tee "$log" | progress; then
    return 0
  fi
  say "pip failed; the end of $log:"; tail -n 25 "$log" >&2; return 1
}

# --- torch: chosen for the machine, installed before anything can pull the default build ------
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    say "installing torch $TORCH_VERSION from $TORCH_INDEX_URL"
    pip_install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    say "NVIDIA GPU found: installing the CUDA build of torch $TORCH_VERSION (a few GB: minutes)"
    pip_install "torch==$TORCH_VERSION"
  elif [ "$(uname -s)" = "Darwin" ]; then
    say "macOS: installing torch $TORCH_VERSION (CPU + Apple MPS)"
    pip_install "torch==$TORCH_VERSION"
  else
    say "no GPU: installing the CPU build of torch $TORCH_VERSION"
    # PyPI's default Linux wheel is the multi-GB CUDA build, so: a wheel pip can already see
    # locally (find-links) first, then PyTorch's CPU index if it answers, PyPI only as a last resort.
    local_wheels=$(mktemp -d)
    if pip download --no-index --no-deps "torch==$TORCH_VERSION" -d "$local_wheels" >/dev/null 2>&1; then
      pip_install "$local_wheels"/torch-*.whl
    elif "$py" -c "import socket; socket.create_connection(('download.pytorch.org', 443), timeout=5)" 2>/dev/null; then
      pip_install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
    else
      say "PyTorch's CPU index is unreachable; installing torch from PyPI (large download)"
      pip_install "torch==$TORCH_VERSION"
    fi
    rm -rf "$local_wheels"
  fi
fi

# --- the rest, skipped when nothing changed since the last run ---------------------------------
req="requirements.txt"
[ "$dev" = 1 ] && req="requirements-dev.txt"
stamp="$VENV/.setup-$(basename "$req" .txt)"
digest=$(cat requirements.txt "$req" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
  say "up to date ($req)"
  exit 0
fi
say "installing $req (the server's libraries: a minute or two on a first run)"
pip_install -r "$req"
say "installing reranker-serve itself (editable)"
pip install --no-deps -e .
echo "$digest" > "$stamp"
say "done: $("$py" -c 'import torch, reranker_serve as r; print(f"reranker-serve {r.__version__}, torch {torch.__version__}")')"
