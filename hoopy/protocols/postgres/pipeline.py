"""A session's pipeline as the server will see it: which prepared statements exist, what
is still unanswered, and which messages hoopy must not forward yet.

PostgreSQL answers a connection's messages strictly in order, and acts on some of them
in ways hoopy learns only from the answers: a Parse it refuses (a name in use) leaves
the old statement; an error discards everything up to Sync; a COPY FROM STDIN makes it
ignore a Sync; a SET can change how the next text is read.  `Pipeline` (a base class of
`relay.Relay`) keeps that bookkeeping, so that EXECUTE, Bind and the policy are about
what the server will really run.  The session's portals (and the batch counts) are
its `names` (namespaces.py), which masking reads too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, cast

from hoopy.errors import CommandDenied, HoopyError, ProtocolError
from hoopy.policy import Command
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.bindgate import single, split_run
from hoopy.protocols.postgres.cmdlane import record_bind
from hoopy.protocols.postgres.namespaces import (
    ALL,
    Binding,
    Changes,
    Namespaces,
    changes_of,
    executed_names,
    stale_execute,
)
from hoopy.protocols.postgres.resultlog import ResultLog, bind_statement
from hoopy.protocols.postgres.resultrun import parse_complete
from hoopy.recorder import encode_members

if TYPE_CHECKING:
    from hoopy.protocols.postgres.results import ResultTracker
    from hoopy.session import Session


class Pipeline:
    """Bookkeeping of the messages in flight; see the module docstring."""

    session: Session | None
    prepared: dict[str, tuple[Command, ...]]  # what the server holds, by name
    names: Namespaces  # portals, and the batch counts below
    result: ResultLog
    binds_unwritten: bool  # Bind events chained but not yet written
    unsynced_execute: bool  # an Execute went to the server since the last Sync
    extended_open: bool  # an extended-protocol message since the last Sync
    copy_in_flight: bool  # a COPY FROM STDIN sent, its CopyDone/CopyFail not yet
    _portal_copies: dict[str, bool]  # portals that run COPY FROM STDIN (as bound): True
    # A Sync went out during a COPY FROM STDIN: PostgreSQL ignores it, unless the COPY
    # failed first, which hoopy cannot place.  It is counted as a batch, so hoopy may
    # wait for an answer that never comes, never the other way round; texts that would
    # wait are refused instead (see _settled_parse).
    sync_in_copy: bool
    copy_batch: int  # the batch of the COPY FROM STDIN in flight
    # (batch, name, commands, protocol-level?) of Parses and SQL PREPAREs not yet
    # confirmed; commands None: a DEALLOCATE or DISCARD since made it unknown
    unconfirmed: deque[tuple[int, str, tuple[Command, ...] | None, bool]]
    batch_failed: bool  # an ErrorResponse since the last ReadyForQuery
    silent_ready: set[int]  # batches ended by hoopy's own Sync: their ReadyForQuery is not sent
    # per (statement name, id(commands)): the commands, the encoded statement part of
    # their Bind events, whether they are a COPY FROM STDIN, what they change in the
    # namespaces when a portal of them runs
    _bind_statics: dict[
        tuple[str, int],
        tuple[
            tuple[Command, ...] | None,
            tuple[bytes, dict[str, Any]],
            bool,
            Changes | None,
            tuple[str, ...],
        ],
    ]
    # id(statement) -> (statement, the session scope then, what its Bind needs): see
    # bindcheck._bind_gate
    _gates: dict[int, tuple[tuple[Command, ...], Hashable, str]]
    _settled: asyncio.Future[None] | None  # resolved at the next ReadyForQuery
    tracker: ResultTracker | None  # masking sessions

    @property
    def batches_sent(self) -> int:
        return self.names.sent

    @batches_sent.setter
    def batches_sent(self, value: int) -> None:
        self.names.sent = value

    @property
    def batches_done(self) -> int:
        return self.names.done

    @batches_done.setter
    def batches_done(self, value: int) -> None:
        self.names.done = value

    def _flush(self, out: list[bytes]) -> None:
        raise NotImplementedError  # relay.Relay: forward what the batch holds

    def _other_agent_event(
        self, ev: pg.FrontendEvent, out: list[bytes], binds: list[pg.Bind] | None = None
    ) -> bool:
        raise NotImplementedError  # relay.Relay: bookkeeping and forwarding of a message

    def _refused_bind(self, e: HoopyError) -> bytes:
        raise NotImplementedError  # bindcheck.BindCheck: the marker in place of a message

    # A text with a backslash parses differently once standard_conforming_strings is
    # off (or under a client-only multibyte encoding).  A SET of them is refused
    # (textsettings.py), but a function ahead of it in the pipeline could switch that
    # unseen, and the server would then run what hoopy did not check.
    # Such a text waits until the server has answered everything before it — a switch
    # shows as ParameterStatus before ReadyForQuery and ends the session (_check_param)
    # — and is refused after an Execute not yet followed by a Sync, whose effect the
    # server reports only at the Sync.

    def _enter(self, t: type, out: list[bytes]) -> None:
        """PostgreSQL discards everything up to Sync after an error in an extended batch,
        a Query too, which then never gets an answer, and hoopy could not tell.  So a
        Query inside an unsynced extended batch (asyncpg: Parse, Describe, Flush, then
        COPY as a Query) goes behind a Sync of hoopy's own, whose ReadyForQuery the
        agent never sees: the Query is answered, as PostgreSQL answers it without an
        error before it."""
        if self.copy_in_flight:
            self._copy_interrupted("a Query" if t is pg.Query else "a Parse")
        if t is pg.Parse:
            self.extended_open = True
        elif self.extended_open:
            out.append(pg.sync())
            self.batches_sent += 1
            self.silent_ready.add(self.batches_sent)
            self.unsynced_execute = self.extended_open = False
            if self.tracker is not None:
                self.tracker.sync()

    def _copy_interrupted(self, what: str) -> None:
        """During COPY FROM STDIN the server reads only copy data: any other message
        (but Flush and Sync) fails the COPY and is discarded unanswered, so hoopy would
        record as run what never ran, and lose count of the answers due.  Not knowing
        whether the COPY has started (only its answer tells), hoopy ends the session."""
        raise ProtocolError(
            f"{what} sent before the end of a COPY FROM STDIN is not supported through "
            "hoopy (the server would discard it and fail the COPY); session closed"
        )

    def _answers_pending(self) -> bool:
        return self.batches_done < self.batches_sent or self.unsynced_execute

    async def _settled_parse(self, out: list[bytes], sql: str) -> None:
        """Forward what came before, then wait for its answers (see above)."""
        reason = ""
        if self.unsynced_execute:
            reason = (
                "a statement containing a backslash cannot follow an Execute before a Sync "
                "through hoopy (its parse could depend on settings that Execute changes)"
            )
        elif self.sync_in_copy:
            reason = (
                "after a Sync sent during COPY FROM STDIN hoopy cannot tell which answers "
                "are still due, so a statement containing a backslash cannot wait for them "
                "in this session; send it when nothing is pending, or reconnect"
            )
        if reason:
            assert self.session is not None
            self.session.record("command", text=sql, outcome="deny", reason=reason)
            raise CommandDenied(reason)
        self._flush(out)
        while self.batches_done < self.batches_sent:
            self._settled = asyncio.get_running_loop().create_future()
            await self._settled

    # Prepared statements count once the server has them (`self.prepared`, what EXECUTE
    # and Bind resolve to): a Parse at its ParseComplete, an SQL PREPARE when its text
    # ran without error.  The server refuses a name in use (42P05) and keeps the first
    # statement; believing the second would let EXECUTE run what policy never saw.

    def _candidates(self, name: str) -> list[tuple[Command, ...] | None]:
        """Everything `name` may hold for a message forwarded now.

        A Parse of it earlier in this batch decides: if it (or anything before it)
        fails, the server skips the rest of the batch, this message too.  Otherwise:
        what the server has, and every Parse or PREPARE of the name in earlier batches
        it has not answered yet — one may fail (a name in use, 42P05; or be skipped
        after another error) and leave what was there; which, only the answers tell.
        Empty: it holds nothing hoopy knows of."""
        current = self.names.sent + 1  # batches_sent, without its property
        for batch, n, cmds, _ in reversed(self.unconfirmed):
            if n == name and batch == current:
                return [cmds]
        found: list[tuple[Command, ...] | None] = []
        if name in self.prepared:
            found.append(self.prepared[name])
        for _, n, cmds, _ in self.unconfirmed:
            if n == name and not any(cmds is f for f in found):
                found.append(cmds)  # a re-parse of the same text counts once
        return found

    # A ParseComplete: the oldest Parse in flight holds its name now (resultrun.py,
    # compiled, which calls it inline on its path).
    _parse_complete = parse_complete

    def _forget(self, name: str | None) -> None:
        """`name` (None: every name) no longer holds what hoopy knew, and what it holds
        now cannot be told: EXECUTE and Bind of it are refused (never run unchecked)."""
        self.names.statement_epoch += 1
        if name is None:
            self.prepared.clear()
        else:
            self.prepared.pop(name, None)
        self.unconfirmed = deque(
            (b, n, None if name is None or n == name else c, p) for b, n, c, p in self.unconfirmed
        )
        if self.tracker is not None:  # masking follows the same decision
            self.tracker.forget(name)

    def _copy_starts(self) -> None:
        self.copy_in_flight = True
        self.copy_batch = self.batches_sent + 1

    def _batch_answered(self) -> None:
        """A ReadyForQuery: what its batch prepared now exists (or never will)."""
        if self.copy_in_flight and self.batches_done >= self.copy_batch:
            self.copy_in_flight = False  # its batch is over: the COPY ended
        failed, self.batch_failed = self.batch_failed, False
        pending = self.unconfirmed
        while pending and pending[0][0] <= self.batches_done:
            _, name, cmds, protocol = pending.popleft()
            if protocol:
                continue  # a Parse not acknowledged by now was skipped
            if cmds is None:
                self.prepared.pop(name, None)
            elif not failed:  # failed alone, it left what the server had
                self.prepared[name] = cmds
        settled = self._settled
        if settled is not None and not settled.done():
            settled.set_result(None)

    def _record_bind(self, bind: pg.Bind) -> Binding | None:
        """Which values a statement runs with: chained now, written before it runs.
        Returns the portal's new entry in `names` (None: a session without masking
        keeps none while no portal changes or depends on names)."""
        return self._record_bound(
            bind.portal, bind.statement, bind.param_formats, bind.params, None
        )

    def _record_bound(
        self,
        portal: str,
        statement: str,
        formats: tuple[int, ...],
        params: tuple[bytes | None, ...],
        found: list[tuple[Command, ...] | None] | None,
    ) -> Binding | None:
        """`_record_bind` of a Bind's fields; `found`: `_candidates(statement)` when the
        caller has it already (the Bind lane: its gate asked)."""
        session = self.session
        assert session is not None
        expires = session.identity.expires_at  # session.expired(), without its frame
        if expires and session.clock() > expires:  # check_alive's frame only when it refuses
            session.check_alive("bind", f"Bind of prepared statement {statement!r}")
        if found is None:
            found = self._candidates(statement)  # none: refused, never prepared
        cmds = found[0] if len(found) == 1 else None
        if len(found) > 1:  # the server holds one of these: record them all
            cmds = tuple(c for cs in found for c in cs or ())
        # by identity (the entry holds cmds, so its id stays its own): hashing every
        # Command of a statement per Bind would cost more than the rest of this
        key = (statement, id(cmds))
        known = self._bind_statics.get(key)
        if known is None or known[0] is not cmds:  # worked out once per statement
            text = "; ".join(session.hide(c.text)[0] for c in cmds) if cmds else None
            fields = bind_statement(statement, text)
            if len(self._bind_statics) > 256:
                self._bind_statics.clear()
            known = self._bind_statics[key] = (
                cmds,
                (encode_members(fields), fields),
                copies_in(cmds),
                changes_of(cmds or ()),
                executes_in(cmds),
            )
        _, static, copies, changes, execs = known
        # only portals that run COPY FROM STDIN are kept: one entry per portal name an
        # agent ever bound would grow without end, and be looked through every batch
        if copies:
            self._portal_copies[portal] = True
        elif self._portal_copies:
            self._portal_copies.pop(portal, None)
        depends: tuple[tuple[str, tuple[Any, ...]], ...] = ()
        if execs:  # what each name may hold now: the Execute must find the same
            depends = tuple((n, tuple(self._candidates(n))) for n in execs)
            fields = dict(static[1])
            fields["executes"] = {n: _texts(found) for n, found in depends}
            static = (encode_members(fields), fields)
        record_bind(session, portal, formats, params, self.result.max_bytes, static)
        self.binds_unwritten = True
        if changes is None and not depends and self.tracker is None and not self.names.special:
            return None  # no Execute needs looking at: nothing to follow (the fast path)
        return self.names.bind(portal, changes, depends)

    def _executes(self, portal: str) -> str:
        """An Execute of `portal` about to be forwarded.  EXECUTE in its statement runs
        what the name holds now, not at the Bind: if that may differ from what the Bind
        was checked (and approved) against, the reason to refuse it.  Otherwise SQL in
        its statement that changes names (a Parse of DEALLOCATE, PREPARE, CLOSE,
        DECLARE …) runs now, at every Execute."""
        found = list(self.names.portal(portal))
        for b in found:
            for name, then in b.depends:
                # everything the name may hold now was checked at the Bind (answers
                # since may have narrowed it down), or the Execute is refused
                now = self._candidates(name)
                if not now or any(x is None or all(x is not y for y in then) for x in now):
                    return (
                        f"prepared statement {name!r} changed after portal {portal!r} was "
                        f"bound, and its EXECUTE {name} would run the new one unchecked: "
                        "bind the portal again"
                    )
        for b in found:
            if b.changes is not None:
                for name in b.changes.statements:
                    self._forget(None if name == ALL else name)
                self.names.apply(b.changes)
        return ""

    def _names_checked(self, cmds: tuple[Command, ...], parse: bool) -> None:
        """Refuse a text whose EXECUTE would run something other than what it was
        classified as: in one text, an EXECUTE of a name a statement before it
        redefined (classified against what the name held before the text); in a
        Query, EXECUTE of a statement that is itself an EXECUTE (its inner name was
        resolved when it was parsed, and may hold something else by now).  (A Parse
        of EXECUTE is checked at each Bind and Execute: _runs, Pipeline._executes.)"""
        reason = ""
        name = None if parse else stale_execute(cmds)
        if name is not None:
            reason = (
                f"EXECUTE {name} follows a statement that redefines {name} in the same "
                "text: send it in a separate query"
            )
        elif not parse:
            for n in executes_in(cmds):
                if any(t is not None and executes_in(t) for t in self._candidates(n)):
                    reason = (
                        f"prepared statement {n!r} runs an EXECUTE itself: hoopy cannot "
                        "tell what that runs now; prepare the statement it executes instead"
                    )
                    break
        if reason:
            assert self.session is not None
            text = "; ".join(c.text for c in cmds)
            self.session.record("command", text=text, outcome="deny", reason=reason)
            raise CommandDenied(reason)

    def _gated_executes(self, ev: pg.FrontendEvent, out: list[bytes]) -> bool:
        """While a portal that depends on a name (EXECUTE) or changes names may run:
        each Execute is looked at (Pipeline._executes), a refused one replaced by the
        marker.  True when `ev` was handled here."""
        if type(ev) is pg.Passthrough:
            types = ev.types
            if 0x45 not in types:
                return False
            if len(types) > 1:  # message by message
                for t, raw in split_run(ev.raw, types):
                    self._other_agent_event(single(t, raw), out)
                return True
            portal = executed_portals(ev.raw, types)[0]
        else:
            portal = cast(pg.Execute, ev).portal
        reason = self._executes(portal)
        if not reason:
            return False
        assert self.session is not None
        self.session.record(
            "command",
            text=f"Execute of portal {portal!r}",
            kinds=["execute"],
            outcome="deny",
            reason=reason,
        )
        out.append(self._refused_bind(CommandDenied(reason)))
        self.extended_open = True
        return True

    def _on_close(self, ev: pg.Close) -> None:
        if ev.kind == "S":
            self.prepared.pop(ev.name, None)
            self.names.statement_epoch += 1
        else:
            self.names.close(ev.name)
        if self.tracker is not None:
            self.tracker.close(ev.kind, ev.name)

    def _track_sql_prepared(self, cmds: tuple[Command, ...], protocol: bool = False) -> None:
        """SQL PREPARE/DEALLOCATE share the namespace of protocol-level statements,
        CLOSE/DECLARE that of portals (`names`).  `protocol`: they came in a Parse and
        run at each Execute of a portal of it (`_executes`); the statement names they
        touch become unknown at once too."""
        self.names.statement_epoch += 1
        if not protocol:
            changes = changes_of(cmds)
            if changes is not None:
                self.names.apply(changes)
        for c in cmds:
            if "prepare" in c.kinds and "execute" not in c.kinds:
                name = prepared_name(c.text)
                if protocol:
                    self._forget(name or None)
                elif name:  # known once the text ran without error (_batch_answered)
                    if len(cmds) > 1:
                        # Beside other statements, an error of one of them may follow
                        # the PREPARE (which then stands: prepared statements are not
                        # transactional) or precede it: until the answer, unknown.
                        self._forget(name)
                    self.unconfirmed.append((self.batches_sent + 1, name, (c,), False))
            elif "deallocate" in c.kinds or ("discard" in c.kinds and "all" in c.text.lower()):
                name = prepared_name(c.text)
                self._forget(name if name and name.lower() != "all" else None)


# A statement of these kinds means something that depends on what ran before it
SESSION_STATE_KINDS = frozenset({"execute", "prepare", "deallocate", "discard", "close", "declare"})


def executes_in(cmds: tuple[Command, ...] | None) -> tuple[str, ...]:
    """The names EXECUTE runs in these statements ("" when one cannot be read: it
    resolves to nothing known, so its Bind is refused)."""
    out: list[str] = []
    for c in cmds or ():
        if "execute" in c.kinds:
            names = executed_names(c.text)
            out += names if names else ("\0unknown",)
    return tuple(out)


def _texts(found: list[tuple[Command, ...] | None] | tuple[Any, ...]) -> list[str | None]:
    return [None if cmds is None else "; ".join(c.text for c in cmds) for cmds in found]


def copies_in(cmds: tuple[Command, ...] | None) -> bool:
    """Is one of these a COPY … FROM STDIN (the server then reads copy data)?"""
    return any("copy" in c.kinds and c.tables_written and not c.opaque for c in cmds or ())


def prepared_name(text: str) -> str:
    """The statement name of PREPARE name … / DEALLOCATE [PREPARE] name."""
    from hoopy.protocols.postgres.pgtree import parse_statements

    try:
        stmt = parse_statements(text)[0]
    except Exception:
        return ""
    name = getattr(stmt, "name", None)  # "" for DEALLOCATE ALL
    return str(name) if name else ""


def executed_portals(raw: bytes, types: bytes) -> list[str]:
    """The portal names of the Execute messages in a Passthrough run."""
    out: list[str] = []
    pos = 0
    for t in types:
        stop = pos + 1 + int.from_bytes(raw[pos + 1 : pos + 5], "big")
        if t == 0x45:
            end = raw.find(b"\0", pos + 5, stop)
            out.append(raw[pos + 5 : end].decode("utf-8", "replace"))
        pos = stop
    return out


def interrupts_copy(ev: pg.FrontendEvent) -> bool:
    """Is `ev` a message the server does not accept during COPY FROM STDIN (anything but
    copy data, CopyDone, CopyFail, Flush and Sync)?"""
    t = type(ev)
    if t is pg.Passthrough:
        types = cast(pg.Passthrough, ev).types
        done = types.find(b"c")  # the COPY ends at its CopyDone
        return any(x in b"BDE" for x in (types if done < 0 else types[:done]))
    return t not in (pg.CopyData, pg.CopyDone, pg.CopyFail, pg.Flush, pg.Sync, pg.Terminate)
