"""exec / attach over WebSocket: hoopy terminates the agent's WebSocket and opens its
own to the cluster, relaying frames both ways so it can record them.

Channel protocol (v4/v5.channel.k8s.io): each binary message starts with a channel
byte: 0 stdin, 1 stdout, 2 stderr, 3 error (a `Status` JSON: the exit status), 4
resize (`{"Width","Height"}`); v5 adds 255, "close this channel".  TTY sessions are
recorded as asciicast v2 (output, input, resizes); other streams as their first
`CAPTURE` bytes per channel in one `exec_io` event, with their full byte counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from hoopy.masking import ValueMasker
from hoopy.protocols.kube.status import status
from hoopy.protocols.kube.upstream import Upstream
from hoopy.recorder import AsciicastWriter
from hoopy.session import Session

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
CAPTURE = 64 * 1024
# The largest WebSocket message an agent may send (kubectl sends stdin in 32 KiB
# pieces); aiohttp holds a message whole before handing it over, so without a cap
# one agent's endless frame would exhaust the gateway's memory for every agent.
MAX_MESSAGE = 4 * 1024 * 1024
_casts = itertools.count(1)


@dataclass
class RelayResult:
    response: web.StreamResponse
    status: int
    sent: int = 0
    received: int = 0
    stdout: int = 0
    stderr: int = 0
    exit_code: int | None = None


def exit_code(raw: bytes) -> int | None:
    """The exit status a channel-3 Status carries (0 on Success)."""
    try:
        st = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(st, dict):
        return None
    if st.get("status") == "Success":
        return 0
    for cause in (st.get("details") or {}).get("causes") or []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            with contextlib.suppress(ValueError, TypeError):
                return int(str(cause.get("message")))
    return None


@dataclass
class _Recording:
    session: Session
    tty: bool
    cast: AsciicastWriter | None = None
    captured: dict[int, bytearray] = field(
        default_factory=lambda: {0: bytearray(), 1: bytearray(), 2: bytearray()}
    )
    counts: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0, 2: 0})

    def _cast(self, width: int = 80, height: int = 24) -> AsciicastWriter:
        if self.cast is None:
            self.cast = self.session.log.open_asciicast(width, height, name=f"exec-{next(_casts)}")
        return self.cast

    def data(self, channel: int, data: bytes) -> None:
        self.counts[channel] += len(data)
        if self.tty:
            if channel == 0:
                self._cast().input(data)
            else:
                self._cast().output(data)
            return
        buf = self.captured[channel]
        if len(buf) < CAPTURE:
            buf += data[: CAPTURE - len(buf)]

    def resize(self, raw: bytes) -> None:
        try:
            size = json.loads(raw)
            width, height = int(size["Width"]), int(size["Height"])
        except (ValueError, KeyError, TypeError):
            return
        if self.cast is None and self.tty:
            self._cast(width, height)
        elif self.cast is not None:
            self.cast.resize(width, height)

    def finish(self, code: int | None) -> None:
        if self.cast is not None:
            with contextlib.suppress(Exception):
                self.cast.close()
        names = {0: "stdin", 1: "stdout", 2: "stderr"}
        fields: dict[str, Any] = {"exit": code, "tty": self.tty}
        for ch, name in names.items():
            fields[f"{name}_bytes"] = self.counts[ch]
            if not self.tty and self.captured[ch]:
                fields[name] = self.captured[ch].decode("utf-8", "replace")
                fields[f"{name}_truncated"] = self.counts[ch] > CAPTURE
        self.session.record("exec_io", **fields)


class _Lines:
    """Mask rules' detectors over one output channel.  Bytes are read as Latin-1 (one
    character per byte) so nothing but a detected value changes, even in binary
    streams.  Without a TTY, output is held back to whole lines (up to CAPTURE bytes)
    so a value split across frames is still seen; with one, each frame is masked as
    it comes (an interactive prompt must not wait for a newline)."""

    def __init__(self, masker: ValueMasker, tty: bool) -> None:
        self.masker = masker
        self.tty = tty
        self.held = b""

    def feed(self, data: bytes, final: bool = False) -> bytes:
        data = self.held + data
        if self.tty or final:
            self.held = b""
            cut = len(data)
        else:
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) > CAPTURE:
                cut = len(data)
            self.held = data[cut:]
        if not cut:
            return b""
        text, _ = self.masker.mask_text(data[:cut].decode("latin-1"))
        return text.encode("latin-1", "replace")


async def until_expiry(session: Session, work: asyncio.Future[Any], expires: float) -> bool:
    """Wait for `work` (its exception, if any, is raised); False, with `work` cancelled
    and the expiry recorded, if the token the stream was opened with (expiring at
    `expires`, 0: never) expires first.  A stream lives no longer than its token (as an
    SSH channel or a PostgreSQL session does)."""
    if not expires:
        await work
        return True
    try:
        await asyncio.wait_for(asyncio.shield(work), max(0.0, expires - session.clock()))
    except TimeoutError:
        if work.done():
            work.result()
            return True
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        session.record("expired", reason="token expired: the stream ends")
        return False
    return True


def expired_status() -> bytes:
    """The error channel's last word when the token expired (kubectl prints it)."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "hoopy: the agent's token expired; the stream ends (get a fresh token)",
            "reason": "Unauthorized",
            "code": 401,
        }
    ).encode()


