"""The hub: is it reachable, is a model cached, fetch one (with progress).

The bottom layer under the model loader (models/loader.py) and the download command
(download.py); it imports nothing of this package. Downloads use huggingface_hub (resumable)
and take only the files a reranker needs (one weight format: safetensors when the repository
has it). Progress is a bar on a terminal and a log line every few seconds elsewhere (a daemon's log).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from loguru import logger
from tqdm.auto import tqdm

__all__ = ["HubUnreachable", "LoggedProgress", "fetch", "in_cache", "probe_hub"]


class HubUnreachable(ConnectionError):
    """The hub cannot be reached from here; ``reason`` says why, in a few words."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"the hub at {url} is unreachable ({reason})")
        self.url = url
        self.reason = reason

# Config, tokenizer and vocab files; weights are added below in one format only.
_ALWAYS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "*.md"]
_WEIGHT_FORMATS = (["*.safetensors"], ["*.bin"], ["*.pt", "*.pth"])


def _weight_patterns(files: list[str]) -> list[str]:
    top_level = [f for f in files if "/" not in f]  # skip onnx/, openvino/ exports
    for patterns in _WEIGHT_FORMATS:
        if any(Path(f).match(p) for f in top_level for p in patterns):
            return patterns
    return []


def probe_hub(timeout: float = 5.0) -> None:
    """Raise HubUnreachable in seconds, not after huggingface_hub's half minute of retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise HubUnreachable(url.geturl(), str(exc) or type(exc).__name__) from None


def in_cache(model: str, cache_dir: Path | str | None) -> bool:
    """Whether ``model``'s config is in the Hugging Face cache at ``cache_dir``."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "config.json", cache_dir=cache_dir), str)


class LoggedProgress(tqdm):
    """A progress bar for logs: a line every ``mininterval`` seconds (10) instead of a redrawn bar."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = False
        kwargs.setdefault("mininterval", 10.0)
        kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a `name`; the plain one does not
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        d = self.format_dict
        unit = d.get("unit") or "it"

        def amount(n: float) -> str:
            return f"{tqdm.format_sizeof(n)}{unit}" if d.get("unit_scale") else f"{n:g} {unit}"

        total = d.get("total")
        of = f" of {amount(total)} ({d['n'] / total:.0%})" if total else ""
        logger.info("{}: {}{} after {:.0f} s", self.desc or "downloading", amount(d["n"]), of, d["elapsed"])
        return True


def fetch(model: str, *, cache_dir: Path | None = None, local_dir: Path | None = None, revision: str | None = None,
          token: str | None = None, progress: str = "auto") -> Path:
    """Download the files a reranker needs into ``local_dir`` (a plain folder) or the cache.

    ``progress``: "bar" (a terminal), "log" (log lines), "auto" (bar on a terminal, else log)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import enable_progress_bars

    probe_hub()
    files = HfApi().list_repo_files(model, revision=revision, token=token)
    weights = _weight_patterns(files)
    if not weights:
        raise RuntimeError(f"{model} has no weight files (safetensors/bin) at its top level")
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "log"
    if progress == "bar":
        enable_progress_bars()
    path = snapshot_download(
        model, revision=revision, token=token, cache_dir=cache_dir, local_dir=local_dir,
        allow_patterns=_ALWAYS + weights, ignore_patterns=["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"],
        tqdm_class=None if progress == "bar" else LoggedProgress,
    )
    return Path(path)
