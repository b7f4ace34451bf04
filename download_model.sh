#!/usr/bin/env bash
# Download a model for offline use and print the RERANKER_MODEL_PATH line to use with it.
#
#   ./download_model.sh BAAI/bge-reranker-v2-m3              -> models/bge-reranker-v2-m3
#   ./download_model.sh BAAI/bge-reranker-base /data/rerank  -> /data/rerank
#
# HF_TOKEN for gated models; HF_ENDPOINT for a mirror. Fails within seconds, with one line,
# where the hub cannot be reached.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[ -x .venv/bin/python ] || ./setup.sh >&2
# Short timeouts: on a closed network we want a clear "no" quickly, not minutes of retries.
export HF_HUB_ETAG_TIMEOUT=${HF_HUB_ETAG_TIMEOUT:-10} HF_HUB_DOWNLOAD_TIMEOUT=${HF_HUB_DOWNLOAD_TIMEOUT:-30}
exec .venv/bin/python -m reranker_serve.download "$@"
