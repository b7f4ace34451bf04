"""A model folder this process may not read is named a permission error, with its fix.

Root reads everything, so when the suite runs as root the check runs as another user: a
subprocess with nobody's uid (setpriv), an interpreter that user may execute, and the checking
module loaded from its file (it needs only the standard library). The same message, end to end
in the non-root container, is tests/test_image.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from procs import ROOT

MODULE = ROOT / "src" / "reranker_serve" / "permissions.py"
NOBODY = 65534
PROBE = """
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("permissions", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps([module.unreadable_message(Path(p)) for p in sys.argv[2:]]))
"""


def _runnable_by_others(path: Path) -> bool:
    """Whether a user who is neither root nor the owner may reach and execute ``path``."""
    path = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def messages(*folders: Path) -> list[str | None]:
    if os.geteuid() != 0:
        command = [sys.executable, "-c", PROBE, str(MODULE), *map(str, folders)]
    else:
        pythons = [Path(sys.executable), Path("/usr/bin/python3")]
        python = next((p for p in pythons if p.exists() and _runnable_by_others(p)), None)
        if python is None or shutil.which("setpriv") is None:
            pytest.skip("running as root, with no interpreter another user may run, or no setpriv (util-linux)")
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(python), "-c", PROBE,
                   str(MODULE), *map(str, folders)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _model(folder: Path, *, weights: int = 0o644, config: int = 0o644) -> Path:
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    (folder / "config.json").write_text("{}")
    (folder / "config.json").chmod(config)
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    (folder / "model.safetensors").chmod(weights)
    return folder


@pytest.fixture
def place() -> Iterator[Path]:
    # Not pytest's temporary folders: they are 0700, so another user could not even reach them.
    with tempfile.TemporaryDirectory(prefix="reranker-perm-") as name:
        root = Path(name)
        root.chmod(0o755)
        yield root


def test_root_only_weights_are_a_permission_error_with_its_fix(place):
    readable = _model(place / "ok")
    root_only = _model(place / "root-only", weights=0o600)
    hidden = _model(place / "hidden")
    (hidden / ".cache").mkdir(mode=0o700)  # what download tools leave: no loader reads it
    ok, denied, hidden_ok = messages(readable, root_only, hidden)
    assert ok is None and hidden_ok is None
    uid = os.geteuid() if os.geteuid() != 0 else NOBODY
    assert denied.startswith(f"folder '{root_only}': permission denied: this process (uid {uid}) may not read "
                             "model.safetensors (mode 0600, owner uid")
    assert f"`chmod -R a+rX {root_only}`" in denied and f"`chown -R {uid} {root_only}`" in denied


def test_an_unreachable_folder_and_a_closed_subfolder_are_named(place):
    closed = _model(place / "closed")
    sub = closed / "onnx"
    sub.mkdir()
    sub.chmod(0o700)
    many = _model(place / "many", weights=0o600, config=0o600)
    for i in range(3):
        (many / f"extra{i}.bin").write_bytes(b"")
        (many / f"extra{i}.bin").chmod(0o600)
    fenced = place / "fence"
    fenced.mkdir(mode=0o700)
    inner = _model(fenced / "model")
    closed_msg, many_msg, fenced_msg = messages(closed, many, inner)
    assert "may not read onnx (mode 0700" in closed_msg
    assert "and 2 more" in many_msg and "config.json (mode 0600" in many_msg
    assert fenced_msg.startswith(f"folder '{inner}' cannot be reached") and "chmod a+x" in fenced_msg
    assert messages(place / "absent") == [None]  # not there at all: the caller says "does not exist"
