"""A preamble for a Python script a test runs in a subprocess: every connection that leaves the
machine (anything but loopback and Unix sockets) and every name lookup other than loopback's is
recorded in a file and refused. The test then asserts the file was never written."""

from __future__ import annotations

from pathlib import Path

__all__ = ["network_guard"]


def network_guard(attempts: Path) -> str:
    """Source to put first in the script; ``attempts`` gets one line per refused attempt."""
    return f'''
import socket, sys
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def _record(what):
    with open({str(attempts)!r}, "a") as f:
        f.write(repr(what) + "\\n")

def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (host.startswith("127.") or host in ("::1", "localhost")) and self.family != socket.AF_UNIX:
        _record(address)
        raise OSError("network blocked by test")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1"):
        _record(host)
        raise socket.gaierror("name resolution blocked by test")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
'''
