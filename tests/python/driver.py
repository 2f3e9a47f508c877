#!/usr/bin/env python3
"""JSON-lines driver over python-socketio (AsyncClient), spawned by the end-to-end tests.

Speaks the same protocol as ``clients/js/tools/driver.mjs`` (see its header), minus the
re-assigning helper: ``connect`` assigns once through placement and connects once (no
reconnect); ``connect_raw`` connects to a given URL with a given token. Every command may
carry ``req``; its answer is ``{"type":"result","req":..,"ok":true,...}`` or
``{"type":"result","req":..,"ok":false,"error":".."}``.

Commands: connect, connect_many, connect_raw, join, leave, publish, emit, count, info, close,
exit. Events: assigned, connected, connect_error {message,data,reason}, disconnect {reason},
recv {name,args}; every event carries "t" (ms since the epoch). Binary data travels as ``{"$bin": "<base64>"}`` in JSON.

Run with the repo's virtualenv: ``.venv/bin/python tests/python/driver.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import urllib.parse
from typing import Any

import aiohttp
import socketio

REFUSAL_REASONS = (
    "bad_token",
    "token_expired",
    "token_reused",
    "wrong_node",
    "wrong_namespace",
    "draining",
    "over_capacity",
    "rate_limited",
)


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def event(cid: str, kind: str, **fields: Any) -> None:
    out({"type": "event", "id": cid, "event": kind, "t": int(time.time() * 1000), **fields})


def decode(v: Any) -> Any:
    """JSON -> wire: {"$bin": base64} becomes bytes."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1 and isinstance(v.get("$bin"), str):
            return base64.b64decode(v["$bin"])
        return {k: decode(x) for k, x in v.items()}
    return v


