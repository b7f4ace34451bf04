"""Whether this process may read a model folder, and what to say when it may not.

A model downloaded as root is often readable by root alone (``save_pretrained`` and many
download tools write weights with mode 0600). Served by a non-root process — the container
image runs as uid 10001 — such a folder otherwise fails deep inside a loader with "No such file
or directory: …/model.safetensors", which sends people looking for a file that is there. This
module finds what cannot be read before any loader runs, and names the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["unreadable_message"]

_SHOWN = 3  # entries named in the message; the rest are counted


def _describe(path: Path, folder: Path) -> str:
    name = str(path.relative_to(folder)) if path != folder else str(path)
    try:
        info = path.stat()
    except OSError:
        return name
    return f"{name} (mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid})"


def _blocked(folder: Path) -> list[Path]:
    """Entries of ``folder`` this process may not read (files) or list and enter (folders).
    Hidden entries (``.cache``, ``.git``) are skipped: no loader reads them."""
    if not os.access(folder, os.R_OK | os.X_OK):
        return [folder]
    blocked: list[Path] = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        kept = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            if os.access(base / name, os.R_OK | os.X_OK):
                kept.append(name)
            else:
                blocked.append(base / name)
        dirs[:] = kept
        blocked.extend(base / name for name in sorted(files)
                       if not name.startswith(".") and not os.access(base / name, os.R_OK))
    return blocked


def _fix(folder: Path) -> str:
    uid = os.geteuid()
    return (f"`chmod -R a+rX {folder}` (on the host, for a mounted folder) makes it readable to every user; "
            f"or give it to the user the server runs as (uid {uid}): `chown -R {uid} {folder}`")


def unreadable_message(folder: Path) -> str | None:
    """None when this process can read every file of ``folder`` (or the folder does not exist:
    that is for the caller to say); else a message that names the permission error and its fix."""
    try:
        info = folder.stat()
    except PermissionError:
        return (f"folder {str(folder)!r} cannot be reached by this process (uid {os.geteuid()}): a folder above "
                "it may not be entered (permission denied): allow it with `chmod a+x` on that folder; then "
                + _fix(folder))
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    blocked = _blocked(folder)
    if not blocked:
        return None
    shown = ", ".join(_describe(path, folder) for path in blocked[:_SHOWN])
    more = f" and {len(blocked) - _SHOWN} more" if len(blocked) > _SHOWN else ""
    return (f"folder {str(folder)!r}: permission denied: this process (uid {os.geteuid()}) may not read "
            f"{shown}{more}: the files are there, but this user may not read them. Fix: {_fix(folder)}")
