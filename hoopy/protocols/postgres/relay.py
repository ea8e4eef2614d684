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
`Session.check`; anything else is forwarded byte-for-byte.  A refused message is
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from hoopy.config import PostgresConnector, PostgresSettings
from hoopy.errors import (
    CommandDenied,
    HoopyError,
    ProtocolError,
    RecordingFailed,
    UnparseableCommand,
)
from hoopy.gateway import Gateway
from hoopy.policy import Command, Decision
from hoopy.protocols.postgres import backend as be
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres import fastpath as fp
from hoopy.protocols.postgres import grammarerrors as grammar
from hoopy.protocols.postgres.bindgate import bound_command, single, split_run
from hoopy.protocols.postgres.classify import SqlParseError
from hoopy.protocols.postgres.classworker import StatementTooLarge
from hoopy.protocols.postgres.maskplan import Planner, StatementMasks
from hoopy.protocols.postgres.maskwire import (
    copy_format,
    mask_message_fields,
    message_masks,
    notification,
    parameter_value,
    result_plan,
    statement_masks,
    track,
)
from hoopy.protocols.postgres.pipeline import (
    SESSION_STATE_KINDS,
    Pipeline,
    copies_in,
    executes_in,
    interrupts_copy,
)
from hoopy.protocols.postgres.pump import Eager, Pipe
from hoopy.protocols.postgres.resultlog import ResultLog
from hoopy.protocols.postgres.results import ResultTracker
from hoopy.protocols.postgres.textsettings import (  # noqa: F401 (UNSAFE_ENCODINGS: re-exported)
    UNSAFE_ENCODINGS,
    SettingRefused,
    unsafe_encoding,
)
from hoopy.protocols.postgres.textsettings import refusal as text_setting_refusal
from hoopy.recorder import RecorderError, SessionLog
from hoopy.session import Session

if TYPE_CHECKING:
    from hoopy.protocols.postgres.proxy import PostgresListener

log = logging.getLogger("hoopy.postgres")

READ_SIZE = 256 * 1024


def error_bytes(e: HoopyError) -> bytes:
    """The one place a hoopy error becomes a PostgreSQL ErrorResponse."""
    severity = "FATAL" if e.fatal else "ERROR"
    if isinstance(e, UnparseableCommand):  # shaped like the server's syntax error
        return pg.error_response(
            e.sqlstate, e.message, severity, e.detail or None, e.hint, e.position
        )
    return pg.error_response(e.sqlstate, e.message, severity=severity)


def _cut(raw: bytes, spans: list[tuple[int, int]]) -> bytes:
    """`raw` without these (start, stop) spans, in order."""
    parts, pos = [], 0
    for start, stop in spans:
        parts.append(raw[pos:start])
        pos = stop
    parts.append(raw[pos:])
    return b"".join(parts)


def _parse_message(name: str, sql: str) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + b"\0\0"
    return b"P" + struct.pack("!I", len(body) + 4) + body


# What hoopy adds to the parser's own error: a statement it cannot read is never sent on.
UNPARSEABLE_DETAIL = "hoopy cannot parse this statement, so it was not sent to the server"


def unparseable(
    sql: str, e: SqlParseError, backend_version: str | None = None
) -> UnparseableCommand:
    """The parser's message and cursor position (1-based, as PostgreSQL's `P` field; at
    the end of the text for an unexpected end), with the SQLSTATE, HINT and DETAIL the
    grammar attaches and the wording and cursor of the backend's major version
    (`backend_version`: its server_version; grammarerrors.py); hoopy's words in DETAIL,
    on a line after the grammar's own."""
    pos = e.position
    if pos is None and e.message.endswith("at end of input"):
        pos = len(sql)
    if pos is not None and not 0 <= pos <= len(sql):
        pos = None
    s = grammar.shape(e.message, pos, sql, grammar.server_version_major(backend_version))
    detail = UNPARSEABLE_DETAIL if s.detail is None else f"{s.detail}\n{UNPARSEABLE_DETAIL}"
    position = s.position + 1 if s.position is not None else None
    return UnparseableCommand(s.message, position, detail, s.hint, s.sqlstate)


