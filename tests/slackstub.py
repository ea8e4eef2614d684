"""A local stand-in for the Slack Web API (and Socket Mode), for tests.

Serves `auth.test`, `chat.postMessage`, `chat.update`, `chat.postEphemeral` and
`apps.connections.open` on 127.0.0.1 at a random port, accepting form or JSON bodies as
slack-sdk sends them, checking `Authorization: Bearer`.  Every call is recorded in
`calls`; `wait_for()` waits for calls without sleeping.  Set `fail` to `"http500"` or to a
Slack error code (e.g. `"channel_not_found"`) to make every method fail.

Socket Mode: `apps.connections.open` hands out a `ws://` URL on the same server; the
WebSocket greets with `hello`, and `send_envelope()` pushes an envelope to the connected
client and returns its acknowledgement.

`sign()` signs a request body exactly as Slack does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web


def sign(body: bytes, secret: str, ts: int) -> dict[str, str]:
    """Slack's request signature headers: `v0=` HMAC-SHA256 over `v0:{ts}:{body}`."""
    base = b"v0:" + str(ts).encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str


class SlackStub:
    def __init__(self, token: str = "xoxb-test", app_token: str = "xapp-test") -> None:
        self.tokens = {token, app_token}
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}  # (channel id, ts) → msg
        self.fail: str | None = None
        self.url = ""
        self._changed = asyncio.Condition()
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._ws: web.WebSocketResponse | None = None
        self._ws_ready = asyncio.Event()
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}

    # ---- lifecycle ----
    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/api/"
        return self.url

    async def stop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- assertions ----
    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.called(method)) >= count)
        return self.called(method)

    # ---- the Web API ----
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _args(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        async with self._changed:
            self.calls.append(Call(method, args, token))
            self._changed.notify_all()
        if self.fail == "http500":
            return web.Response(status=500, text="internal error")
        if not token:
            return web.json_response({"ok": False, "error": "not_authed"})
        if token not in self.tokens:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.fail:
            return web.json_response({"ok": False, "error": self.fail})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        result: dict[str, Any] = handler(args, request)
        return web.json_response(result)

    def _auth_test(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"ok": True, "team": "hoopy", "user": "hoopy-bot", "user_id": "U0BOT"}

    @staticmethod
    def channel_id(channel: str) -> str:
        if channel.startswith("#"):
            return "C" + hashlib.sha256(channel.encode()).hexdigest()[:8].upper()
        return channel

    def _chat_postMessage(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        if not args.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        channel, ts = self.channel_id(args["channel"]), f"1700000000.{next(self._ts):06d}"
        msg = {"text": args.get("text", ""), "blocks": args.get("blocks", []), "ts": ts}
        self.messages[(channel, ts)] = msg
        return {"ok": True, "channel": channel, "ts": ts, "message": msg}

    def _chat_update(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        key = (str(args.get("channel")), str(args.get("ts")))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        self.messages[key].update(text=args.get("text", ""), blocks=args.get("blocks", []))
        return {"ok": True, "channel": key[0], "ts": key[1], "text": args.get("text", "")}

    def _chat_postEphemeral(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        if not args.get("channel") or not args.get("user"):
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}

    def _apps_connections_open(self, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://{request.host}/socket"}

    # ---- Socket Mode ----
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_json({"type": "hello", "num_connections": 1})
        self._ws_ready.set()
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            ack = json.loads(msg.data)
            fut = self._acks.pop(ack.get("envelope_id", ""), None)
            if fut is not None and not fut.done():
                fut.set_result(ack)
        return ws

    async def send_envelope(
        self, type_: str, payload: dict[str, Any], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Push an envelope to the Socket Mode client; returns its acknowledgement."""
        async with asyncio.timeout(timeout):
            await self._ws_ready.wait()
            assert self._ws is not None
            envelope_id = str(uuid.uuid4())
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._acks[envelope_id] = fut
            await self._ws.send_json(
                {
                    "type": type_,
                    "envelope_id": envelope_id,
                    "payload": payload,
                    "accepts_response_payload": False,
                }
            )
            return await fut


async def _args(request: web.Request) -> dict[str, Any]:
    """Arguments from a JSON or form body (and the query string), as Slack accepts them."""
    args: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        args.update(body if isinstance(body, dict) else {})
    else:
        form = await request.post()
        args.update({k: v for k, v in form.items() if isinstance(v, str)})
        if isinstance(args.get("blocks"), str):
            args["blocks"] = json.loads(args["blocks"])
    return args
