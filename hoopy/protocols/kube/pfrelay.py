"""pods/portforward: kubectl's SPDY-in-WebSocket tunnel, terminated and re-encoded.

kubectl >= 1.31 opens `GET .../pods/NAME/portforward` as a WebSocket with subprotocol
`SPDY/3.1+portforward.k8s.io` and carries a SPDY/3.1 session in its binary messages
(KEP-4006).  The ports are not in the request: each local connection becomes two
SPDY streams (`streamtype: error` and `data`, same `requestid`) whose SYN_STREAM
headers name the pod `port`.  So hoopy decodes the agent's SPDY (spdy.py), judges
every stream on its own port through `judge` (the session's policy seam), and
re-encodes what it forwards with its own header compressor (the zlib context is
shared by all of a direction's header blocks, so a dropped SYN_STREAM would corrupt
every later one if the bytes were passed on as they came).

A refused stream never reaches the cluster: its error stream is answered with the
reason and closed, its data stream answered closed, as the kubelet answers a port it
cannot reach; kubectl prints the reason and ends.  A stream hoopy cannot read (no
single numeric port, reused or decreasing id) is reset (RST_STREAM).  Bytes are
relayed with back-pressure (every send is awaited before the next message is read)
and recorded: each stream's open and close with its port and byte counts, and the
forwarded bytes themselves in chained events of at most RECORD_CHUNK bytes, up to
RECORD_MAX per connection (then only counted).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from hoopy.errors import CommandDenied, HoopyError
from hoopy.policy import Command
from hoopy.protocols.kube import spdy
from hoopy.protocols.kube.execrelay import MAX_MESSAGE
from hoopy.protocols.kube.status import status
from hoopy.protocols.kube.upstream import Upstream
from hoopy.session import Session

PROTOCOL = "SPDY/3.1+portforward.k8s.io"
RECORD_CHUNK = 16 * 1024
RECORD_MAX = 64 * 1024 * 1024
SLICE = 64 * 1024  # bytes of an agent's message decoded before other tasks may run
MAX_STREAMS = 1024  # open streams per connection (kubectl: two per local connection)

# Returns None when the port may be forwarded, else the reason it may not.
Judge = Callable[[int], Awaitable[str | None]]


@dataclass
class _Stream:
    sid: int
    kind: str
    port: int
    request_id: str
    sent: int = 0  # to the agent
    received: int = 0  # from the agent
    agent_fin: bool = False
    cluster_fin: bool = False


@dataclass
class PortForwardResult:
    response: web.StreamResponse
    status: int
    sent: int = 0
    received: int = 0
    streams: int = 0
    refused: int = 0
    ports: list[int] = field(default_factory=list)
    error: str = ""


def judge(session: Session, resource: str, namespace: str, name: str) -> Judge:
    """Each stream's port, through the one policy seam (session.check)."""
    base = f"k8s\0create\0{resource}\0{namespace}\0{name}"
    where = f"pod {namespace}/{name}"

    async def decide(port: int) -> str | None:
        cmd = Command(
            "kubernetes",
            session.connector,
            text=f"create {resource} {namespace}/{name} port {port}",
            kinds=frozenset({"create"}),
            verb="create",
            resource=resource,
            namespace=namespace,
            name=name,
            ports=(port,),
            fingerprint=f"{base}\0port\0{port}",
        )
        try:
            decision = await session.check(cmd)
        except CommandDenied as e:
            hint = ""
            if "no policy rule allows" in e.message:
                hint = f" (an allow rule must name the port: kubernetes: {{ports: [{port}]}})"
            return f"hoopy refused port {port} of {where}: {e.message}{hint}"
        except HoopyError as e:
            return f"hoopy refused port {port} of {where}: {e.message}"
        if decision.masks.detectors:
            rules = ", ".join(decision.masks.rules)
            return (
                f"hoopy refused port {port} of {where}: mask rule {rules} applies "
                "and forwarded bytes cannot be masked"
            )
        return None

    return decide


def offered(request: web.BaseRequest) -> bool:
    protocols = request.headers.get("Sec-WebSocket-Protocol", "").split(",")
    return PROTOCOL in (p.strip() for p in protocols)