class Relay(Pipeline):
    """The relay half of `proxy.AgentConnection` (its base class): what runs once the
    agent is logged in and a backend connection is attached."""

    # Set by AgentConnection before the relay starts.
    listener: PostgresListener
    gw: Gateway
    settings: PostgresSettings
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    codec: pg.ServerConnection
    session: Session | None
    backend: be.BackendConn | None
    connector: PostgresConnector | None
    prepared: dict[str, tuple[Command, ...]]
    marker: str
    refusals: deque[tuple[int, HoopyError]]
    result: ResultLog
    scrub_words: tuple[str, ...]
    outcome: str
    tracker: ResultTracker | None
    planner: Planner | None
    _masks: list[StatementMasks | None]
    _agent_events: list[pg.FrontendEvent]
    _backend_events: list[pg.BackendEvent]
    _log: SessionLog
    _unwritten: list[bytes]

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

    def _agent_batch_now(self, events: list[pg.FrontendEvent]) -> None:
        """`_agent_batch` without a coroutine, for sessions without masking, until a
        statement needs an approval: from there on the messages wait in a task."""
        out: list[bytes] = []
        for i, ev in enumerate(events):
            t = type(ev)
            if t is pg.Query or t is pg.Parse:
                st: pg.Query | pg.Parse = ev  # type: ignore[assignment]
                self._enter(t, out)
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

    # Binds (see bindgate.py): each one of a statement that needs an approval waits for
    # its own, with its values shown; one of a statement hoopy does not know is refused.

    def _bind_gate(self, bind: pg.Bind) -> str:
        """ "" when this Bind may go; else "unknown" or "approval"."""
        if self.refusals and self.refusals[-1][0] > self.batches_sent:
            return ""  # the server discards it: a message of this batch was refused
        found = self._candidates(bind.statement)
        if len(found) == 1 and found[0] is not None:
            return self._statement_gate(found[0])
        if not found or any(cmds is None for cmds in found):
            return "unknown"
        gates = {self._statement_gate(cmds) for cmds in found if cmds is not None}
        return "unknown" if "unknown" in gates else "approval" if "approval" in gates else ""

    def _statement_gate(self, cmds: tuple[Command, ...]) -> str:
        """What a Bind of this statement needs (see _bind_gate)."""
        session = self.session
        assert session is not None
        # per statement, as long as the session's search_path (the only thing that can
        # change a decision within a session) stays as it was
        scope = session.scope.state if session.scope is not None else None
        hit = self._gates.get(id(cmds))  # the entry holds cmds: its id stays its own
        if hit is not None and hit[0] is cmds and hit[1] is scope:
            return hit[2]
        runs = self._runs(cmds)
        if runs is None:
            return "unknown"
        gate = (
            "approval" if any(session.decide(c).outcome == "require_approval" for c in runs) else ""
        )
        if runs is cmds:  # nothing resolved at this Bind (no EXECUTE): cacheable
            if len(self._gates) > 256:
                self._gates.clear()
            self._gates[id(cmds)] = (cmds, scope, gate)
        return gate

    def _runs(self, cmds: tuple[Command, ...]) -> tuple[Command, ...] | None:
        """What a Bind of this statement runs: itself, and for `EXECUTE name` what name
        holds now (each Execute must find it unchanged: Pipeline._executes); None when
        hoopy does not know that, or the name holds an EXECUTE itself (two levels of
        names resolved at run time)."""
        names = executes_in(cmds)
        if not names:
            return cmds
        runs = list(cmds)
        for name in names:
            targets = self._candidates(name)
            if not targets or any(t is None or executes_in(t) for t in targets):
                return None
            runs += [c for ts in targets for c in ts or ()]
        return tuple(runs)

    def _needing_approval(self, bind: pg.Bind) -> list[Command]:
        """The statements a Bind may run that need an approval (see _bind_gate)."""
        session = self.session
        assert session is not None
        runs = [
            c for cmds in self._candidates(bind.statement) for c in self._runs(cmds or ()) or ()
        ]
        return [c for c in dict.fromkeys(runs) if session.decide(c).outcome == "require_approval"]

    def _binds_free(self, ev: pg.Bind | pg.Passthrough) -> list[pg.Bind] | None:
        """The Binds of `ev` when none of them must wait or be refused, else None.
        While an Execute may change names (a portal of DEALLOCATE, PREPARE …), a run
        with one goes message by message (_gated_binds): a Bind after it is checked
        against what it leaves."""
        if type(ev) is pg.Passthrough and self.names.special and 0x45 in ev.types:
            return None
        binds = [ev] if isinstance(ev, pg.Bind) else pg.decode_binds(ev.raw, ev.types)
        for b in binds:
            if self._bind_gate(b):
                return None
        return binds

    async def _gated_binds(self, ev: pg.Bind | pg.Passthrough, out: list[bytes]) -> None:
        """`ev` message by message: each Bind through its gate."""
        # A Bind event (masking sessions: the tracker follows it) goes on as itself; a
        # Passthrough run (no tracker) as its messages, one by one.
        parts = [(0x42, ev.raw)] if isinstance(ev, pg.Bind) else split_run(ev.raw, ev.types)
        for t, raw in parts:
            bind = ev if isinstance(ev, pg.Bind) else None
            if bind is None and t == 0x42:
                bind = pg.decode_binds(raw, b"B")[0]
            message = ev if isinstance(ev, pg.Bind) else single(t, raw)
            gate = self._bind_gate(bind) if bind is not None else ""
            if not gate:
                self._other_agent_event(message, out)
                continue
            assert bind is not None and self.session is not None
            try:
                if gate == "unknown":
                    self.session.record(
                        "command",
                        text=f"Bind of prepared statement {bind.statement!r}",
                        kinds=["bind"],
                        outcome="deny",
                        reason="unknown statement",
                    )
                    raise CommandDenied(
                        f"prepared statement {bind.statement!r} is not known to hoopy (a "
                        "DEALLOCATE, DISCARD or failed PREPARE made it unknown): prepare "
                        "it again"
                    )
                self._flush(out)
                await self._watching_agent(self._approve_bind(bind))
            except (CommandDenied, RecordingFailed) as e:
                out.append(self._refused_bind(e))
                continue
            self._other_agent_event(message, out)

    async def _approve_bind(self, bind: pg.Bind) -> list[Decision]:
        session = self.session
        assert session is not None
        return [await session.check(bound_command(c, bind)) for c in self._needing_approval(bind)]

    def _refused_bind(self, e: HoopyError) -> bytes:
        """What goes to the server in place of a refused Bind: a Parse of the marker (its
        error, rewritten, answers for the Bind; the server skips the rest to Sync)."""
        self.refusals.append((self.batches_sent + 1, e))
        if self.tracker is not None:
            self.tracker.parse(self.marker, None)
        return _parse_message(self.marker, self.marker)

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

    async def _fast_path(self, ev: pg.FunctionCall, out: list[bytes]) -> bytes:
        """A fast-path call, checked as a call of the function its OID names
        (fastpath.py): its bytes when allowed, else the marker (answered as the server
        answers a failed call: ErrorResponse, ReadyForQuery).  Every refusal is recorded."""
        session, connector = self.session, self.connector
        assert session is not None and connector is not None
        try:
            info = fp.decode_call(ev.raw)
        except fp.BadFunctionCall as e:
            raise ProtocolError(f"malformed FunctionCall message ({e}); session closed") from None
        try:
            catalog = self.listener.catalog(connector)
            cmd = await fp.checked_call(
                info, session, catalog, self.planner is not None, self._read_call
            )
            decision = session.decide(cmd)
            if decision.outcome == "require_approval":
                self._flush(out)
                await self._watching_agent(self._check_each((cmd,)))
            else:
                session.check_now(cmd, decision)
            # what it runs with, written before it runs (as a Bind's values are)
            session.record("call", function=next(iter(cmd.functions)), values=list(cmd.values))
        except (CommandDenied, RecordingFailed) as e:
            return self._refuse_query(e)
        self.batches_sent += 1
        return ev.raw

    def _read_call(self, sql: str) -> tuple[Command, ...]:
        assert self.connector is not None
        return self.listener.classification.classify_now(sql, self.connector.name, None)

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
            log.error("%s", e)  # where recordings live is for the gateway's log only
            failed = RecordingFailed("recording unavailable, command refused (see the gateway log)")
            failed.fatal = True
            raise failed from None

    def _commands(self, sql: str) -> tuple[Command, ...]:
        """Every statement of `sql`, classified; an unparseable text is recorded, refused."""
        assert self.connector is not None
        try:
            cmds = self.listener.classification.classify_now(
                sql, self.connector.name, self.prepared
            )
        except (SqlParseError, StatementTooLarge) as e:
            raise self._unclassified(sql, e) from None
        self._text_settings(cmds)
        return cmds

    async def _commands_off_loop(self, sql: str) -> tuple[Command, ...]:
        """`_commands`, a long text classified by a worker process (see classworker.py)."""
        assert self.connector is not None
        try:
            cmds = await self.listener.classification.classify(
                sql, self.connector.name, self.prepared
            )
        except (SqlParseError, StatementTooLarge) as e:
            raise self._unclassified(sql, e) from None
        self._text_settings(cmds)
        return cmds

    def _text_settings(self, cmds: tuple[Command, ...]) -> None:
        """Refuse (recorded, 0A000) a text with a statement that would change how the
        server reads later texts (textsettings.py): whatever the policy says."""
        for c in cmds:
            reason = text_setting_refusal(c)
            if reason:
                assert self.session is not None
                self.session.record(
                    "command", text=c.text, kinds=sorted(c.kinds), outcome="deny", reason=reason
                )
                raise SettingRefused(reason)

    def _unclassified(self, sql: str, e: SqlParseError | StatementTooLarge) -> HoopyError:
        assert self.session is not None
        reason = "too_large" if isinstance(e, StatementTooLarge) else "unparseable"
        # A text too large to analyse is recorded by its size and start, not whole.
        text = sql if reason == "unparseable" else sql[:1024]
        self.session.record(
            "command", text=text, chars=len(sql), outcome="deny", reason=reason, error=e.message
        )
        if isinstance(e, StatementTooLarge):
            return e
        version = self.backend.params.get("server_version") if self.backend else None
        return unparseable(sql, e, version)

    def _check_now(self, cmds: tuple[Command, ...], parse: bool = False) -> list[Decision] | None:
        """Check (and record) every statement, or raise to refuse the whole text; None
        when one needs an approval, before any of them is recorded.  `parse`: a Parse,
        which runs nothing: its approvals are asked at each Bind (see bindgate.py)."""
        session = self.session
        assert session is not None
        if not cmds:  # only comments or blanks: runs nothing (EmptyQueryResponse)
            return []
        if len(cmds) > 1 or (not parse and "execute" in cmds[0].kinds):
            self._names_checked(cmds, parse)
        if len(cmds) == 1:  # the usual case, without lists
            d = session.decide(cmds[0])
            if d.outcome == "require_approval" and not parse:
                return None
            return [session.check_now(cmds[0], d)]
        decisions = [session.decide(c) for c in cmds]  # cached per fingerprint
        waits = False
        # A denial anywhere refuses the whole message before any approval is asked for.
        for c, d in zip(cmds, decisions, strict=True):
            if d.outcome == "deny":
                session.check_now(c, d)  # records the denial and raises
            elif d.outcome == "require_approval":
                waits = not parse
        if waits:
            return None
        return [session.check_now(c, d) for c, d in zip(cmds, decisions, strict=True)]

    async def _check_all(
        self, sql: str, out: list[bytes], parse: bool = False
    ) -> tuple[Command, ...]:
        """Classify and check every statement of `sql`; raise to refuse the whole text.

        In masking sessions, also prepares each statement's masking (`self._masks`)."""
        if self.listener.classification.inline(sql):
            cmds = self._commands(sql)
        else:
            cmds = await self._commands_off_loop(sql)
        decisions = self._check_now(cmds, parse)
        if decisions is None:
            self._flush(out)
            decisions = await self._watching_agent(self._check_each(cmds))
        planner, session = self.planner, self.session
        if planner is not None and session is not None:
            self._masks = [
                await statement_masks(planner, session, self.settings, c, d)
                for c, d in zip(cmds, decisions, strict=True)
            ]
        return cmds

    async def _check_each(self, cmds: tuple[Command, ...]) -> list[Decision]:
        assert self.session is not None
        # An approval covers the statement the approver saw, not one beside it in the
        # same text that a reusable grant of it would otherwise cover.
        fresh: set[str] = set()
        return [await self.session.check(c, fresh=fresh) for c in cmds]

    async def _watching_agent(self, waiting: Coroutine[Any, Any, list[Decision]]) -> list[Decision]:
        """Await a long wait (approval) but notice when the agent goes away.  Meanwhile
        each event is written as it comes (the command waiting, the approval's answer),
        not held until the next batch is forwarded."""
        if self._unwritten:
            self._write_events()
        self._log.defer(False)
        check = asyncio.ensure_future(waiting)
        watch = asyncio.ensure_future(self._until_agent_eof())
        try:
            await asyncio.wait({check, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (check, watch):
                if not t.done():
                    t.cancel()
            await asyncio.gather(check, watch, return_exceptions=True)
            self._log.defer()
        if not check.cancelled() and check.done() and check.exception() is None:
            return check.result()
        if watch.done() and not watch.cancelled():
            raise ConnectionError("agent disconnected while its command waited")
        return check.result()  # re-raise denial / rejection

    async def _until_agent_eof(self) -> None:
        await asyncio.shield(self._agent_closed)  # bytes meanwhile wait in the codec

    def _refused(self, ev: pg.Query | pg.Parse, e: HoopyError) -> bytes:
        """What goes to the server in place of a refused Query or Parse: the marker."""
        if type(ev) is pg.Query:
            return self._refuse_query(e)
        name = ev.name  # type: ignore[union-attr]
        self.refusals.append((self.batches_sent + 1, e))
        if self.tracker is not None:
            self.tracker.parse(name, None)
        return _parse_message(name, self.marker)

    def _allowed(self, ev: pg.Query | pg.Parse, cmds: tuple[Command, ...]) -> bytes:
        """Bookkeeping for a checked Query or Parse; returns the bytes to forward."""
        tracker = self.tracker
        if type(ev) is pg.Query:
            for c in cmds:  # one look for the rare kinds, on the path every Query takes
                if "copy" in c.kinds or not c.kinds.isdisjoint(SESSION_STATE_KINDS):
                    if copies_in(cmds):
                        self._copy_starts()
                    for c2 in cmds:
                        if not c2.kinds.isdisjoint(SESSION_STATE_KINDS):
                            self._track_sql_prepared(cmds)
                            break
                    break
            names = self.names
            names.close("")  # a simple Query drops the unnamed portal
            names.sent += 1  # batches_sent
            if tracker is not None:
                tracker.query(list(self._masks))
            return ev.raw
        name = ev.name  # type: ignore[union-attr]
        for c in cmds:
            if not c.kinds.isdisjoint(SESSION_STATE_KINDS):
                self._track_sql_prepared(cmds, protocol=True)
                break
        self.unconfirmed.append((self.batches_sent + 1, name, cmds, True))
        self.names.statement_epoch += 1
        if tracker is not None:
            mask = self._masks[0] if len(self._masks) == 1 else None
            kinds = frozenset().union(*(c.kinds for c in cmds))
            dependent = "fetch" if "fetch" in kinds else "execute" if "execute" in kinds else ""
            tracker.parse(name, mask, dependent)
        return ev.raw

    def _refuse_query(self, e: HoopyError) -> bytes:
        assert self.backend is not None
        self.names.close("")
        self.batches_sent += 1
        self.refusals.append((self.batches_sent, e))
        if self.tracker is not None:
            self.tracker.query([])
        return self.backend.codec.query(self.marker)

    async def _backend_batch(self) -> None:
        """Every complete message from the database so far: scrub, mask, record, relay."""
        assert self.backend is not None
        if self.tracker is None:
            self._relay_backend()
            return
        events, self._backend_events = self._backend_events, []
        if events:
            await self._masked_batch(events)

    def _relay_backend(self) -> None:
        """The backend → agent path of a session without masking: runs of ordinary
        messages (rows, descriptions, completions) go through as the bytes they came in,
        looked at only to record them; anything else is handled event by event."""
        assert self.backend is not None
        codec = self.backend.codec
        out: list[bytes] = []
        while True:
            run = codec.relay_run()
            if run is not None:
                silent = self._on_relayed(*run)
                out.append(run[0] if not silent else _cut(run[0], silent))
                if not codec.buffered():
                    break
                continue
            ev = codec.next_event()
            if ev is pg.NEED_DATA:
                break
            if type(ev) is pg.ReadyForQuery:
                if not self._on_ready(ev.status):
                    out.append(ev.raw)
            else:
                out.append(self._other_backend_event(ev))
        if out:
            if self._unwritten:  # _to_agent, inline on the path every statement takes
                self._write_events()
            self._agent_write(out[0] if len(out) == 1 else b"".join(out))

    def _on_relayed(self, raw: bytes, marks: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
        """Record a relayed run; returns the spans of ReadyForQuery not to send."""
        result = self.result
        silent: list[tuple[int, int]] = []
        for t, start, stop in marks:
            if t == 0x44:  # DataRow run
                if not result.truncated:
                    result.add_rows(raw, start, stop)
            elif t == 0x43:  # CommandComplete
                self._record_result(raw[start + 5 : stop - 1].decode("utf-8", "replace"))
            elif t == 0x5A:  # ReadyForQuery
                if self._on_ready(chr(raw[start + 5])):
                    silent.append((start, stop))
            elif t == 0x54:  # RowDescription: the same bytes every time a statement runs
                desc = raw[start:stop]
                columns = self._columns.get(desc)
                if columns is None:
                    columns = tuple(f.name for f in pg.decode_row_description(desc).fields)
                    if len(self._columns) >= 256:
                        self._columns.clear()
                    self._columns[desc] = columns
                result.describe_columns(columns)
            elif t == 0x31:  # ParseComplete
                self._parse_complete()
            elif t == 0x73:  # PortalSuspended: rows up to an Execute's limit
                self._record_result("", suspended=True)
            else:  # EmptyQueryResponse
                result.reset()
        return silent

    async def _masked_batch(self, events: list[pg.BackendEvent]) -> None:
        """The backend → agent path of a masking session: every result is tracked to its
        statement, and rows are rewritten where mask rules apply."""
        tracker, planner = self.tracker, self.planner
        assert tracker is not None and planner is not None
        out: list[bytes] = []
        for ev in events:
            t = type(ev)
            if t is pg.DataRows:
                rows = cast(pg.DataRows, ev)
                result = tracker.rows()
                plan = result.plan or await result_plan(planner, result)
                raw = plan.rewrite(rows.raw)
                if raw is not rows.raw:
                    rows = pg.DataRows(raw, rows.count)
                self.result.add(rows)  # recorded as the agent sees it: masked
                out.append(raw)
                continue
            if t is pg.RowDescription:
                described = tracker.row_description(cast(pg.RowDescription, ev).fields)
                if described is not None:
                    await result_plan(planner, described)
            elif t is pg.NoData:
                tracker.no_data()
            elif t in (pg.ParseComplete, pg.BindComplete, pg.CloseComplete):
                tracker.simple_ack()
                if t is pg.ParseComplete:
                    self._parse_complete()
            elif t is pg.EmptyQueryResponse:
                tracker.complete()
            elif t is pg.PortalSuspended:
                tracker.complete()
                self._record_result("", suspended=True)
            elif t is pg.CommandComplete:
                tracker.complete()
                self._record_result(tag=cast(pg.CommandComplete, ev).tag)
                out.append(ev.raw)
                continue
            elif t is pg.ErrorResponse:
                assert self.session is not None
                current = message_masks(self.session, tracker.current_mask())
                tracker.error()
                out.append(self._on_error(cast(pg.ErrorResponse, ev), current))
                continue
            elif t is pg.ReadyForQuery:
                tracker.ready()
                ready = cast(pg.ReadyForQuery, ev)
                if planner.catalog_dirty and ready.status == "I":
                    planner.catalog_dirty = False  # the schema change is committed or gone
                    planner.catalog.invalidate()
                if not self._on_ready(ready.status):
                    out.append(ev.raw)
                continue
            elif t is pg.CopyOutResponse:
                copy = cast(pg.CopyOutResponse, ev)
                result = tracker.copy_out(copy.column_formats)
                result.plan = await planner.copy_plan(
                    result.statement.mask, len(copy.column_formats)
                )
                if copy.format != 0 and result.plan.active:
                    raise ProtocolError("a binary COPY result cannot be masked; session closed")
            elif t is pg.CopyData:
                copying = tracker.result
                if copying is None:
                    raise ProtocolError("COPY data outside a COPY; session closed")
                if copying.plan is not None and copying.plan.active:
                    data = cast(pg.CopyData, ev).data
                    fmt = copy_format(copying)
                    new = copying.plan.rewrite_copy(data, fmt)
                    self.result.add_copy(new)
                    out.append(b"d" + struct.pack("!I", len(new) + 4) + new)
                    continue
            out.append(self._other_backend_event(ev))
        if out:
            self._to_agent(out)

    def _on_ready(self, status: str) -> bool:
        """A ReadyForQuery; True when it ends a batch of hoopy's own (not sent on)."""
        assert self.backend is not None
        self.backend.status = status
        names = self.names  # batches_done, without its property on every statement
        names.done += 1
        if status == "I":
            names.idle()  # the transaction is over: so are its portals
        self._batch_answered()
        done = names.done
        while self.refusals and self.refusals[0][0] <= done:
            self.refusals.popleft()  # its marker was discarded after an earlier error
        if self.silent_ready and done in self.silent_ready:
            self.silent_ready.discard(done)
            return True
        return False

    def _other_backend_event(self, ev: pg.BackendEvent) -> bytes:
        if isinstance(ev, pg.RowDescription):
            self.result.describe(ev)
            return ev.raw
        if isinstance(ev, pg.ErrorResponse):
            return self._on_error(ev)
        if isinstance(ev, pg.NoticeResponse):
            return self._scrub_notice(ev)
        if isinstance(ev, pg.ParameterStatus):
            self._check_param(ev.name, ev.value)
            value = self._scrub_param(ev.name, ev.value)
            if self.planner is not None and self.session is not None:
                value = parameter_value(self.planner, self.session, ev.name, value)
            return ev.raw if value == ev.value else pg.parameter_status(ev.name, value)
        if isinstance(ev, pg.CopyData):
            self.result.add_copy(ev.data)
            return ev.raw
        if isinstance(ev, pg.NotificationResponse):
            assert self.session is not None
            return notification(self.planner, self.session, ev)  # masked, recorded
        if isinstance(ev, pg.EmptyQueryResponse):
            self.result.reset()
        if isinstance(ev, pg.FunctionCallResponse):
            self._record_result("FUNCTION CALL")  # a fast-path call's answer
        return ev.raw

    def _on_error(self, ev: pg.ErrorResponse, masking: Any = None) -> bytes:
        self.batch_failed = True
        if self.copy_in_flight and self.batches_done + 1 >= self.copy_batch:
            self.copy_in_flight = False  # the COPY failed or aborted: no copy mode now
        if self.marker in ev.fields.get("M", "") + ev.fields.get("D", ""):
            # _on_ready drops refusals of finished batches, so the front is this batch's.
            if self.refusals:
                _, err = self.refusals.popleft()
                self.result.reset()
                return error_bytes(err)
            return error_bytes(CommandDenied("statement refused by hoopy"))
        assert self.session is not None
        fields = ev.fields
        if masking is not None:
            fields = mask_message_fields(fields, masking)
        self.session.record("error", code=ev.code, message=self._scrub(fields.get("M", "")))
        self.result.reset()
        return self._rewrite_fields(fields, ev.raw if fields is ev.fields else b"", b"E")

    def _scrub_notice(self, ev: pg.NoticeResponse) -> bytes:
        fields = ev.fields
        if self.tracker is not None and self.session is not None:
            current = message_masks(self.session, self.tracker.current_mask())
            if current is not None:
                fields = mask_message_fields(fields, current)
        return self._rewrite_fields(fields, ev.raw if fields is ev.fields else b"", b"N")

    def _rewrite_fields(self, fields: dict[str, str], raw: bytes, kind: bytes) -> bytes:
        scrubbed = {k: self._scrub(v) for k, v in fields.items()}
        if scrubbed == fields and raw:
            return raw
        body = b"".join(k.encode() + v.encode() + b"\0" for k, v in scrubbed.items()) + b"\0"
        return kind + struct.pack("!I", len(body) + 4) + body

    def _scrub(self, text: str) -> str:
        for word in self.scrub_words:
            if word and word in text:
                text = text.replace(word, "***")
        return text

    def _scrub_param(self, name: str, value: str) -> str:
        if name == "session_authorization" and self.session is not None:
            return self.session.identity.subject
        return self._scrub(value)

    def _check_param(self, name: str, value: str) -> None:
        if name == "standard_conforming_strings" and value.lower() != "on":
            raise ProtocolError(
                "standard_conforming_strings must stay on through hoopy; session closed"
            )
        if name == "client_encoding" and unsafe_encoding(value):
            raise ProtocolError(f"client_encoding {value} is not supported; session closed")

    def _record_result(self, tag: str, suspended: bool = False) -> None:
        assert self.session is not None
        fields = self.result.take(tag)
        if suspended:
            fields["suspended"] = True  # the portal may run on: no tag yet
        self.session.record_later("result", fields)


def _take_buffer(reader: asyncio.StreamReader) -> bytes:
    """Bytes a StreamReader holds that nobody has read yet (handed to the pump)."""
    buf = getattr(reader, "_buffer", None)
    if not buf:
        return b""
    data = bytes(buf)
    buf.clear()
    return data
