"""The server's names for a session: its prepared statements and its portals (cursors).

Theory of operation
-------------------
PostgreSQL keeps two namespaces per connection, and both the Bind gate (approvals:
what a Bind runs) and masking (which statement a result row comes from) must know
what a name holds at the moment the server uses it.  Names change by protocol
messages (Parse, Bind, Close) and by SQL (PREPARE, DEALLOCATE, DISCARD ALL, DECLARE,
CLOSE), run in a simple Query or, later, at the Execute of a portal bound to a Parse
of them; transaction end drops every portal but WITH HOLD cursors; a Bind or Parse
the server refuses leaves what was there.

hoopy resolves every message when it is forwarded, so the model answers "what may
this name hold for a message sent now": exactly one thing, or several candidates
(an earlier message not answered yet may fail and leave what was there), or nothing
hoopy knows of.  Consumers fail closed on anything but one known candidate: the gate
refuses the Bind, masking masks every value.

Prepared statements are kept by `pipeline.Pipeline` (`prepared`, `unconfirmed`,
`_forget`), whose one `_forget` also clears the masking tracker's copy.  Portals are
this module's `Namespaces`, one instance per session read by both the gate and the
masking tracker.  `changes_of` is the one reading of which names an SQL text changes.

What hoopy does not follow is refused or made unknown: EXECUTE inside a Parse (it
resolves its name only when its portal runs, after every check) is refused; a cursor
declared in SQL is a name whose rows hoopy cannot attribute; a function the policy
lets run could open or close a cursor under any name (PL/pgSQL OPEN of a refcursor),
which hoopy cannot see (README, PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hoopy.policy import Command
from hoopy.protocols.postgres import pgquery

ALL = "\0all"  # no statement or portal can be named so: stands for every name

# Kinds of statements that change a namespace when they run.
CHANGING_KINDS = frozenset({"prepare", "deallocate", "discard", "close", "declare"})


@dataclass(frozen=True)
class Changes:
    """Names a text changes when it runs: prepared statements it defines or drops,
    portals it closes, cursors it declares.  ALL among them: every name."""

    statements: frozenset[str] = frozenset()
    portals: frozenset[str] = frozenset()
    declared: frozenset[str] = frozenset()


def changes_of(cmds: Iterable[Command]) -> Changes | None:
    """What these statements change in the namespaces; None: nothing."""
    changing = [c for c in cmds if not c.kinds.isdisjoint(CHANGING_KINDS)]
    if not changing:
        return None
    statements: set[str] = set()
    portals: set[str] = set()
    declared: set[str] = set()
    for c in changing:
        kind, stmt = _statement(c.text)
        if kind == "PrepareStmt":
            statements.add(str(stmt.get("name") or ALL))
        elif kind == "DeallocateStmt":
            name = stmt.get("name")
            statements.add(str(name) if name and not stmt.get("isall") else ALL)
        elif kind == "DiscardStmt":
            if stmt.get("target") == "DISCARD_ALL":
                statements.add(ALL)
                portals.add(ALL)
        elif kind == "ClosePortalStmt":
            name = stmt.get("portalname")
            portals.add(str(name) if name else ALL)
        elif kind == "DeclareCursorStmt":
            declared.add(str(stmt.get("portalname") or ALL))
        else:  # a form hoopy does not read (or one inside another statement): everything
            statements.add(ALL)
            portals.add(ALL)
    return Changes(frozenset(statements), frozenset(portals), frozenset(declared))


def executed_names(text: str) -> tuple[str, ...] | None:
    """The prepared-statement names EXECUTE runs anywhere in this statement (EXPLAIN
    ANALYZE EXECUTE, CREATE TABLE AS EXECUTE); None: the text cannot be read."""
    try:
        tree = json.loads(pgquery.parse_json(text))
    except Exception:
        return None
    found: list[str] = []
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ex = node.get("ExecuteStmt")
            if isinstance(ex, dict):
                found.append(str(ex.get("name", "")))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return tuple(found)


def stale_execute(cmds: tuple[Command, ...]) -> str | None:
    """In one text, an EXECUTE of a name a statement before it redefines or drops is
    classified against what the name held before the text: its name, to refuse it."""
    touched: set[str] = set()
    for c in cmds:
        if "execute" in c.kinds and touched:
            names = executed_names(c.text)
            if names is None or ALL in touched or not touched.isdisjoint(names):
                return ", ".join(names or ("?",))
        if not c.kinds.isdisjoint(CHANGING_KINDS):
            found = changes_of((c,))
            if found is not None:
                touched |= found.statements
    return None


def _statement(text: str) -> tuple[str, dict[str, Any]]:
    """The first statement's node type and fields; ("", {}) when it cannot be read."""
    try:
        node = json.loads(pgquery.parse_json(text))["stmts"][0]["stmt"]
        (kind, fields), *more = node.items()
    except Exception:
        return "", {}
    return (str(kind), fields) if not more and isinstance(fields, dict) else ("", {})


