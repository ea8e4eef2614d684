"""The agent's statements on their way to the server: how a Query, a Parse or a
fast-path FunctionCall is classified and checked, and what goes in its place.

Every text is classified (libpg_query, a worker process for long ones) and each of its
statements checked through `Session.check` (or `check_now` when no approval is needed);
a text that would change how the server reads later texts is refused whatever the
policy says (textsettings.py).  A refused message is replaced by the marker, a
statement that is a guaranteed syntax error (see relay.py): `StatementCheck` (a base
class of `relay.Relay`) holds that, apart from the pumps that call it, so the policy
seam of the agent → backend path reads in one place.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from hoopy.config import PostgresConnector, PostgresSettings
from hoopy.errors import (
    CommandDenied,
    HoopyError,
    ProtocolError,
    RecordingFailed,
    UnparseableCommand,
)
from hoopy.policy import Command, Decision
from hoopy.protocols.postgres import backend as be
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres import fastpath as fp
from hoopy.protocols.postgres import grammarerrors as grammar
from hoopy.protocols.postgres.classify import SqlParseError
from hoopy.protocols.postgres.classworker import StatementTooLarge
from hoopy.protocols.postgres.maskplan import Planner, StatementMasks
from hoopy.protocols.postgres.maskwire import statement_masks
from hoopy.protocols.postgres.pipeline import SESSION_STATE_KINDS, Pipeline, copies_in
from hoopy.protocols.postgres.textsettings import SettingRefused
from hoopy.protocols.postgres.textsettings import refusal as text_setting_refusal
from hoopy.recorder import SessionLog

if TYPE_CHECKING:
    from hoopy.protocols.postgres.proxy import PostgresListener


def parse_message(name: str, sql: str) -> bytes:
    """A Parse of `sql` as statement `name`, without parameter types."""
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


class StatementCheck(Pipeline):
    """Checking of Query, Parse and FunctionCall messages; see the module docstring."""

    # Set by AgentConnection before the relay starts.
    listener: PostgresListener
    settings: PostgresSettings
    backend: be.BackendConn | None
    connector: PostgresConnector | None
    marker: str
    refusals: deque[tuple[int, HoopyError]]
    planner: Planner | None
    _masks: list[StatementMasks | None]
    _log: SessionLog
    _unwritten: list[bytes]
    _agent_closed: asyncio.Future[None]

    def _write_events(self) -> None:
        raise NotImplementedError  # relay.Relay: the deferred events, written

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

    def _seen(self, raw: bytes, sql: str, name: str | None, out: list[bytes]) -> bool:
        """The lane of a Query (`name` None) or Parse whose statement the classifier has
        cached (Classifier.keyed: one plain statement, seen before): the session's
        cached decision, checked and recorded with the statement's own text through
        `Session.check_now` as every statement is, then `_allowed`'s bookkeeping for it.
        True when done (forwarded, or refused in its place); False, having done
        nothing, for anything else: the full path then (a first sight, a masking
        session, a text that must wait, a statement that needs an approval).  The caller
        has done `_enter`."""
        if self.tracker is not None or (b"\\" in raw and self._answers_pending()):
            return False
        offloop = self.listener.classification
        size = len(sql)
        limits = offloop.settings
        if size > limits.classify_inline_size or size > limits.max_statement_size:
            return False
        assert self.connector is not None
        classifier = offloop.classifier
        found = classifier.keyed(sql, self.connector.name)
        if found is None:
            return False
        cmds, text = found
        cmd = cmds[0]
        session = self.session
        assert session is not None
        decision = session.decide(cmd)
        if name is None and decision.outcome == "require_approval":
            return False  # _check_now's None: the approval is waited for in the task
        classifier.hits += 1
        try:
            session.check_now(cmd, decision, text)
        except (CommandDenied, RecordingFailed) as e:
            if name is None:
                out.append(self._refuse_query(e))
            else:
                out.append(self._refused_parse(name, e))
            return True
        if name is None:
            out.append(self._query_allowed(raw, cmds))
        else:
            if text != cmd.text:  # the statement the name holds, with its own text
                cmds = (cmd.with_text(text),)
            # _parse_allowed of a plain statement (no session state) without a tracker
            names = self.names
            self.unconfirmed.append((names.sent + 1, name, cmds, True))
            names.statement_epoch += 1
            out.append(raw)
        return True

    def _refused(self, ev: pg.Query | pg.Parse, e: HoopyError) -> bytes:
        """What goes to the server in place of a refused Query or Parse: the marker."""
        if type(ev) is pg.Query:
            return self._refuse_query(e)
        return self._refused_parse(ev.name, e)  # type: ignore[union-attr]

    def _refused_parse(self, name: str, e: HoopyError) -> bytes:
        self.refusals.append((self.batches_sent + 1, e))
        if self.tracker is not None:
            self.tracker.parse(name, None)
        return parse_message(name, self.marker)

    def _allowed(self, ev: pg.Query | pg.Parse, cmds: tuple[Command, ...]) -> bytes:
        """Bookkeeping for a checked Query or Parse; returns the bytes to forward."""
        if type(ev) is pg.Query:
            return self._query_allowed(ev.raw, cmds)
        return self._parse_allowed(ev.name, ev.raw, cmds)  # type: ignore[union-attr]

    def _query_allowed(self, raw: bytes, cmds: tuple[Command, ...]) -> bytes:
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
        if self.tracker is not None:
            self.tracker.query(list(self._masks))
        return raw

    def _parse_allowed(self, name: str, raw: bytes, cmds: tuple[Command, ...]) -> bytes:
        for c in cmds:
            if not c.kinds.isdisjoint(SESSION_STATE_KINDS):
                self._track_sql_prepared(cmds, protocol=True)
                break
        names = self.names
        self.unconfirmed.append((names.sent + 1, name, cmds, True))  # sent: batches_sent
        names.statement_epoch += 1
        tracker = self.tracker
        if tracker is not None:
            mask = self._masks[0] if len(self._masks) == 1 else None
            kinds = frozenset().union(*(c.kinds for c in cmds))
            dependent = "fetch" if "fetch" in kinds else "execute" if "execute" in kinds else ""
            tracker.parse(name, mask, dependent)
        return raw

    def _refuse_query(self, e: HoopyError) -> bytes:
        assert self.backend is not None
        self.names.close("")
        self.batches_sent += 1
        self.refusals.append((self.batches_sent, e))
        if self.tracker is not None:
            self.tracker.query([])
        return self.backend.codec.query(self.marker)
