"""The Bind lane: the usual extended-protocol batch of a statement hoopy has seen before,
without an event per message.

pgbench -M extended, psycopg and most drivers send `Parse Bind Describe Execute Sync`
per statement, pgbench -M prepared and asyncpg `Bind [Describe] Execute Sync` of a
statement prepared earlier, executemany and pipelines several such segments before
one Sync.  cmdlane.bind_batch (compiled when built) frames such a batch straight from
the codec's buffer (`ServerConnection.fast_batch`) and decodes its Parses and Binds;
`BindLane._bind_batch` (a base class of `relay.Relay`) then does what the full path
(`Relay._agent_batch_now` over the codec's events) does for it, step by step and in
the same order, segment by segment: the Parse by the cached-statement lane
(`StatementCheck._seen`), every Bind of the run through its gate (bindcheck.py) before
any is recorded, each Bind recorded (`Pipeline._record_bound`, the gate's candidates
reused); then the Sync's bookkeeping, one write of the events and of the batch.

Whatever it does not cover goes the full path with the very events the codec would
have made, before the step that would differ: a masking session, COPY FROM STDIN in
flight, a portal that changes or depends on names (`names.special`), a Parse the lane
cannot take (first sight, a text that must wait), a Bind that waits for an approval or
is refused (then the rest waits in the task, as there).  tests/protocols/postgres/
test_bindlane.py drives both paths with the same bytes and compares what each forwards
and records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from hoopy.policy import Command
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.bindcheck import BindCheck
from hoopy.protocols.postgres.bodies import _FRONTEND
from hoopy.protocols.postgres.cmdlane import SYNC
from hoopy.protocols.postgres.pump import Eager
from hoopy.recorder import RecorderError


class BindLane(BindCheck):
    """The lane of the usual extended-protocol batch; see the module docstring."""

    _agent_events: list[pg.FrontendEvent]
    _agent_pump: Eager  # set by relay.Relay._relay
    _backend_write: Callable[[bytes], None]  # the backend transport's own write
    # answers.Answers's (a base class of Relay after this one): the session ends
    _write_failed: Callable[[RecorderError], NoReturn]

    def _agent_batch_now(
        self, events: list[pg.FrontendEvent], out: list[bytes] | None = None
    ) -> None:
        raise NotImplementedError  # relay.Relay: the full path, without a coroutine

    def _bind_batch(self, segments: list[tuple[Any, ...]]) -> None:
        """One batch framed by cmdlane.bind_batch: per segment `(parse, name, sql, run,
        types, binds)`, then the Sync."""
        if self.tracker is not None:
            self._agent_batch_now(_events(segments))
            return
        out: list[bytes] = []
        names = self.names
        session = self.session
        assert session is not None
        for k, (parse, name, sql, run, _, binds) in enumerate(segments):
            if self.copy_in_flight or names.special:
                self._agent_batch_now(_events(segments[k:]), out)  # its checks and errors
                return
            if parse is not None:
                self.extended_open = True  # _enter(Parse), COPY not in flight
                if not self._seen(parse, sql, name, out):  # nothing done: the full path
                    self._agent_batch_now(_events(segments[k:]), out)
                    return
                if names.special:  # not after a plain statement; as the full path would
                    self._agent_batch_now(_events(segments[k:])[1:], out)
                    return
            # every Bind of the run through its gate (_binds_free) before any is recorded
            refused = bool(self.refusals) and self.refusals[-1][0] > names.sent
            unconfirmed = self.unconfirmed
            found: list[list[tuple[Command, ...] | None]] = []
            candidates: list[tuple[Command, ...] | None]
            for b in binds:
                # _candidates(statement), its two usual cases without a frame: nothing
                # parsed is unanswered (what the server holds), or this batch's last
                # Parse is of the name
                statement = b[1]
                if not unconfirmed:
                    held = self.prepared.get(statement)
                    candidates = [] if held is None else [held]
                elif unconfirmed[-1][1] == statement and unconfirmed[-1][0] == names.sent + 1:
                    candidates = [unconfirmed[-1][2]]
                else:
                    candidates = self._candidates(statement)
                if refused:
                    gate = ""
                elif len(candidates) == 1 and candidates[0] is not None:
                    # the usual: one statement, its gate cached (_statement_gate's look)
                    one = candidates[0]
                    scope = session.scope.state if session.scope is not None else None
                    hit = self._gates.get(id(one))
                    if hit is not None and hit[0] is one and hit[1] is scope:
                        gate = hit[2]
                    else:
                        gate = self._statement_gate(one)
                else:
                    gate = self._found_gate(candidates)
                if gate:
                    # one waits for an approval, or is refused: the rest in the task
                    self._flush(out)
                    self._agent_events = _events(segments[k:])[1 if parse is not None else 0 :]
                    self._agent_pump.run(eager=False)
                    return
                found.append(candidates)
            # the Passthrough run (_other_agent_event): every Bind recorded, forwarded
            for b, candidates in zip(binds, found, strict=True):
                self._record_bound(b[0], b[1], b[2], b[3], candidates)
            self.unsynced_execute = True
            if any(self._portal_copies.values()):
                self._copy_starts()  # an Execute of a bound COPY FROM STDIN
            self.extended_open = True
            out.append(run)
        if self.copy_in_flight:
            self._other_agent_event(pg.Sync(SYNC), out)
            self._flush(out)
            return
        # the Sync (_other_agent_event's, without a tracker), then _flush's steps
        names.sent += 1
        self.unsynced_execute = self.extended_open = False
        out.append(SYNC)
        if self._unwritten:  # _write_events: a failure ends the session, forwards nothing
            try:
                self._log.flush()
            except RecorderError as e:
                self._write_failed(e)
        self.binds_unwritten = False
        self._backend_write(b"".join(out))


def _events(segments: list[tuple[Any, ...]]) -> list[pg.FrontendEvent]:
    """The codec's events for these segments and the Sync: what `events()` returns."""
    events: list[pg.FrontendEvent] = []
    for parse, _, _, run, types, _ in segments:
        if parse is not None:
            events.append(_FRONTEND[0x50](parse))
        events.append(pg.Passthrough(types, run))
    events.append(pg.Sync(SYNC))
    return events
