"""The data phase of a PostgreSQL session: agent ⇄ hoopy ⇄ PostgreSQL after login.

Theory of operation
-------------------
After login both sockets get Protocol callbacks (pump.py); a batch of messages is
handled in the callback that delivered it, or in a task when it may wait (approval,
masking catalog lookups).  Sessions without masking never need a task until a
statement needs an approval: their bytes are checked, recorded and forwarded
synchronously, and result runs from the server go through as the bytes they came in
(`ClientConnection.relay_run`), looked at only to record them.

Agent → backend: every Query and Parse is classified (libpg_query) and checked through
`Session.check`; anything else is forwarded byte-for-byte.  A statement the classifier
has cached (seen before, with these or other literals) takes a shorter lane to the same
check (`StatementCheck._seen`, cmdlane.py: compiled when built), a lone Query straight
from the codec's buffer without an event; so does the usual extended-protocol batch
of one ([Parse] Bind [Describe] Execute Sync: bindlane.py).  A refused message is
*substituted*, not dropped: hoopy sends the server a statement that is a guaranteed
syntax error carrying a per-session nonce (the "marker").  The server then answers
exactly where the refused message stood — ErrorResponse, discard-until-Sync, aborted
transaction, ReadyForQuery — so ordering and transaction state are PostgreSQL's own,
and the backend → agent side swaps the marker's error for hoopy's 42501/42601.

Backend → agent: DataRow runs are only decoded for the first rows a statement records.
ErrorResponse/NoticeResponse/ParameterStatus are scrubbed of the backend credentials.
A statement that would make the server read later texts otherwise than hoopy does
(standard_conforming_strings off, a client-only multibyte encoding) is refused as a
statement (textsettings.py); such a switch hoopy could not see coming (a function, a
role default), reported by the server, ends the session: fail closed.  Fast-path
function calls are checked as calls of the function their OID names (fastpath.py).
Masking sessions track every result to its statement and rewrite rows
(results.py, rowmask.py).

Where: this module holds the pumps (both sockets' callbacks, the agent's batches and
every agent message but Query, Parse and FunctionCall) and the recording writes that
precede forwarding; the statement checks are in statementcheck.py, the Bind gate in
bindcheck.py, the backend → agent path in answers.py, the pipeline's bookkeeping in
pipeline.py: all base classes of `Relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from hoopy.errors import (
    CommandDenied,
    ProtocolError,
    RecordingFailed,
    UnparseableCommand,
)
from hoopy.gateway import Gateway
from hoopy.protocols.postgres import backend as be
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.answers import Answers
from hoopy.protocols.postgres.bindlane import BindLane
from hoopy.protocols.postgres.maskwire import track
from hoopy.protocols.postgres.pipeline import interrupts_copy
from hoopy.protocols.postgres.pump import Eager, Pipe
from hoopy.recorder import RecorderError

log = logging.getLogger("hoopy.postgres")

READ_SIZE = 256 * 1024


class Relay(BindLane, Answers):
    """The relay half of `proxy.AgentConnection` (its base class): what runs once the
    agent is logged in and a backend connection is attached."""

    # Set by AgentConnection before the relay starts.
    gw: Gateway
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    codec: pg.ServerConnection
    outcome: str
    _agent_events: list[pg.FrontendEvent]

    async def _relay(self) -> None:
        """Both sockets switch to Pipe protocols (see pump.py) until the session ends."""
        assert self.backend is not None
        loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[None] = loop.create_future()
        self._agent_closed: asyncio.Future[None] = loop.create_future()
        at = cast(asyncio.Transport, self.writer.transport)
        bt = cast(asyncio.Transport, self.backend.writer.transport)
        agent_left = _take_buffer(self.reader)
        backend_left = _take_buffer(self.backend.reader)
        original = bt.get_protocol()
        assert self.session is not None
        # One recording write per relayed batch (see _flush and _to_agent), not per event.
        self._log = self.session.log
        self._log.defer()
        self._unwritten = self._log.pending  # non-empty: events to write before forwarding
        self._columns: dict[bytes, tuple[str, ...]] = {}  # RowDescription → column names
        self._agent_write = at.write  # the transports' own: no StreamWriter layer per write
        self._backend_write = bt.write
        self._agent_pump = Eager(at, self._agent_batch, self._agent_again, self._end)
        self._agent_pump.pause_when_busy = False  # an approval wait must see the agent leave
        self._backend_pump = Eager(bt, self._backend_batch, self._backend_again, self._end)
        at.set_protocol(Pipe(self._agent_data, self._agent_gone, self._agent_pressure))
        bt.set_protocol(Pipe(self._backend_data, self._backend_gone, self._backend_pressure))
        try:
            if agent_left or self.codec.buffered():  # sent along with the password
                self._agent_data(agent_left)
            if backend_left:
                self._backend_data(backend_left)
            await self._ended
        finally:
            with contextlib.suppress(RecorderError):
                self._log.defer(False)  # what follows (the session's end) writes per event
            for pump in (self._agent_pump, self._backend_pump):
                if pump.task is not None:
                    pump.task.cancel()
                    with contextlib.suppress(BaseException):
                        await pump.task
            if not bt.is_closing():
                bt.set_protocol(original)  # the pool reads it with its StreamReader again
                bt.resume_reading()

    def _end(self, error: BaseException | None = None) -> None:
        if not self._ended.done():
            if error is None:
                self._ended.set_result(None)
            else:
                self._ended.set_exception(error)

    # agent side
    def _agent_data(self, data: bytes) -> None:
        pump = self._agent_pump
        try:
            self.codec.receive_data(data)
            if pump.task is not None:  # busy
                if self.codec.buffered() > READ_SIZE * 4:
                    cast(asyncio.Transport, self.writer.transport).pause_reading()  # resumed later
                return
            if self.planner is None:
                lane = self.codec.fast_batch()
                if lane is not None:
                    if type(lane) is list:  # [Parse] Bind [Describe] Execute Sync: bindlane.py
                        self._bind_batch(lane)
                    else:  # one Query, alone: the usual simple-protocol batch
                        self._lone_query(*lane)
                    return
            events = self.codec.events()
            if not events:
                return
            if self.planner is None:
                self._agent_batch_now(events)
                return
            self._agent_events = events  # masking: catalog queries need a task
        except BaseException as e:
            self._end(e)
            return
        pump.run(eager=False)

    def _agent_again(self) -> None:
        if self.codec.buffered():
            self._agent_data(b"")

    def _agent_gone(self, exc: BaseException | None) -> None:
        if not self._agent_closed.done():
            self._agent_closed.set_result(None)
        if self.outcome == "closed" and not self._ended.done():
            self.outcome = "disconnected"
        self._end()

    def _agent_pressure(self, full: bool) -> None:
        """The agent reads slowly: stop reading the backend until it catches up."""
        assert self.backend is not None
        bt = cast(asyncio.Transport, self.backend.writer.transport)
        if bt.is_closing():
            return
        if full:
            bt.pause_reading()
        elif not self._backend_pump.busy:
            bt.resume_reading()

    # backend side
    def _backend_data(self, data: bytes) -> None:
        assert self.backend is not None
        codec = self.backend.codec
        try:
            codec.receive_data(data)
            if self.tracker is None:
                self._relay_backend()  # nothing in it waits: no coroutine, no task
                return
            if self._backend_pump.task is not None:
                return  # the running batch takes these bytes up when it ends
            # Only complete messages start a batch: a task per partial message would
            # pause reading before the rest of it could arrive (a livelock).
            events = codec.events()
            if not events:
                return
            self._backend_events = events
        except BaseException as e:
            self._end(e)
            return
        self._backend_pump.run(eager=False)

    def _backend_again(self) -> None:
        assert self.backend is not None
        if self.backend.codec.buffered():
            self._backend_data(b"")

    def _backend_gone(self, exc: BaseException | None) -> None:
        self._end(be.BackendUnavailable("the database closed the connection"))

    def _backend_pressure(self, full: bool) -> None:
        at = cast(asyncio.Transport, self.writer.transport)
        if at.is_closing():
            return
        if full:
            at.pause_reading()
        elif not self._agent_pump.busy:
            at.resume_reading()

    def _lone_query(self, raw: bytes, sql: str) -> None:
        """A batch of one Query (codec.lone_query): by the cached-statement lane when it
        can go by it (`_seen`), else as the one event of `_agent_batch_now`."""
        out: list[bytes] = []
        if self.extended_open or self.copy_in_flight or not self._seen(raw, sql, None, out):
            self._agent_batch_now([pg.Query(sql, raw)])
            return
        self._flush(out)

    def _agent_batch_now(
        self, events: list[pg.FrontendEvent], out: list[bytes] | None = None
    ) -> None:
        """`_agent_batch` without a coroutine, for sessions without masking, until a
        statement needs an approval: from there on the messages wait in a task.
        `out`: what the batch forwards before `events` (the Bind lane's fallback)."""
        if out is None:
            out = []
        for i, ev in enumerate(events):
            t = type(ev)
            if t is pg.Query or t is pg.Parse:
                st: pg.Query | pg.Parse = ev  # type: ignore[assignment]
                self._enter(t, out)
                if self._seen(st.raw, st.sql, None if t is pg.Query else ev.name, out):  # type: ignore[union-attr]
                    continue
                try:
                    # A text that must wait (see _settled_parse) or needs an approval:
                    # what came before is forwarded, the rest waits in the task.
                    waits = (b"\\" in st.raw and self._answers_pending()) or not (
                        self.listener.classification.inline(st.sql)
                    )
                    if not waits:
                        cmds = self._commands(st.sql)
                        waits = self._check_now(cmds, t is pg.Parse) is None
                    if waits:
                        self._flush(out)
                        self._agent_events = events[i:]
                        self._agent_pump.run(eager=False)
                        return
                except (CommandDenied, UnparseableCommand, RecordingFailed) as e:
                    out.append(self._refused(st, e))
                    continue
                out.append(self._allowed(st, cmds))
            elif t is pg.FunctionCall:  # its OID is resolved over the catalog: in the task
                self._flush(out)
                self._agent_events = events[i:]
                self._agent_pump.run(eager=False)
                return
            elif t is pg.Bind or (t is pg.Passthrough and 0x42 in ev.types):  # type: ignore[union-attr]
                binds = self._binds_free(ev)  # type: ignore[arg-type]
                if binds is None:  # one waits for an approval, or is refused: in the task
                    self._flush(out)
                    self._agent_events = events[i:]
                    self._agent_pump.run(eager=False)
                    return
                self._other_agent_event(ev, out, binds)
            elif not self._other_agent_event(ev, out):
                return
        self._flush(out)

    async def _agent_batch(self) -> None:
        """Every complete message the agent sent so far: check, record, forward."""
        assert self.backend is not None
        out: list[bytes] = []
        events, self._agent_events = self._agent_events, []
        for ev in events:
            t = type(ev)
            if t is pg.Query or t is pg.Parse:
                st: pg.Query | pg.Parse = ev  # type: ignore[assignment]
                self._enter(t, out)
                try:
                    if b"\\" in st.raw and self._answers_pending():
                        await self._settled_parse(out, st.sql)
                    cmds = await self._check_all(st.sql, out, t is pg.Parse)
                except (CommandDenied, UnparseableCommand, RecordingFailed) as e:
                    out.append(self._refused(st, e))
                    continue
                out.append(self._allowed(st, cmds))
            elif t is pg.FunctionCall:
                if self.extended_open:
                    # after an error the server skips it to the Sync, and its refusal's
                    # marker Query would go unanswered (see _enter): hoopy cannot place it
                    raise ProtocolError(
                        "a fast-path function call inside an extended-protocol batch "
                        "(before its Sync) is not supported through hoopy; session closed"
                    )
                if self.copy_in_flight:
                    self._copy_interrupted("a FunctionCall message")
                out.append(await self._fast_path(cast(pg.FunctionCall, ev), out))
            elif t is pg.Bind or (t is pg.Passthrough and 0x42 in ev.types):  # type: ignore[union-attr]
                binds = self._binds_free(ev)  # type: ignore[arg-type]
                if binds is not None:
                    self._other_agent_event(ev, out, binds)
                else:
                    await self._gated_binds(ev, out)  # type: ignore[arg-type]
            elif not self._other_agent_event(ev, out):
                return
        self._flush(out)

    def _other_agent_event(
        self, ev: pg.FrontendEvent, out: list[bytes], binds: list[pg.Bind] | None = None
    ) -> bool:
        """Every message but Query and Parse; False once the agent said Terminate.
        `binds`: the Binds of `ev`, when decoded already."""
        t = type(ev)
        if t is pg.Sync:
            if self.copy_in_flight:
                # PostgreSQL ignores a Sync during COPY FROM STDIN, or answers it when
                # the COPY failed to start: which, hoopy learns only later, and masking
                # must not guess which result belongs to which statement.
                if self.tracker is not None:
                    raise ProtocolError(
                        "Sync before the end of a COPY FROM STDIN is not supported in "
                        "masked sessions; session closed"
                    )
                self.sync_in_copy = True
            self.names.sent += 1  # batches_sent, without its property on every Sync
            self.unsynced_execute = self.extended_open = False
            if self.tracker is not None:
                self.tracker.sync()
            out.append(ev.raw)
        elif self.copy_in_flight and interrupts_copy(ev):
            self._copy_interrupted(f"a {t.__name__} message")
        elif t is pg.Close:
            # A Close never fails ("not an error" for a name that does not exist), so
            # it opens no batch a later simple Query could be discarded in (asyncpg
            # closes a statement, then sends COPY as a Query, before any Sync).
            self._on_close(ev)  # type: ignore[arg-type]
            out.append(ev.raw)
        elif t is pg.Terminate:
            self._flush(out)
            self.outcome = "closed"
            self._end()
            return False
        elif t is pg.FunctionCall:  # _agent_batch checks these; never forwarded unchecked
            raise ProtocolError("a fast-path function call hoopy did not check; session closed")
        else:
            special = self.names.special and (t is pg.Execute or t is pg.Passthrough)
            if special and self._gated_executes(ev, out):
                return True
            if self.tracker is not None and t is not pg.Bind:
                track(self.tracker, ev)
            if t is pg.Passthrough:
                types = ev.types  # type: ignore[union-attr]
                if 0x42 in types:
                    for bind in binds or pg.decode_binds(ev.raw, types):
                        self._record_bind(bind)
                if 0x45 in types:
                    self.unsynced_execute = True
                    if any(self._portal_copies.values()):
                        self._copy_starts()  # an Execute of a bound COPY FROM STDIN
                if 0x63 in types:
                    self._copy_may_commit()
                    if types.rfind(b"c") > types.rfind(b"E"):
                        self.copy_in_flight = False  # its CopyDone
                if 0x42 in types or 0x44 in types or 0x45 in types:
                    self.extended_open = True
            elif t is pg.Bind:
                bind = cast(pg.Bind, ev)
                binding = self._record_bind(bind)
                if self.tracker is not None:
                    track(self.tracker, bind, binding)
                self.extended_open = True
            elif t is pg.Execute:
                self.unsynced_execute = self.extended_open = True
                if self._portal_copies.get(ev.portal):  # type: ignore[union-attr]
                    self._copy_starts()
            elif t is pg.CopyDone or t is pg.CopyFail:
                if t is pg.CopyDone:
                    self._copy_may_commit()
                self.copy_in_flight = False
            elif t is pg.Describe:
                self.extended_open = True
            out.append(ev.raw)
        return True

    def _copy_may_commit(self) -> None:
        """A CopyDone commits what a COPY FROM STDIN sent: not once the token expired
        (the session ends before it goes, and the server drops the COPY)."""
        assert self.session is not None
        self.session.check_alive("copy", "CopyDone of COPY FROM STDIN")

    def _flush(self, out: list[bytes]) -> None:
        """Send what the batch forwards so far (all of it, or what precedes a command
        that may block on approval), its events (commands, Binds) written first."""
        if self._unwritten:
            self._write_events()  # raises: then nothing is forwarded
        self.binds_unwritten = False
        if out:
            self._backend_write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _to_agent(self, out: list[bytes]) -> None:
        """Send the agent what the backend's batch answered, its events (results,
        errors) written first: nothing the agent sees is missing from the recording
        should hoopy stop right after (rows of a long result stream ahead of its
        result event, which is written before the result's end is sent)."""
        if self._unwritten:
            self._write_events()
        self._agent_write(out[0] if len(out) == 1 else b"".join(out))

    def _write_events(self) -> None:
        """The deferred events (recorded through the session), written; a failure ends
        the session (fail closed: what they record is neither forwarded nor shown, and
        no later command could be recorded)."""
        try:
            self._log.flush()
        except RecorderError as e:
            self._write_failed(e)  # answers.Answers: the session ends


def _take_buffer(reader: asyncio.StreamReader) -> bytes:
    """Bytes a StreamReader holds that nobody has read yet (handed to the pump)."""
    buf = getattr(reader, "_buffer", None)
    if not buf:
        return b""
    data = bytes(buf)
    buf.clear()
    return data
