"""pods/portforward as kubectl >= 1.31 speaks it: SPDY/3.1 tunnelled in a WebSocket
(subprotocol `SPDY/3.1+portforward.k8s.io`, KEP-4006), served as the kubelet does.

Each forwarded connection is a pair of SPDY streams sharing a `requestid`: `error`
(the server writes a message there if forwarding fails) and `data`.  The pod's port
P is 127.0.0.1:P on this host: tests start a TCP server and forward to its port.
Every open is counted in `opened` so tests can prove a refused stream never
arrived.  The SPDY framing is hoopy's codec (hoopy/protocols/kube/spdy.py); real
kubectl checks it too, because the tests also run kubectl straight at the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import WSMsgType, web

from hoopy.protocols.kube import spdy

PROTOCOL = "SPDY/3.1+portforward.k8s.io"
opened: list[dict[str, Any]] = []  # every stream pair that reached the "pod"


class _Conn:
    def __init__(self, ws: web.WebSocketResponse, pod: str) -> None:
        self.ws = ws
        self.pod = pod
        self.dec = spdy.Decoder()
        self.enc = spdy.Encoder()
        self.lock = asyncio.Lock()
        self.pairs: dict[str, dict[str, Any]] = {}
        # data stream -> what the client sent on it (None: its FIN or RST), in order
        self.inbox: dict[int, asyncio.Queue[bytes | None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, *frames: spdy.Frame) -> None:
        async with self.lock:  # one compression context: encode and send in order
            for f in frames:
                with contextlib.suppress(ConnectionError):
                    await self.ws.send_bytes(self.enc.encode(f))

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                for frame in self.dec.feed(msg.data):
                    await self.frame(frame)
        except spdy.SpdyError:
            await self.ws.close(code=1002)
        finally:
            for t in list(self.tasks):
                t.cancel()

    async def frame(self, f: spdy.Frame) -> None:
        if isinstance(f, spdy.SynStream):
            await self.send(spdy.SynReply(f.stream_id))
            kind = (spdy.header(f.headers, "streamtype") or [""])[0]
            rid = (spdy.header(f.headers, "requestid") or [""])[0]
            port = (spdy.header(f.headers, "port") or [""])[0]
            pair = self.pairs.setdefault(rid, {"port": port})
            pair[kind] = f.stream_id
            if kind == "data":
                self.inbox[f.stream_id] = asyncio.Queue()
            if "error" in pair and "data" in pair:
                t = asyncio.ensure_future(self.forward(pair))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)
        elif isinstance(f, spdy.Data | spdy.RstStream):
            box = self.inbox.get(f.stream_id)
            if box is not None and isinstance(f, spdy.Data) and f.data:
                box.put_nowait(f.data)
            if box is not None and (isinstance(f, spdy.RstStream) or f.fin):
                box.put_nowait(None)
        elif isinstance(f, spdy.Ping):
            await self.send(f)  # the client's ping, echoed

    async def forward(self, pair: dict[str, Any]) -> None:
        err, data, port = pair["error"], pair["data"], pair["port"]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
        except (OSError, ValueError) as e:
            msg = f"error forwarding port {port} to pod {self.pod}: {e}"
            await self.send(spdy.Data(err, msg.encode(), True), spdy.Data(data, b"", True))
            return
        opened.append({"pod": self.pod, "port": int(port)})
        upload = asyncio.ensure_future(self.upload(self.inbox[data], writer))
        try:
            while chunk := await reader.read(32 * 1024):
                await self.send(spdy.Data(data, chunk))
        except ConnectionError:
            pass
        finally:
            upload.cancel()
            writer.close()
            self.inbox.pop(data, None)
            await self.send(spdy.Data(data, b"", True), spdy.Data(err, b"", True))

    async def upload(self, box: asyncio.Queue[bytes | None], writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (chunk := await box.get()) is not None:
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()


async def serve(request: web.Request, pod: str) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), max_msg_size=0)
    await ws.prepare(request)
    await _Conn(ws, pod).run()
    return ws