async def relay(
    request: web.BaseRequest,
    up: Upstream,
    url: URL,
    headers: list[tuple[str, str]],
    session: Session,
    tty: bool,
    masker: ValueMasker | None = None,
    stdin: bool = True,
    expires_at: float = 0.0,
) -> RelayResult:
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    protocols = [p for p in offered if p in PROTOCOLS]
    if not protocols:
        msg = (
            "hoopy relays exec over v5.channel.k8s.io or v4.channel.k8s.io: "
            "use kubectl 1.30 or newer"
        )
        return RelayResult(status(400, "BadRequest", msg), 400)
    try:
        upstream = await up.http().ws_connect(
            url, protocols=protocols, headers=headers, max_msg_size=0, autoping=True, heartbeat=None
        )
    except aiohttp.WSServerHandshakeError as e:
        code = e.status if 400 <= e.status < 600 else 502
        return RelayResult(
            status(code, "Failure", f"the cluster refused the exec ({e.status})"), code
        )
    except (aiohttp.ClientError, TimeoutError):
        return RelayResult(status(502, "ServiceUnavailable", "the cluster is unreachable"), 502)
    ws = web.WebSocketResponse(
        protocols=(upstream.protocol or protocols[0],), max_msg_size=MAX_MESSAGE
    )
    await ws.prepare(request)
    rec = _Recording(session, tty)
    result = RelayResult(ws, 101)

    async def to_cluster() -> None:
        async for msg in ws:
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                # the cluster reads a text message's bytes as a binary one's: a text
                # message was sent on unread (stdin without stdin=true, unrecorded)
                data = msg.data.encode() if msg.type == WSMsgType.TEXT else msg.data
                if data[:1] == b"\x00" and not stdin:
                    continue  # the policy judged a request without input: none goes
                if data[:1] == b"\x00":
                    rec.data(0, data[1:])
                    result.received += len(data) - 1
                elif data[:1] == b"\x04":
                    rec.resize(data[1:])
                await upstream.send_bytes(data)
        await upstream.close()

    lines = {1: _Lines(masker, tty), 2: _Lines(masker, tty)} if masker is not None else None

    async def flush() -> None:
        for c, held in (lines or {}).items():
            rest = held.feed(b"", final=True)
            if rest:
                rec.data(c, rest)
                result.sent += len(rest)
                await ws.send_bytes(bytes([c]) + rest)

    async def to_agent() -> None:
        async for msg in upstream:
            if msg.type != WSMsgType.BINARY:
                continue
            data = msg.data
            ch = data[0] if data else -1
            if lines is not None and ch in (1, 2):
                data = bytes([ch]) + lines[ch].feed(data[1:])
                if len(data) == 1:
                    continue
            elif lines is not None and ch == 3:  # the end: what is held back goes first
                await flush()
            if ch in (1, 2):
                rec.data(ch, data[1:])
                result.sent += len(data) - 1
                if ch == 1:
                    result.stdout += len(data) - 1
                else:
                    result.stderr += len(data) - 1
            elif ch == 3:
                result.exit_code = exit_code(data[1:])
            await ws.send_bytes(data)
        await flush()
        code = upstream.close_code or 1000
        if code in (1005, 1006, 1015):  # reported locally, never sent in a close frame
            code = 1000 if result.exit_code is not None else 1011
        await ws.close(code=code)

    agent_side = asyncio.ensure_future(to_cluster())
    main = asyncio.ensure_future(to_agent())
    try:
        if not await until_expiry(session, main, expires_at):
            # the agent's token ran out: the stream it opened ends with it
            rest = expired_status()
            with contextlib.suppress(Exception):
                await ws.send_bytes(b"\x03" + rest)
                await ws.close(code=1000)
    finally:
        main.cancel()
        with contextlib.suppress(BaseException):
            await main
        agent_side.cancel()
        with contextlib.suppress(BaseException):
            await agent_side
        await upstream.close()
        rec.finish(result.exit_code)
    return result
