"""Which statement is each result row from?  A sans-I/O tracker for masking sessions.

PostgreSQL answers the messages of a connection strictly in order, so hoopy queues
one expectation per forwarded message that gets an answer (Query, Parse, Bind,
Describe, Execute, Close, Sync) and pops them as the answers come back.  That tells
the backend side, for every RowDescription / DataRow / CopyData, which statement
produced it and in which formats its columns are:

* simple Query: each statement of the text answers RowDescription, rows, then
  CommandComplete (or EmptyQueryResponse / an error that ends the query);
* extended: rows of an Execute belong to its portal's statement, whose columns the
  client learnt from an earlier Describe (of the statement or the portal) — possibly
  in an earlier round trip; the portal's Bind gives the result formats;
* an ErrorResponse in extended mode discards everything up to the next Sync.

Everything is resolved when the agent's message is forwarded (a later Parse reusing a
name cannot change what an earlier Execute meant), and a Parse or Bind counts only
once the server acknowledges it: one it refuses (a name in use, a missing table)
leaves what the server kept.  Portals are the session's shared `Namespaces`
(namespaces.py: also what the Bind gate reads), each Bind's `Portal` hanging on its
`Binding`; SQL that changes statement names reaches `forget` from the pipeline.
A result whose columns hoopy never saw described, or whose portal may hold something
else, gets `fields=None`: the planner masks every value of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hoopy.protocols.postgres.messages import FieldDescription
from hoopy.protocols.postgres.namespaces import Binding, Namespaces

Fields = tuple[FieldDescription, ...]


@dataclass
class Statement:
    """A statement as masking sees it: what it is (opaque to this module) and its columns."""

    mask: Any  # the planner's per-statement record, or None: nothing to mask
    fields: Fields | None = None
    described: bool = False
    plans: dict[tuple[int, ...], Any] = field(default_factory=dict)  # per result formats
    # "fetch": its rows come from whatever cursor the name holds when its portal runs;
    # "execute": from what a prepared-statement name holds (Describe S tells what it
    # held at the Parse, `epoch`: Namespaces.statement_epoch then)
    dependent: str = ""
    epoch: int = 0


@dataclass
class Portal:
    statement: Statement
    formats: tuple[int, ...]
    fields: Fields | None = None  # from Describe of the portal (formats already applied)
    epoch: int = 0  # ResultTracker.epoch after its Bind
    # an EXECUTE statement's description still holds (no statement name changed since
    # its Parse; the Bind gate refuses an Execute once one has since its Bind)
    statement_fields: bool = True


@dataclass
class Result:
    """The answer being received: rows of `statement`, with `formats` per column."""

    statement: Statement
    formats: tuple[int, ...]
    fields: Fields | None
    plan: Any = None  # the planner's RowMasker, once made


@dataclass
class _Expect:
    kind: str  # query | parse | bind | describe_s | describe_p | execute | close | sync
    statements: list[Statement] = field(default_factory=list)  # query: one per statement
    target: Statement | Portal | Binding | None = None
    name: str | None = None  # parse, close of a statement: the statement name
    stale: bool = False  # execute: a cursor may have changed since its Bind


NOTHING = Statement(None, described=True)


def result_formats(codes: tuple[int, ...], n: int) -> tuple[int, ...]:
    if not codes:
        return (0,) * n
    if len(codes) == 1:
        return codes * n
    return codes


class ResultTracker:
    def __init__(self, names: Namespaces | None = None) -> None:
        self.statements: dict[str, Statement] = {}  # as the server holds them
        # Parsed but not yet acknowledged: the server may refuse the Parse (a named
        # statement that exists, a table that does not), and then keeps what it had.
        self.pending: dict[str, tuple[Statement, int]] = {}  # and its batch (Sync count)
        self._batch = 0  # Syncs forwarded so far
        # portals: the session's, shared with the Bind gate; a tracker of its own keeps
        # its batch counts itself (unit tests)
        self._own = names is None
        self.names = names if names is not None else Namespaces()
        # bumped by every message that may open or close a cursor (see execute)
        self.epoch = 0
        self.queue: deque[_Expect] = deque()
        self.result: Result | None = None  # rows currently arriving
        self._query_index = 0

    # ---- agent → backend (call when the message is forwarded) ------------------------
    def query(self, masks: list[Any]) -> None:
        """A simple Query; `masks` has one entry per statement ([] when refused).
        (The pipeline drops the unnamed portal from the shared Namespaces.)"""
        self.epoch += 1
        if self._own:
            self.names.close("")
            self.names.sent += 1
        self.queue.append(_Expect("query", [Statement(m) for m in masks]))

    def parse(self, name: str, mask: Any, dependent: str = "") -> None:
        st = Statement(mask, dependent=dependent, epoch=self.names.statement_epoch)
        self.pending[name] = (st, self._batch)  # what later messages here refer to
        self.queue.append(_Expect("parse", target=st, name=name))

    def _statement(self, name: str) -> Statement | None:
        """What `name` runs for a message forwarded now.  A Parse earlier in this batch
        decides (if it fails, the server skips this message too); one in an earlier
        batch not yet answered may fail or be skipped and leave what the server had:
        when there was something, which one is unknown, and everything is masked."""
        pending = self.pending.get(name)
        if pending is None:
            return self.statements.get(name)
        if pending[1] == self._batch or name not in self.statements:
            return pending[0]
        return Statement(_UNKNOWN_STATEMENT)

    def bind(
        self, portal: str, statement: str, formats: tuple[int, ...], binding: Binding | None = None
    ) -> None:
        """A Bind forwarded now; `binding`: its entry in the shared Namespaces."""
        if binding is None:
            binding = self.names.bind(portal, None)
        st = self._statement(statement) or Statement(_UNKNOWN_STATEMENT)
        self.epoch += 1
        same = st.dependent != "execute" or st.epoch == self.names.statement_epoch
        binding.masking = Portal(st, formats, epoch=self.epoch, statement_fields=same)
        self.queue.append(_Expect("bind", target=binding))

    def _portal(self, name: str) -> Portal | None:
        """What portal `name` holds for a message forwarded now; None: not one thing
        hoopy knows (an unanswered Bind may fail, a cursor declared in SQL)."""
        found = self.names.portal(name)
        if len(found) == 1 and isinstance(found[0].masking, Portal):
            return found[0].masking
        return None

    def describe(self, kind: str, name: str) -> None:
        if kind == "S":
            target: Statement | Portal | None = self._statement(name)
            self.queue.append(_Expect("describe_s", target=target))
        else:
            self.queue.append(_Expect("describe_p", target=self._portal(name)))

    def execute(self, portal: str) -> None:
        target = self._portal(portal)
        stale = (
            target is not None
            and target.statement.dependent == "fetch"
            and target.epoch != self.epoch
        )
        self.epoch += 1  # what it runs may open or close cursors
        self.queue.append(_Expect("execute", target=target, stale=stale))

    def close(self, kind: str, name: str) -> None:
        """Close of a statement or portal (the pipeline drops a portal from Namespaces)."""
        if kind == "S":
            self.pending.pop(name, None)
            self.statements.pop(name, None)
        else:
            self.epoch += 1
        self.queue.append(_Expect("close", name=name if kind == "S" else None))

    def forget(self, name: str | None) -> None:
        """SQL changed what statement `name` holds (None: every name): what it holds
        now is unknown, and no answer still due can make it known again."""
        for e in self.queue:
            if e.kind == "parse" and (name is None or e.name == name):
                e.target = None
        if name is None:
            self.statements.clear()
            self.pending.clear()
        else:
            self.statements.pop(name, None)
            self.pending.pop(name, None)

    def sync(self) -> None:
        self._batch += 1
        if self._own:
            self.names.sent += 1
        self.queue.append(_Expect("sync"))

    # ---- backend → agent ---------------------------------------------------------------
    def _head(self) -> _Expect | None:
        return self.queue[0] if self.queue else None

    def row_description(self, fields: Fields) -> Result | None:
        """A RowDescription; returns the Result whose rows follow (simple query)."""
        head = self._head()
        if head is None:
            return None
        if head.kind == "describe_s":
            self.queue.popleft()
            if isinstance(head.target, Statement):
                head.target.fields, head.target.described = fields, True
            return None
        if head.kind == "describe_p":
            self.queue.popleft()
            if isinstance(head.target, Portal):
                head.target.fields = fields
                head.target.statement.fields = head.target.statement.fields or fields
                head.target.statement.described = True
            return None
        if head.kind == "query":
            st = self._query_statement(head)
            self.result = Result(st, tuple(f.format_code for f in fields), fields)
            return self.result
        return None

    def no_data(self) -> None:
        head = self._head()
        if head is not None and head.kind in ("describe_s", "describe_p"):
            self.queue.popleft()
            if isinstance(head.target, Statement):
                head.target.described = True

    def rows(self) -> Result:
        """The Result that DataRows now arriving belong to.  Rows hoopy cannot place
        belong to an unknown statement: the planner masks every value of them."""
        if self.result is not None:
            return self.result
        head = self._head()
        if head is not None and head.kind == "execute":
            target = head.target if isinstance(head.target, Portal) and not head.stale else None
            self.result = self._execute_result(target)
        elif head is not None and head.kind == "query":
            # rows without a RowDescription: nothing tells what they are
            self.result = Result(self._query_statement(head), (), None)
        else:
            self.result = Result(Statement(_UNKNOWN_STATEMENT), (), None)
        return self.result

    def copy_out(self, formats: tuple[int, ...]) -> Result:
        head = self._head()
        if head is None:
            st = Statement(_UNKNOWN_STATEMENT)
        elif head.kind == "query":
            st = self._query_statement(head)
        elif head.kind == "execute" and isinstance(head.target, Portal) and not head.stale:
            st = head.target.statement
        else:
            st = Statement(_UNKNOWN_STATEMENT)
        self.result = Result(st, formats, None)
        return self.result

    def complete(self) -> None:
        """CommandComplete / EmptyQueryResponse / PortalSuspended."""
        self.result = None
        head = self._head()
        if head is None:
            return
        if head.kind == "query":
            self._query_index += 1
        elif head.kind == "execute":
            self.queue.popleft()

    def simple_ack(self) -> None:
        """ParseComplete / BindComplete / CloseComplete."""
        head = self._head()
        if head is not None and head.kind in ("parse", "bind", "close"):
            self.queue.popleft()
            if head.kind == "parse" and isinstance(head.target, Statement):
                assert head.name is not None
                self.statements[head.name] = head.target  # the server holds it now
                if self.pending.get(head.name, (None,))[0] is head.target:
                    del self.pending[head.name]
            elif head.kind == "bind" and isinstance(head.target, Binding):
                self.names.bound(head.target)  # the portal holds it now
            elif head.kind == "close" and head.name is not None:
                self.statements.pop(head.name, None)  # also if parsed after the forward

    def _skipped(self, e: _Expect) -> None:
        """The server never ran this message (an error came before the Sync)."""
        name = e.name
        if e.kind == "bind" and isinstance(e.target, Binding):
            self.names.failed(e.target)  # the portal holds what it held
        elif e.kind == "parse" and name in self.pending and self.pending[name][0] is e.target:
            del self.pending[name]

    def error(self) -> None:
        self.result = None
        head = self._head()
        if head is None or head.kind == "query":
            return  # the query ends with ReadyForQuery
        # extended protocol: the server skips everything up to Sync
        while self.queue and self.queue[0].kind not in ("sync", "query"):
            self._skipped(self.queue.popleft())

    def ready(self, status: str = "I") -> None:
        if self._own:
            self.names.done += 1
            if status == "I":
                self.names.idle()
        self.result = None
        self._query_index = 0
        while self.queue:
            e = self.queue.popleft()
            if e.kind in ("sync", "query"):
                return
            self._skipped(e)

    def current_mask(self) -> Any:
        """The mask record of the statement whose answer is arriving (None: unknown)."""
        if self.result is not None:
            return self.result.statement.mask
        head = self._head()
        if head is None:
            return None
        if head.kind == "query":
            return self._query_statement(head).mask
        if head.kind == "execute" and isinstance(head.target, Portal) and not head.stale:
            return head.target.statement.mask
        return None

    # ---- helpers -----------------------------------------------------------------------
    def _query_statement(self, head: _Expect) -> Statement:
        if self._query_index < len(head.statements):
            return head.statements[self._query_index]
        return Statement(_UNKNOWN_STATEMENT)

    @staticmethod
    def _execute_result(target: Portal | None) -> Result:
        if not isinstance(target, Portal):
            return Result(Statement(_UNKNOWN_STATEMENT), (), None)
        st = target.statement
        if target.fields is not None:
            return Result(st, tuple(f.format_code for f in target.fields), target.fields)
        if st.dependent == "fetch" or not target.statement_fields:
            return Result(st, (), None)  # only its portal's Describe tells what it reads
        n = len(st.fields) if st.fields is not None else 0
        return Result(st, result_formats(target.formats, n), st.fields)


class _Unknown:
    """Rows of a statement hoopy did not see parsed: mask everything."""

    def __repr__(self) -> str:
        return "UNKNOWN_STATEMENT"


_UNKNOWN_STATEMENT = _Unknown()
UNKNOWN_STATEMENT: Any = _UNKNOWN_STATEMENT
