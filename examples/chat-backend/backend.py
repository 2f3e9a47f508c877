"""A chat backend for Switchyard's hooks (docs/hooks.md), in Python with aiohttp.

The gateways call it over HTTP:

- POST /connect     authorizes a client from its `auth` ({"name": "..."}), keeps the name as
                    the socket's data, and puts the client in the room "lobby";
- POST /event       "chat" ({room?, text}) stores the message once, answers the client's ack
                    with the stored id and emits it to the room (through the cluster, so
                    members on every gateway get it, and a resumed client gets what it missed);
                    "enter" (room) joins another room; "dm" ({to: <sid>, text}) emits to one
                    socket; any other event is refused with a 4xx error the client receives;
- POST /disconnect  records who left and why.

And for people (and tests) who want to look inside:

- GET /messages?room=lobby   the stored messages of a room, oldest first;
- GET /disconnects           the disconnects received, in order.

Messages live in memory: restart it and they are gone. Run beside `cargo xtask up` with the
two commands of README.md. Once listening it prints `SWITCHYARD_READY http=<host>:<port>`,
the line Switchyard's own services print, so tests and tools wait for it the same way.
"""

import argparse
import asyncio
import itertools
import sys
import time

from aiohttp import web

MAX_NAME = 32
MAX_TEXT = 2000


class Chat:
    def __init__(self, token, banned):
        self.token = token
        self.banned = set(banned)
        self.ids = itertools.count(1)
        self.messages = []  # {"id", "room", "name", "text", "at"}
        self.disconnects = []  # {"sid", "uid", "namespace", "reason"}

    def authorized(self, request):
        return self.token is None or request.headers.get("authorization") == f"Bearer {self.token}"

    async def connect(self, request):
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        auth = body.get("auth") or {}
        name = auth.get("name") if isinstance(auth, dict) else None
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            return web.json_response({"allow": False, "reason": "name_required"})
        if name in self.banned:
            return web.json_response({"allow": False, "reason": f"{name} is banned"})
        return web.json_response({"allow": True, "data": {"name": name}, "join": ["lobby"]})

    async def event(self, request):
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        event, args = body.get("event"), body.get("args") or []
        name = (body.get("data") or {}).get("name", "anonymous")
        arg = args[0] if args else None
        if event == "chat" and isinstance(arg, dict) and isinstance(arg.get("text"), str):
            room = arg.get("room") or "lobby"
            if room not in body.get("rooms", []):
                return web.json_response({"error": "not_in_room"}, status=403)
            if len(arg["text"]) > MAX_TEXT:
                return web.json_response({"error": "too_long"}, status=400)
            message = {"id": next(self.ids), "room": room, "name": name, "text": arg["text"],
                       "at": int(time.time() * 1000)}
            self.messages.append(message)
            return web.json_response({
                "ack": [{"ok": True, "id": message["id"]}],
                "emit": [{"room": room, "event": "chat", "data": message}],
            })
        if event == "enter" and isinstance(arg, str) and arg:
            return web.json_response({"ack": [{"ok": True, "room": arg}], "join": [arg]})
        if event == "dm" and isinstance(arg, dict) and isinstance(arg.get("to"), str):
            data = {"from": body["sid"], "name": name, "text": arg.get("text")}
            return web.json_response({"ack": [{"ok": True}],
                                      "emit": [{"to": arg["to"], "event": "dm", "data": data}]})
        return web.json_response({"error": "unknown_event"}, status=400)

    async def disconnect(self, request):
        if not self.authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        body = await request.json()
        # At least once: the same sid may come twice.
        if not any(d["sid"] == body.get("sid") for d in self.disconnects):
            self.disconnects.append(body)
        return web.json_response({})

    async def list_messages(self, request):
        room = request.query.get("room", "lobby")
        return web.json_response([m for m in self.messages if m["room"] == room])

    async def list_disconnects(self, _request):
        return web.json_response(self.disconnects)


def app(chat):
    a = web.Application(client_max_size=2 * 1024 * 1024)
    a.add_routes([
        web.post("/connect", chat.connect),
        web.post("/event", chat.event),
        web.post("/disconnect", chat.disconnect),
        web.get("/messages", chat.list_messages),
        web.get("/disconnects", chat.list_disconnects),
    ])
    return a


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--token", help="require `Authorization: Bearer <token>` (the gateways' "
                                   "--hook-token)")
    p.add_argument("--ban", action="append", default=[], help="a name refused at connect")
    args = p.parse_args()
    runner = web.AppRunner(app(Chat(args.token, args.ban)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"SWITCHYARD_READY http={host}:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