class _Relay:
    def __init__(
        self,
        agent: web.WebSocketResponse,
        cluster: aiohttp.ClientWebSocketResponse,
        session: Session,
        judge: Judge,
        result: PortForwardResult,
    ) -> None:
        self.agent = agent
        self.cluster = cluster
        self.session = session
        self.judge = judge
        self.result = result
        self.from_agent = spdy.Decoder()
        self.from_cluster = spdy.Decoder()
        self.to_agent = spdy.Encoder()
        self.to_cluster = spdy.Encoder()
        self.agent_lock = asyncio.Lock()  # encode + send in one order per direction
        self.cluster_lock = asyncio.Lock()
        self.streams: dict[int, _Stream] = {}
        self.requests: dict[str, tuple[int, str | None]] = {}  # requestid -> (port, refusal)
        self.last_id = 0
        self.recorded = 0

    async def send_agent(self, *frames: spdy.Frame) -> None:
        async with self.agent_lock:
            for f in frames:
                await self.agent.send_bytes(self.to_agent.encode(f))

    async def send_cluster(self, *frames: spdy.Frame) -> None:
        async with self.cluster_lock:
            for f in frames:
                await self.cluster.send_bytes(self.to_cluster.encode(f))

    def record_bytes(self, st: _Stream, direction: str, data: bytes) -> None:
        room = RECORD_MAX - self.recorded
        if room <= 0 or not data:
            return
        data = data[:room]
        self.recorded += len(data)
        for i in range(0, len(data), RECORD_CHUNK):
            piece = data[i : i + RECORD_CHUNK]
            self.session.record_later(
                "portforward_data",
                {
                    "stream": st.sid,
                    "port": st.port,
                    "direction": direction,  # "to_pod" or "to_agent"
                    "data": base64.b64encode(piece).decode(),
                },
            )
        if self.recorded >= RECORD_MAX:
            self.session.record("portforward_truncated", limit=RECORD_MAX)

    def close_stream(self, st: _Stream, how: str) -> None:
        if self.streams.pop(st.sid, None) is None:
            return
        self.session.record_later(
            "portforward_close",
            {
                "stream": st.sid,
                "port": st.port,
                "kind": st.kind,
                "request_id": st.request_id,
                "how": how,
                "to_pod": st.received,
                "to_agent": st.sent,
            },
        )

    # ---- agent -> cluster ----------------------------------------------------------
    async def agent_side(self) -> None:
        async for msg in self.agent:
            if msg.type != WSMsgType.BINARY:
                continue
            # a message is read a slice at a time, with a pause between slices: one
            # message of 4 MiB of empty frames is 500,000 frames, and decoding and
            # judging them in one go held up every other session for over a second
            data = msg.data
            for at in range(0, len(data), SLICE):
                try:
                    frames = self.from_agent.feed(data[at : at + SLICE])
                except spdy.SpdyError as e:
                    self.result.error = f"agent: {e}"
                    self.session.record("portforward_error", side="agent", reason=str(e))
                    return
                for f in frames:
                    await self.agent_frame(f)
                await asyncio.sleep(0)

    async def agent_frame(self, f: spdy.Frame) -> None:
        if isinstance(f, spdy.SynStream):
            await self.open(f)
        elif isinstance(f, spdy.Data):
            st = self.streams.get(f.stream_id)
            if st is None:
                return  # a refused or unknown stream's bytes go nowhere
            st.received += len(f.data)
            self.result.received += len(f.data)
            self.record_bytes(st, "to_pod", f.data)
            await self.send_cluster(f)
            st.agent_fin = st.agent_fin or f.fin
            if st.agent_fin and st.cluster_fin:
                self.close_stream(st, "fin")
        elif isinstance(f, spdy.RstStream):
            st = self.streams.get(f.stream_id)
            if st is not None:
                await self.send_cluster(f)
                self.close_stream(st, "reset by agent")
        elif isinstance(f, spdy.Ping | spdy.GoAway | spdy.Other):
            await self.send_cluster(f)
        # HEADERS (could restate a port) and SYN_REPLY (no server push here): dropped

    async def open(self, f: spdy.SynStream) -> None:
        sid = f.stream_id
        if sid <= self.last_id or sid % 2 == 0 or len(self.streams) >= MAX_STREAMS:
            await self.reset(sid, "stream id reused, even or too many streams", "", 0)
            return
        self.last_id = sid
        ports = spdy.header(f.headers, "port")
        kinds = spdy.header(f.headers, "streamtype")
        rids = spdy.header(f.headers, "requestid")
        if (
            len(ports) != 1
            or not re.fullmatch(r"[0-9]{1,5}", ports[0])  # (not str.isdigit: "²")
            or not 1 <= int(ports[0]) <= 65535
            or len(kinds) != 1
            or kinds[0] not in ("error", "data")
            or len(rids) > 1
        ):
            await self.reset(sid, "a stream without one port, stream type and request id", "", 0)
            return
        port, kind, rid = int(ports[0]), kinds[0], (rids or [""])[0][:64]
        earlier = self.requests.get(rid)
        if earlier is not None and earlier[0] == port:
            refusal = earlier[1]
        else:
            refusal = await self.judge(port)
            if len(self.requests) > 4 * MAX_STREAMS:
                self.requests.clear()
            self.requests[rid] = (port, refusal)
        if refusal is not None:
            self.result.refused += 1
            self.session.record(
                "portforward_refused",
                stream=sid,
                port=port,
                kind=kind,
                request_id=rid,
                reason=refusal,
            )
            if kind == "error":  # as the kubelet reports a port it cannot reach
                await self.send_agent(spdy.SynReply(sid), spdy.Data(sid, refusal.encode(), True))
            else:
                await self.send_agent(spdy.SynReply(sid, fin=True))
            return
        st = _Stream(sid, kind, port, rid)
        self.streams[sid] = st
        self.result.streams += 1
        if port not in self.result.ports:
            self.result.ports.append(port)
        self.session.record_later(
            "portforward_open", {"stream": sid, "port": port, "kind": kind, "request_id": rid}
        )
        # forwarded with only the headers the kubelet reads: nothing else rides along
        headers = (("port", str(port)), ("requestid", rid), ("streamtype", kind))
        await self.send_cluster(spdy.SynStream(sid, headers, fin=f.fin, priority=f.priority))
        if f.fin:
            st.agent_fin = True

    async def reset(self, sid: int, reason: str, kind: str, port: int) -> None:
        self.result.refused += 1
        self.session.record("portforward_refused", stream=sid, port=port, kind=kind, reason=reason)
        await self.send_agent(spdy.RstStream(sid, spdy.PROTOCOL_ERROR))

    # ---- cluster -> agent ----------------------------------------------------------
    async def cluster_side(self) -> None:
        async for msg in self.cluster:
            if msg.type != WSMsgType.BINARY:
                continue
            try:
                frames = self.from_cluster.feed(msg.data)
            except spdy.SpdyError as e:
                self.result.error = f"cluster: {e}"
                self.session.record("portforward_error", side="cluster", reason=str(e))
                return
            for f in frames:
                await self.cluster_frame(f)

    async def cluster_frame(self, f: spdy.Frame) -> None:
        if isinstance(f, spdy.SynStream):  # no server-initiated streams in port-forward
            await self.send_cluster(spdy.RstStream(f.stream_id, spdy.REFUSED_STREAM))
            return
        if isinstance(f, spdy.SynReply | spdy.HeadersFrame | spdy.Data | spdy.RstStream):
            st = self.streams.get(f.stream_id)
            if st is None:
                return
            if isinstance(f, spdy.Data):
                st.sent += len(f.data)
                self.result.sent += len(f.data)
                self.record_bytes(st, "to_agent", f.data)
            await self.send_agent(f)
            if isinstance(f, spdy.RstStream):
                self.close_stream(st, "reset by cluster")
            elif f.fin:
                st.cluster_fin = True
                if st.agent_fin:
                    self.close_stream(st, "fin")
            return
        await self.send_agent(f)  # PING, GOAWAY, SETTINGS, WINDOW_UPDATE


