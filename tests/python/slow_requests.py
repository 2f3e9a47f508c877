#!/usr/bin/env python3
"""An attacker for the hostile-client tests: opens many TCP connections to one HTTP listener,
each sending the start of a request and then nothing, and reports when the target closes them.

With ``--slow-body`` each connection instead opens an Engine.IO polling session, sends a
complete POST header for that session announcing a 50,000-byte body, then 10 bytes of it and
nothing more: a body that trickles in.

With ``--websocket`` each connection instead completes an Engine.IO WebSocket upgrade (a
``GET /socket.io/?EIO=4&transport=websocket`` with the upgrade headers, its ``101`` read) and then
sends nothing: no namespace CONNECT, no pong. A connection the target closes before its ``101``
(such as one closed at accept) is *refused*, not opened.

Standard library only, so it runs without the venv. Run as its own process by
``crates/gateway/tests/e2e_hostile.rs``:

    slow_requests.py --target 127.0.0.1:4000 --sources 127.0.0.2,127.0.0.3 --per-source 300 \
        --hold-secs 20

Writes JSON lines on stdout:

- ``{"opened": n, "failed": k}`` once every connection has been attempted (``failed``: the
  connect itself failed) and its partial request sent (a send the target refused counts as a
  close after 0 s); with ``--websocket``, ``{"opened": n, "refused": r, "refused_after":
  [seconds, ...], "failed": k}``: ``opened`` counts the upgraded ones only, ``refused`` those
  closed before their ``101``, each after ``refused_after`` seconds from its connect;
- ``{"closed_after": [seconds, ...], "still_open": m}`` when every connection has been closed by
  the target, or ``--hold-secs`` after opening: for each closed connection the seconds from its
  open to the target's close (EOF or reset).
"""

import argparse
import http.client
import json
import selectors
import socket
import sys
import time

PARTIAL = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: target\r\n"

UPGRADE = (
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: target\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def upgraded(s: socket.socket) -> bool:
    """Sends the WebSocket upgrade on ``s`` and reads the answer's head: whether it is a ``101``.
    False when the target closes (or resets) the connection first."""
    try:
        s.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            data = s.recv(4096)
            if not data:
                return False
            head += data
    except OSError:
        return False
    return head.startswith(b"HTTP/1.1 101")


def slow_body_request(target: tuple, source: str) -> bytes:
    """Opens a polling session from ``source`` and returns the start of a POST to it."""
    conn = http.client.HTTPConnection(target[0], target[1], timeout=10, source_address=(source, 0))
    conn.request("GET", "/socket.io/?EIO=4&transport=polling")
    body = conn.getresponse().read().decode()
    conn.close()
    sid = json.loads(body[body.index("{"):])["sid"]
    return (
        f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: target\r\n"
        "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 50000\r\n\r\n"
        "4424242424"
    ).encode()


def watch(sel: selectors.BaseSelector, opened_at: dict, closed_after: list, timeout: float) -> None:
    """Waits at most ``timeout`` for closes; records each one's seconds since its open."""
    for key, _ in sel.select(timeout=timeout):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            continue  # an answer (such as 408) before the close: keep waiting for the close
        closed_after.append(round(time.monotonic() - opened_at.pop(s), 3))
        sel.unregister(s)
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port")
    ap.add_argument("--sources", required=True, help="comma-separated 127.0.0.x addresses")
    ap.add_argument("--per-source", type=int, required=True)
    ap.add_argument("--hold-secs", type=float, required=True)
    ap.add_argument("--slow-body", action="store_true", help="trickle a POST body instead")
    ap.add_argument(
        "--websocket", action="store_true", help="upgrade to a WebSocket, then send nothing"
    )
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    target = (host, int(port))

    sel = selectors.DefaultSelector()
    opened_at: dict[socket.socket, float] = {}
    closed_after: list[float] = []
    opened = 0
    failed = 0
    refused_after: list[float] = []
    for source in args.sources.split(","):
        for _ in range(args.per_source):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                request = slow_body_request(target, source) if args.slow_body else PARTIAL
                s.bind((source, 0))
                s.connect(target)
            except OSError:
                failed += 1
                s.close()
                continue
            if args.websocket:
                s.settimeout(10)
                connected_at = time.monotonic()
                if not upgraded(s):
                    refused_after.append(round(time.monotonic() - connected_at, 3))
                    s.close()
                    continue
                opened += 1
            else:
                opened += 1
                try:
                    s.sendall(request)
                except OSError:
                    closed_after.append(0.0)  # closed by the target before the request was sent
                    s.close()
                    continue
            s.setblocking(False)
            opened_at[s] = time.monotonic()
            sel.register(s, selectors.EVENT_READ)
            # Notice closes while still opening, so their times are not inflated.
            watch(sel, opened_at, closed_after, 0.0)
    if args.websocket:
        report = {
            "opened": opened,
            "refused": len(refused_after),
            "refused_after": refused_after,
            "failed": failed,
        }
    else:
        report = {"opened": opened, "failed": failed}
    print(json.dumps(report), flush=True)

    deadline = time.monotonic() + args.hold_secs
    while opened_at and time.monotonic() < deadline:
        watch(sel, opened_at, closed_after, max(0.0, deadline - time.monotonic()))
    print(json.dumps({"closed_after": closed_after, "still_open": len(opened_at)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
