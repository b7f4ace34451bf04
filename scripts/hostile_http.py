"""Issue 21, item 4, measured against a running server: huge headers and slow clients.

    .venv/bin/python scripts/hostile_http.py --port 8000 --pid "$(cat reranker.pid)"

1. ``--big`` connections each send a header line of up to ``--header-mb`` MB (stopping when the
   server closes); the server's RSS (from /proc, with ``--pid``) before and after.
2. ``--slow`` connections send a header byte a second; how long until the server closed each.
3. One normal request afterwards: its status.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def big_header(port: int, megabytes: int, out: list) -> None:
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            chunk = b"a" * (1 << 20)
            while sent < megabytes << 20:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        try:
            reply = s.recv(200)
        except OSError:
            reply = b""
    out.append((sent, reply.split(b"\r\n", 1)[0].decode(errors="replace")))


def slow_client(port: int, out: list) -> None:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        while time.monotonic() - start < 120:
            try:
                s.sendall(b"X")
                s.settimeout(1.0)
                if s.recv(200):
                    break
            except socket.timeout:
                continue
            except OSError:
                break
    out.append(time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--big", type=int, default=4)
    parser.add_argument("--header-mb", type=int, default=100)
    parser.add_argument("--slow", type=int, default=50)
    args = parser.parse_args()

    before = rss_mb(args.pid)
    results: list = []
    threads = [threading.Thread(target=big_header, args=(args.port, args.header_mb, results)) for _ in range(args.big)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = rss_mb(args.pid)
    print(f"{args.big} x {args.header_mb} MB header lines: sent before the server closed (MB): "
          f"{[round(r[0] / 2**20, 2) for r in results]}; answers: {sorted({r[1] for r in results})}")
    if before is not None:
        print(f"server RSS: {before:.0f} MB before, {after:.0f} MB after")

    closed: list = []
    threads = [threading.Thread(target=slow_client, args=(args.port, closed)) for _ in range(args.slow)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{args.slow} slow clients (a header byte a second): closed by the server after "
          f"{min(closed):.1f}-{max(closed):.1f} s")
    with socket.create_connection(("127.0.0.1", args.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        print("a normal request afterwards:", s.recv(200).split(b"\r\n", 1)[0].decode())


if __name__ == "__main__":
    main()