async def relay(
    request: web.BaseRequest,
    up: Upstream,
    url: URL,
    headers: list[tuple[str, str]],
    session: Session,
    judge: Judge,
    expires_at: float = 0.0,
) -> PortForwardResult:
    try:
        cluster = await up.http().ws_connect(
            url, protocols=(PROTOCOL,), headers=headers, max_msg_size=0, heartbeat=None
        )
    except aiohttp.WSServerHandshakeError as e:
        code = e.status if 400 <= e.status < 600 else 502
        msg = f"the cluster refused the port-forward ({e.status})"
        return PortForwardResult(status(code, "Failure", msg), code)
    except (aiohttp.ClientError, TimeoutError):
        msg = "the cluster is unreachable"
        return PortForwardResult(status(502, "ServiceUnavailable", msg), 502)
    if cluster.protocol != PROTOCOL:
        await cluster.close()
        msg = "the cluster does not tunnel port-forward over WebSocket (Kubernetes >= 1.31)"
        return PortForwardResult(status(502, "ServiceUnavailable", msg), 502)
    agent = web.WebSocketResponse(protocols=(PROTOCOL,), max_msg_size=MAX_MESSAGE)
    await agent.prepare(request)
    result = PortForwardResult(agent, 101)
    r = _Relay(agent, cluster, session, judge, result)
    tasks = [asyncio.ensure_future(r.agent_side()), asyncio.ensure_future(r.cluster_side())]
    try:
        timeout = None
        if expires_at:  # the tunnel lives no longer than the token it was opened with
            timeout = max(0.0, expires_at - session.clock())
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            session.record("expired", reason="token expired: the port-forward ends")
            result.error = result.error or "token expired"
            with contextlib.suppress(Exception):
                await agent.close(code=1008, message=b"hoopy: the agent's token expired")
        for t in done:
            exc = t.exception()
            if exc is not None and not isinstance(exc, ConnectionError):
                # a recorder failure, or the cluster gone mid-send: the connection ends
                result.error = result.error or f"{type(exc).__name__}: {exc}"[:200]
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await cluster.close()
        with contextlib.suppress(Exception):
            await agent.close()
        for st in list(r.streams.values()):
            r.close_stream(st, "connection ended")
        _summary(session, result)
    return result


def _summary(session: Session, result: PortForwardResult) -> None:
    fields: dict[str, Any] = {
        "streams": result.streams,
        "refused": result.refused,
        "ports": result.ports,
        "to_pod": result.received,
        "to_agent": result.sent,
    }
    if result.error:
        fields["error"] = result.error
    with contextlib.suppress(Exception):
        session.record("portforward_end", **fields)