def encode(v: Any) -> Any:
    """wire -> JSON: bytes become {"$bin": base64}."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bin": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, (list, tuple)):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {k: encode(x) for k, x in v.items()}
    return v


def refusal_reason(message: Any, data: Any) -> str | None:
    candidates = []
    if isinstance(data, dict):
        inner = data.get("data")
        if isinstance(inner, dict):
            candidates += [inner.get("reason"), inner.get("code"), inner.get("error")]
        candidates += [data.get("reason"), data.get("code"), data.get("error"), data.get("message")]
    candidates += [data, message]
    for c in candidates:
        if isinstance(c, str):
            for r in REFUSAL_REASONS:
                if r in c:
                    return r
    return None


class Client:
    """One python-socketio AsyncClient and what the tests may ask about it."""

    def __init__(self, cid: str, namespace: str) -> None:
        self.id = cid
        self.namespace = namespace or "/"
        self.state = "connecting"
        self.node_id: str | None = None
        self.url: str | None = None
        self.connections = 0
        self.last_error: dict[str, Any] | None = None
        self.sio = socketio.AsyncClient(reconnection=False)
        ns = self.namespace
        self.sio.on("connect", self._on_connect, namespace=ns)
        self.sio.on("connect_error", self._on_connect_error, namespace=ns)
        self.sio.on("disconnect", self._on_disconnect, namespace=ns)
        self.sio.on("*", self._on_any, namespace=ns)

    async def _on_connect(self) -> None:
        self.state = "connected"
        self.connections += 1
        event(self.id, "connected", node_id=self.node_id, url=self.url, sid=self.sio.get_sid(self.namespace))

    async def _on_connect_error(self, data: Any = None) -> None:
        message = data.get("message") if isinstance(data, dict) else data
        self._failed(str(message), data)

    def _failed(self, message: str, data: Any) -> None:
        if self.state == "failed":
            return
        self.state = "failed"
        self.last_error = {"message": message, "data": encode(data), "reason": refusal_reason(message, data)}
        event(self.id, "connect_error", **self.last_error)

    async def _on_disconnect(self, *args: Any) -> None:
        if self.state != "closed":
            self.state = "disconnected"
        reason = str(args[0]) if args else None
        event(self.id, "disconnect", reason=reason)

    async def _on_any(self, name: str, *args: Any) -> None:
        event(self.id, "recv", name=name, args=encode(list(args)))

    async def start(self, url: str, token: str | None, transports: list[str] | None, auth: Any = None) -> None:
        self.url = url
        if token is not None:
            auth = {"token": token}
        try:
            await self.sio.connect(
                url,
                auth=auth,
                transports=transports,
                namespaces=[self.namespace],
                wait_timeout=10,
            )
        except socketio.exceptions.ConnectionError as err:
            # The connect_error handler usually reported it already, with the data.
            self._failed(str(err), None)
            await self.sio.disconnect()

    async def call(self, name: str, args: list[Any], timeout_s: float) -> Any:
        if self.state != "connected":
            raise RuntimeError(f"client {self.id} is not connected")
        data: Any = tuple(args) if len(args) != 1 else args[0]
        return await self.sio.call(name, data, namespace=self.namespace, timeout=timeout_s)

    async def close(self) -> None:
        self.state = "closed"
        await self.sio.disconnect()


clients: dict[str, Client] = {}
http: aiohttp.ClientSession | None = None


async def assign(placement: str, namespace: str) -> dict[str, Any]:
    assert http is not None
    q = urllib.parse.urlencode({"namespace": namespace})
    async with http.get(f"{placement.rstrip('/')}/v1/assign?{q}") as res:
        body = await res.json(content_type=None)
        if res.status != 200:
            raise RuntimeError(f"assign failed: HTTP {res.status} {body}")
        return body


async def start_assigned(cid: str, c: dict[str, Any]) -> None:
    ns = c.get("namespace") or "/"
    client = new_client(cid, ns)
    try:
        a = await assign(c["placement"], ns)
    except Exception as err:  # noqa: BLE001 - reported to the test, not raised
        client._failed(str(err), None)
        return
    client.node_id = a["node_id"]
    event(cid, "assigned", node_id=a["node_id"], url=a["url"])
    await client.start(a["url"], a["token"], c.get("transports"))


def new_client(cid: str, namespace: str) -> Client:
    if cid in clients:
        raise RuntimeError(f"client {cid} exists")
    client = Client(cid, namespace)
    clients[cid] = client
    return client


def get(cid: str) -> Client:
    client = clients.get(cid)
    if client is None:
        raise RuntimeError(f"no client {cid}")
    return client


def count() -> dict[str, Any]:
    by_node: dict[str, int] = {}
    states: dict[str, int] = {}
    connected = 0
    for c in clients.values():
        states[c.state] = states.get(c.state, 0) + 1
        if c.state == "connected":
            connected += 1
            node = c.node_id or "unknown"
            by_node[node] = by_node.get(node, 0) + 1
    return {"clients": len(clients), "connected": connected, "by_node": by_node, "states": states}


background: set[asyncio.Task[Any]] = set()


def spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    background.add(task)
    task.add_done_callback(background.discard)


async def handle(c: dict[str, Any]) -> dict[str, Any]:
    cmd = c.get("cmd")
    timeout_s = (c.get("timeout_ms") or 10000) / 1000
    if cmd == "connect":
        spawn(start_assigned(c["id"], c))
        return {}
    if cmd == "connect_many":
        n = int(c.get("count", 0))
        for i in range(n):
            coro = start_assigned(f"{c.get('prefix', 'c')}{i}", c)
            if c.get("sequential"):
                await coro
            else:
                spawn(coro)
        return {"count": n}
    if cmd == "connect_raw":
        client = new_client(c["id"], c.get("namespace") or "/")
        client.node_id = c.get("node_id")
        spawn(client.start(c["url"], c.get("token"), c.get("transports"), c.get("auth")))
        return {}
    if cmd in ("join", "leave"):
        return {"ack": encode(await get(c["id"]).call(cmd, [c["room"]], timeout_s))}
    if cmd == "publish":
        msg = {"room": c["room"], "event": c["event"], "data": decode(c.get("data"))}
        if "retain" in c:
            msg["retain"] = c["retain"]
        return {"ack": encode(await get(c["id"]).call("publish", [msg], timeout_s))}
    if cmd == "emit":
        client = get(c["id"])
        args = decode(c.get("args") or [])
        if c.get("ack"):
            return {"ack": encode(await client.call(c["event"], args, timeout_s))}
        data: Any = tuple(args) if len(args) != 1 else args[0]
        await client.sio.emit(c["event"], data, namespace=client.namespace)
        return {}
    if cmd == "count":
        return count()
    if cmd == "info":
        cl = get(c["id"])
        return {
            "state": cl.state,
            "node_id": cl.node_id,
            "url": cl.url,
            "rooms": [],
            "connections": cl.connections,
            "last_error": cl.last_error,
        }
    if cmd == "close":
        targets = [get(c["id"])] if c.get("id") else list(clients.values())
        await asyncio.gather(*(t.close() for t in targets), return_exceptions=True)
        return {}
    if cmd == "exit":
        raise SystemExit(0)
    raise RuntimeError(f"unknown cmd {cmd}")


async def run_command(c: dict[str, Any]) -> None:
    try:
        res = await handle(c)
        out({"type": "result", "req": c.get("req"), "ok": True, **res})
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 - every failure is an answer to the test
        out({"type": "result", "req": c.get("req"), "ok": False, "error": f"{type(err).__name__}: {err}"})


async def main() -> None:
    global http
    http = aiohttp.ClientSession()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out({"type": "ready", "driver": "python", "pid": os.getpid()})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                c = json.loads(line)
            except json.JSONDecodeError as err:
                out({"type": "result", "req": None, "ok": False, "error": f"bad json: {err}"})
                continue
            if c.get("cmd") == "exit":
                out({"type": "result", "req": c.get("req"), "ok": True})
                break
            spawn(run_command(c))
    finally:
        await asyncio.gather(*(cl.close() for cl in clients.values()), return_exceptions=True)
        await http.close()


if __name__ == "__main__":
    asyncio.run(main())
