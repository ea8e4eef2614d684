"""The agent's Binds on their way to the server: which may go, which wait for an
approval (with the values they run with), which are refused.

What a Bind needs is decided by its statement (bindgate.py holds the pure helpers);
`BindCheck` (a base class of `relay.Relay`) holds the waiting and the refusing, which
need the session's pipeline (pipeline.py) and the statement checks it builds on
(statementcheck.py).
"""

from __future__ import annotations

from hoopy.errors import CommandDenied, HoopyError, RecordingFailed
from hoopy.policy import Command, Decision
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.bindgate import bound_command, single, split_run
from hoopy.protocols.postgres.pipeline import executes_in
from hoopy.protocols.postgres.statementcheck import StatementCheck, parse_message


class BindCheck(StatementCheck):
    """The gate every Bind passes; see the module docstring."""

    # Binds (see bindgate.py): each one of a statement that needs an approval waits for
    # its own, with its values shown; one of a statement hoopy does not know is refused.

    def _bind_gate(self, bind: pg.Bind) -> str:
        """ "" when this Bind may go; else "unknown" or "approval"."""
        if self.refusals and self.refusals[-1][0] > self.batches_sent:
            return ""  # the server discards it: a message of this batch was refused
        return self._found_gate(self._candidates(bind.statement))

    def _found_gate(self, found: list[tuple[Command, ...] | None]) -> str:
        """`_bind_gate` of a statement name that may hold `found` (its `_candidates`)."""
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
        return parse_message(self.marker, self.marker)
