"""TCP forwarding (`direct-tcpip`: `ssh -L`, `ssh -W`) through hoopy, where policy allows.

Theory of operation: asyncssh hands the agent's channel-open request to
`AgentConnection.connection_requested`, which returns `open_forward(...)`, a coroutine
asyncssh awaits before it answers the open, so the agent's channel waits while hoopy
decides (and while an approver does).  The destination is normalised by
`hoopy.netdest` (ambiguous forms are refused), then it becomes a protocol-neutral
`Command` (kind `forward_tcp`, text `forward to host:port`) checked through
`session.check`: deny and require_approval rules apply as to any command, and only an
allow rule naming the destination in `ssh.forward` opens it.  Where a mask rule with
detectors applies to the session, forwarding is refused before that: an arbitrary
byte stream cannot be masked (as SFTP reads are refused).

An allowed destination is opened by the *backend* connection (asyncssh
`create_connection`: the backend sshd's own direct-tcpip), so it is reached from the
backend host, as `ssh -L` to that host would.  `Relay` then joins the two channels
with callbacks, as `channel.Bridge` does: end-to-end flow control (a side whose send
buffer passes its high-water mark pauses reading the other side, which stops granting it
window), EOF and close relayed both ways.  A forward ends when the agent's token expires
(an `expired` event), as a Kubernetes port-forward tunnel does.

Recording: the `command` event (destination, decision, rule), `forward_open`,
`forward_data` events holding the bytes themselves (as `text` when a chunk is UTF-8,
else `b64`; at most DATA_EVENT bytes per event and `ssh.record_bytes` per direction,
then a `recording_capped` event), and `forward_close` (bytes each way, duration, who
closed).  They are all in the hash-chained log, so `hoopy verify` covers them.  Data
events are coalesced (written when DATA_EVENT bytes are pending, when the other side
speaks, after FLUSH_DELAY, at EOF and close) so a stream of tiny packets does not
become a flood of events; so up to DATA_EVENT bytes per direction may have passed
before they are on disk.  A recorder failure closes the forward.  Refusals are
`refused` events (or the denied `command`) plus the agent's channel-open failure
(OPEN_ADMINISTRATIVELY_PROHIBITED, reason included, which `ssh` prints).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncssh

from hoopy.errors import HoopyError
from hoopy.netdest import Destination, destination
from hoopy.policy import FORWARD, Command, identity_masks
from hoopy.protocols.ssh.channel import BACKEND_PACKET, BACKEND_WINDOW, NOTIFY, limit_buffers
from hoopy.recorder import RecorderError

if TYPE_CHECKING:
    from hoopy.protocols.ssh.proxy import AgentConnection

log = logging.getLogger("hoopy.ssh.forward")

DATA_EVENT = 16 * 1024  # forwarded bytes per recorded event, at most
FLUSH_DELAY = 0.2  # s: recorded bytes wait at most this long to be coalesced
SHOWN_TARGET = 300  # characters of a refused, unparsable destination kept in the record
PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED


def _shown(host: str, port: int) -> str:
    """A refused destination as recorded: bounded, control characters escaped."""
    text = host if len(host) <= SHOWN_TARGET else host[:SHOWN_TARGET] + "…"
    return f"{ascii(text)[1:-1]}:{port}"


async def open_forward(
    conn: AgentConnection, host: str, port: int, orig_host: str, orig_port: int
) -> asyncssh.SSHTCPSession[bytes]:
    """What asyncssh awaits for a direct-tcpip open: the agent side of a Relay, or a
    ChannelOpenError with the reason.  `conn.open_channels` counts it until it ends."""
    task = asyncio.current_task()
    if task is not None:
        conn.forward_tasks.add(task)  # cancelled if the agent leaves while it waits
    opened = False
    try:
        relay = await _open(conn, host, port, _shown(orig_host, orig_port))
        opened = True
        return relay.agent_side
    except asyncssh.ChannelOpenError:
        raise
    except asyncio.CancelledError:  # the agent left: asyncssh answers nobody
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "cancelled") from None
    except HoopyError as e:  # the recorder failed: nothing opens unrecorded
        raise asyncssh.ChannelOpenError(PROHIBITED, f"hoopy: {e.message}") from None
    except Exception:  # never an unanswered open, never the exception's text
        log.exception("opening a forward failed")
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_CONNECT_FAILED, "hoopy: internal error"
        ) from None
    finally:
        if task is not None:
            conn.forward_tasks.discard(task)
        if not opened:
            conn.open_channels -= 1


async def _open(conn: AgentConnection, host: str, port: int, origin: str) -> Relay:
    session = conn.session
    try:
        dest = destination(host, port)
    except ValueError as e:
        raise _refuse(conn, _shown(host, port), str(e)) from None
    masks = identity_masks(session.policies, session.identity, session.connector)
    if masks.detectors:
        rules = ", ".join(r for r, e in zip(masks.rules, masks.entries, strict=True) if e.detectors)
        raise _refuse(
            conn,
            str(dest),
            f"mask rule '{rules}' applies here and a forwarded byte stream cannot be "
            "masked; run commands instead (their output is masked)",
            masks=rules,
        )
    command = Command(
        "ssh",
        session.connector,
        f"forward to {dest}",
        kinds=frozenset({FORWARD}),
        fingerprint=f"ssh:forward:{dest}",
        forward=dest.forms(),
    )
    token = NOTIFY.set(lambda message: _debug(conn, message))
    try:
        decision = await session.check(command)
    except HoopyError as e:
        conn.gw.metrics.inc('ssh_forwarding_refused_total|kind="direct-tcpip"')
        raise asyncssh.ChannelOpenError(PROHIBITED, f"hoopy: {e.message}") from None
    finally:
        NOTIFY.reset(token)
    try:
        backend = await conn.backend()
    except HoopyError as e:
        session.record("forward_failed", destination=str(dest), reason=e.message)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, e.message) from None
    conn.channels += 1
    relay = Relay(conn, conn.channels, dest)
    try:
        chan, _ = await backend.create_connection(
            lambda: relay.backend_side,
            dest.host,
            dest.port,
            window=BACKEND_WINDOW,
            max_pktsize=BACKEND_PACKET,
        )
    except asyncssh.ChannelOpenError as e:
        reason = f"the backend could not open {dest}: {e.reason}"
        session.record("forward_failed", forward=relay.number, destination=str(dest), reason=reason)
        raise asyncssh.ChannelOpenError(e.code, f"hoopy: {reason}") from None
    except (asyncssh.Error, OSError) as e:
        reason = f"the backend connection failed ({type(e).__name__})"
        session.record("forward_failed", forward=relay.number, destination=str(dest), reason=reason)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, f"hoopy: {reason}") from None
    relay.backend = chan
    try:
        session.record(
            "forward_open",
            forward=relay.number,
            destination=str(dest),
            origin=origin,
            rule=decision.rule,
        )
    except HoopyError:
        relay.closed = True  # open_forward gives the channel count back
        chan.close()
        raise
    conn.gw.metrics.inc("ssh_forwards_total")
    if session.identity.expires_at:  # a forward lives no longer than its token
        delay = max(0.0, session.identity.expires_at - session.clock())
        relay.expiry = asyncio.get_running_loop().call_later(delay, relay.expire)
    return relay


def _refuse(
    conn: AgentConnection, target: str, reason: str, **fields: Any
) -> asyncssh.ChannelOpenError:
    conn.gw.metrics.inc('ssh_forwarding_refused_total|kind="direct-tcpip"')
    with contextlib.suppress(HoopyError):
        conn.session.record("refused", what="direct-tcpip", target=target, reason=reason, **fields)
    return asyncssh.ChannelOpenError(PROHIBITED, f"hoopy: {reason}")


def _debug(conn: AgentConnection, message: str) -> None:
    """A note while the open waits (an approval): an SSH debug message (`ssh -v` shows
    it; a channel being opened has no stderr yet)."""
    if conn.conn is not None:
        with contextlib.suppress(Exception):
            conn.conn.send_debug(f"hoopy: {message}", always_display=True)


class Relay:
    """One forwarded connection: the agent's channel and the backend's, joined."""

    def __init__(self, conn: AgentConnection, number: int, dest: Destination) -> None:
        self.conn = conn
        self.number = number
        self.dest = dest
        self.agent: asyncssh.SSHTCPChannel[bytes] | None = None
        self.backend: asyncssh.SSHTCPChannel[bytes] | None = None
        self.agent_side = _Side(self, True)
        self.backend_side = _Side(self, False)
        self.started = time.monotonic()
        self.bytes = {"to": 0, "from": 0}  # to the destination, from it
        self.recorded = {"to": 0, "from": 0}  # written to the log
        self.pending = {"to": bytearray(), "from": bytearray()}  # not yet (see _record)
        self._timer: asyncio.TimerHandle | None = None
        self._early: list[bytes] = []  # from the destination before the agent's side opened
        self._early_eof = False
        self._backend_gone: tuple[Exception | None] | None = None
        self.expiry: asyncio.TimerHandle | None = None  # the token's end (see _open)
        self.ended_by = ""  # "expiry" when hoopy ended it (else the side that closed)
        self.closed = False

    def channel(self, agent: bool) -> asyncssh.SSHTCPChannel[bytes] | None:
        return self.agent if agent else self.backend

    # ---- callbacks (from _Side) ------------------------------------------------------
    def made(self, agent: bool, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        if not agent:
            self.backend = chan
            return
        self.agent = chan
        if self.backend is not None:
            limit_buffers(chan, self.backend)
            limit_buffers(self.backend, chan)
        early, self._early = self._early, []
        for data in early:
            self.data(False, data)
        if self._early_eof:
            chan.write_eof()
        if self.backend is not None:
            self.backend.resume_reading()
        if self._backend_gone is not None:  # the destination went meanwhile: now it ends
            self.lost(False, self._backend_gone[0])

    def data(self, from_agent: bool, data: bytes) -> None:
        if self.closed:
            return
        peer = self.channel(not from_agent)
        if peer is None:  # the destination spoke first; the agent's side is not open yet
            self._early.append(data)
            if self.backend is not None:
                self.backend.pause_reading()
            return
        direction = "to" if from_agent else "from"
        self.bytes[direction] += len(data)
        if not self._record(direction, data):
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            peer.write(data)

    def eof(self, from_agent: bool) -> None:
        self._flush_all()
        peer = self.channel(not from_agent)
        if peer is None:
            self._early_eof = True
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            peer.write_eof()

    def pause(self, agent: bool, paused: bool) -> None:
        """`agent`'s side cannot take more: stop reading the other side (or resume)."""
        other = self.channel(not agent)
        if other is not None:
            other.pause_reading() if paused else other.resume_reading()

    def lost(self, agent: bool, exc: Exception | None) -> None:
        if self.closed:
            return
        if not agent and self.agent is None:  # before the agent's side opened: what
            self._backend_gone = (exc,)  # came first is relayed then (see `made`)
            return
        self.closed = True
        self.conn.open_channels -= 1
        if self.expiry is not None:
            self.expiry.cancel()
        self._flush_all()
        self._event(
            "forward_close",
            forward=self.number,
            destination=str(self.dest),
            closed_by=self.ended_by or ("agent" if agent else "destination"),
            bytes_to=self.bytes["to"],
            bytes_from=self.bytes["from"],
            duration=round(time.monotonic() - self.started, 3),
            **({"error": type(exc).__name__} if exc else {}),
        )
        other = self.channel(not agent)
        if other is not None:
            other.close()

    def expire(self) -> None:
        """The agent's token ran out: the forward ends (as a Kubernetes tunnel does)."""
        self.expiry = None
        if self.closed:
            return
        self.ended_by = "expiry"
        self._flush_all()
        self._event("expired", forward=self.number, reason="token expired: the forward ends")
        for chan in (self.agent, self.backend):
            if chan is not None:
                chan.close()

    # ---- recording -------------------------------------------------------------------
    def _record(self, direction: str, data: bytes) -> bool:
        """The bytes into the chained log, up to the cap, coalesced: an event per
        DATA_EVENT bytes, per turn of the conversation, or per FLUSH_DELAY of quiet, not
        per SSH packet.  False if the recorder failed (the forward is then closed)."""
        cap = self.conn.listener.gw.config.ssh.record_bytes
        buf = self.pending[direction]
        room = cap - self.recorded[direction] - len(buf)
        if room <= 0:
            return True
        other = "from" if direction == "to" else "to"
        if self.pending[other] and not self._flush(other):
            return False
        buf += data[:room]
        if room <= len(data):  # the cap: all of it, then the mark
            return self._flush(direction) and self._event(
                "recording_capped", forward=self.number, stream=direction, bytes=cap
            )
        whole = len(buf) - len(buf) % DATA_EVENT
        if whole and not self._flush(direction, whole):
            return False
        if buf and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(FLUSH_DELAY, self._flush_all)
        return True

    def _flush(self, direction: str, upto: int | None = None) -> bool:
        buf = self.pending[direction]
        end = len(buf) if upto is None else upto
        for at in range(0, end, DATA_EVENT):
            chunk = bytes(buf[at : min(at + DATA_EVENT, end)])
            try:
                shown = {"text": chunk.decode("utf-8")}
            except UnicodeDecodeError:
                shown = {"b64": base64.b64encode(chunk).decode("ascii")}
            offset = self.recorded[direction]
            if not self._event(
                "forward_data", forward=self.number, dir=direction, offset=offset, **shown
            ):
                return False
            self.recorded[direction] += len(chunk)
        del buf[:end]
        return True

    def _flush_all(self) -> bool:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self._flush("to") and self._flush("from")

    def _event(self, kind: str, **fields: Any) -> bool:
        try:
            self.conn.session.log.event(kind, **fields)
            return True
        except RecorderError as e:
            log.error("%s", e)
            for chan in (self.agent, self.backend):
                if chan is not None:
                    chan.close()
            return False


class _Side(asyncssh.SSHTCPSession[bytes]):
    """asyncssh's callbacks for one of a Relay's two channels."""

    def __init__(self, relay: Relay, agent: bool) -> None:
        self.relay = relay
        self.agent = agent

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.relay.made(self.agent, chan)

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.relay.data(self.agent, data)

    def eof_received(self) -> bool:
        self.relay.eof(self.agent)
        return True  # half-close: the other direction still flows

    def pause_writing(self) -> None:
        self.relay.pause(self.agent, True)

    def resume_writing(self) -> None:
        self.relay.pause(self.agent, False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost(self.agent, exc)
