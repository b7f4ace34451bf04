"""`python -m reranker_serve.download MODEL [DIR]`: fetch a model for offline use.

The hub itself (reachability, cache, the fetch with progress) is hub.py. The command checks that
the folder loads and prints the RERANKER_MODEL_PATH line to use. Exit codes: 0 done, 1 failed
(one line, no traceback), 2 usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .config import Settings
from .device import Placement
from .hub import HubUnreachable, fetch
from .models import load_model

__all__ = ["download", "main"]


def download(model: str, folder: Path, *, revision: str | None = None, token: str | None = None) -> Path:
    return fetch(model, local_dir=folder, revision=revision, token=token)


def _verify(folder: Path) -> str:
    spec = Settings(_env_file=None, model_path=folder).model_specs[0]
    model = load_model(spec, Placement("cpu", torch.float32))
    return f"{model.family} reranker, max_length {model.max_length}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help") or len(args) > 2:
        print("usage: download_model.sh MODEL_ID [DIR]   (DIR defaults to models/<name>)", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    model = args[0]
    folder = Path(args[1] if len(args) > 1 else Path("models") / model.split("/")[-1]).resolve()
    try:
        download(model, folder)
    except Exception as exc:  # network, auth, missing repo: one line, not a traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, HubUnreachable):
            reason += "; on a closed network, copy a model folder in and set RERANKER_MODEL_PATH (see docs/operations.md, Offline use)"
        print(f"download_model: cannot download {model}: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    try:
        what = _verify(folder)
    except Exception as exc:
        print(f"download_model: downloaded to {folder}, but it does not load: {exc}", file=sys.stderr)
        return 1
    print(f"download_model: {model} -> {folder} ({what})", file=sys.stderr)
    print(f"RERANKER_MODEL_PATH={folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
