"""`python -m reranker_serve.download MODEL [DIR]`: fetch a model for offline use.

Downloads with huggingface_hub (progress bars, resumable), only the files a reranker needs
(one weight format: safetensors when the repository has it), checks that the folder loads,
and prints the RERANKER_MODEL_PATH line to use. Exit codes: 0 done, 1 failed (one line, no
traceback), 2 usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["download", "main"]

# Config, tokenizer and vocab files; weights are added below in one format only.
_ALWAYS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "*.md"]
_WEIGHT_FORMATS = (["*.safetensors"], ["*.bin"], ["*.pt", "*.pth"])


def _weight_patterns(files: list[str]) -> list[str]:
    top_level = [f for f in files if "/" not in f]  # skip onnx/, openvino/ exports
    for patterns in _WEIGHT_FORMATS:
        if any(Path(f).match(p) for f in top_level for p in patterns):
            return patterns
    return []


def _probe_hub(timeout: float = 5.0) -> None:
    """Fail in seconds, not after huggingface_hub's minute of retries, where the hub is unreachable."""
    import os
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"the hub at {url.geturl()} is unreachable ({exc}); on a closed network, copy "
                              "a model folder in and set RERANKER_MODEL_PATH (see README, Offline use)") from None


def download(model: str, folder: Path, *, revision: str | None = None, token: str | None = None) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    _probe_hub()

    files = HfApi().list_repo_files(model, revision=revision, token=token)
    weights = _weight_patterns(files)
    if not weights:
        raise RuntimeError(f"{model} has no weight files (safetensors/bin) at its top level")
    snapshot_download(
        model, revision=revision, token=token, local_dir=folder, allow_patterns=_ALWAYS + weights,
        ignore_patterns=["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"],
    )
    return folder


def _verify(folder: Path) -> str:
    import torch

    from .config import Settings
    from .device import Placement
    from .models import load_model

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