@dataclass(eq=False, slots=True)
class Binding:
    """One Bind (or SQL DECLARE) that may have created what a portal name holds."""

    batch: int  # the batch it was forwarded in (Namespaces.sent + 1 then)
    changes: Changes | None = None  # what running its statement changes
    masking: Any = None  # the masking tracker's record of it (results.Portal)
    declared: bool = False  # an SQL cursor: survives transaction end (WITH HOLD)
    # EXECUTE in its statement: per name, what the name could hold at the Bind (the
    # server resolves it at Execute: an Execute must find the same, see relay)
    depends: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def special(self) -> bool:
        return self.changes is not None or bool(self.depends)


MAX_CANDIDATES = 8


class Namespaces:
    """The portal namespace and the batch counts it is reckoned in (see module doc)."""

    def __init__(self) -> None:
        self.sent = 0  # batches forwarded (Sync, Query, hoopy's own Sync)
        self.done = 0  # batches answered (ReadyForQuery)
        self.portals: dict[str, list[Binding]] = {}
        # bumped whenever a prepared-statement name may change (Pipeline: Parse, Close,
        # SQL that defines or drops one): masking trusts a description of EXECUTE only
        # while it stays the same
        self.statement_epoch = 0
        # live bindings that change names or depend on one: Executes are looked at
        # only while there are some (the fast path)
        self.special = 0

    # ---- portals ---------------------------------------------------------------------
    def bind(
        self,
        name: str,
        changes: Changes | None,
        depends: tuple[tuple[str, tuple[Any, ...]], ...] = (),
    ) -> Binding:
        """A Bind forwarded now: until answered, the name may hold it or what it held."""
        b = Binding(self.sent + 1, changes, None, False, depends)
        found = self.portals.get(name)
        if found is None:
            self.portals[name] = [b]
            if changes is not None or depends:
                self.special += 1
            return b
        found.append(b)
        if changes is not None or depends:
            self.special += 1
        if len(found) > MAX_CANDIDATES:
            # a long transaction re-binding a name without its answers read: what it
            # held before stays one unknown candidate that keeps every change
            older = found[:-1]
            self._drop(older)
            keep = Binding(
                older[-1].batch,
                _merged([x.changes for x in older]),
                None,
                any(x.declared for x in older),
                tuple(d for x in older for d in x.depends),
            )
            self.special += keep.special
            self.portals[name] = [keep, b]
        return b

    def portal(self, name: str) -> list[Binding]:
        """What `name` may hold for a message forwarded now.  A Bind earlier in this
        batch decides (if it fails, the server skips this message too); else every
        candidate.  Empty: nothing hoopy knows of."""
        found = self.portals.get(name)
        if not found:
            return []
        if found[-1].batch == self.sent + 1 and not found[-1].declared:
            return found[-1:]
        return found

    def bound(self, b: Binding) -> None:
        """Its BindComplete: the name holds it, nothing before it."""
        for name, found in self.portals.items():
            if b in found:
                i = found.index(b)
                self._drop(found[:i])
                self.portals[name] = found[i:]
                return

    def failed(self, b: Binding) -> None:
        """It failed or was skipped: the name holds what it held."""
        for name, found in self.portals.items():
            if b in found:
                found.remove(b)
                self._drop([b])
                if not found:
                    del self.portals[name]
                return

    def close(self, name: str) -> None:
        """Close of a portal (ALL: CLOSE ALL, DISCARD ALL)."""
        if name == ALL:
            for bindings in self.portals.values():
                self._drop(bindings)
            self.portals.clear()
        elif name in self.portals:
            found = self.portals.pop(name)
            if self.special:
                self._drop(found)

    def declare(self, name: str) -> None:
        """An SQL cursor `name` may exist now (DECLARE, which fails if the name is in
        use and then leaves what was there): hoopy cannot attribute its rows."""
        self.portals.setdefault(name, []).append(Binding(self.sent + 1, declared=True))

    def apply(self, changes: Changes) -> None:
        """An SQL text that changes portal names ran (or may have)."""
        for name in changes.portals:
            self.close(name)
        for name in changes.declared:
            self.declare(name)

    def idle(self) -> None:
        """A ReadyForQuery outside a transaction ended batch `done`: every portal bound
        up to it is gone (transaction end drops all but WITH HOLD cursors)."""
        portals = self.portals
        if not portals:
            return
        if len(portals) == 1 and "" in portals and portals[""][-1].batch <= self.done:
            if self.special:  # the usual case: only the unnamed portal, all of it gone
                self._drop(portals[""])
            portals.clear()
            return
        for name in list(portals):
            found = self.portals[name]
            keep = [b for b in found if b.batch > self.done or b.declared]
            if len(keep) < len(found):
                self._drop([b for b in found if b not in keep])
                if keep:
                    self.portals[name] = keep
                else:
                    del self.portals[name]

    def _drop(self, bindings: list[Binding]) -> None:
        if self.special:
            self.special -= sum(1 for b in bindings if b.special)


def _merged(changes: list[Changes | None]) -> Changes | None:
    found = [c for c in changes if c is not None]
    if not found:
        return None
    return Changes(
        frozenset().union(*(c.statements for c in found)),
        frozenset().union(*(c.portals for c in found)),
        frozenset().union(*(c.declared for c in found)),
    )
