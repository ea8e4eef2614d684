"""Just-in-time approvals: a privileged command waits for a human decision.

Theory of operation: `Session.check` hands a `require_approval` decision to
`ApprovalService.wait_for`, which stores a pending `Approval` in the state
store, tells the notifiers (Slack) and the agent (via `Session.notify`), then
waits.  A decision arrives in-process (admin API, Slack click →
`decide()`, which wakes the waiter at once) or from another process (`hoopy
approvals approve ID` writes the store; waiters poll it).  Transitions are a
single `UPDATE … WHERE state = 'pending'`, so two approvers clicking at once
produce exactly one decision; approving also needs `expires` to be in the future,
whichever path it comes by.  An approval releases one command once, unless its rule
grants reuse of the same statement fingerprint for a while — to the same agent (issuer
and subject), on the same connector, with the same search_path, and never for another
statement of the same agent message (`fresh`): the approver saw only one of them.

What an approver sees travels in fields of its own: the command text as the agent sent
it, the values it runs with (`values`, whole), and who asked (`issuer`, `subject`).
Nothing is ever spliced into the agent's text, where the agent could forge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hoopy import showsafe
from hoopy.errors import ApprovalRejected
from hoopy.policy import Command, Decision
from hoopy.state import StateStore

if TYPE_CHECKING:
    from hoopy.gateway import Metrics
    from hoopy.session import Session

log = logging.getLogger("hoopy.approvals")

PENDING, APPROVED, DENIED, EXPIRED, CANCELLED = (
    "pending",
    "approved",
    "denied",
    "expired",
    "cancelled",
)
FINAL = frozenset({APPROVED, DENIED, EXPIRED, CANCELLED})
_COLUMNS = (
    "id",
    "session_id",
    "protocol",
    "connector",
    "subject",
    "groups",
    "command",
    "fingerprint",
    "rule",
    "approvers",
    "state",
    "created",
    "expires",
    "decided_by",
    "decided_at",
    "reason",
    "notice",
    "issuer",
    "command_values",
)
_BIG = 1 << 20  # characters of command and values past which storing goes to a thread
_ATTRS = tuple({"command_values": "values"}.get(c, c) for c in _COLUMNS)


@dataclass
class Approval:
    id: str
    session_id: str
    protocol: str
    connector: str
    subject: str
    groups: list[str]
    command: str
    fingerprint: str
    rule: str
    approvers: list[str]
    state: str
    created: float
    expires: float
    decided_by: str = ""
    decided_at: float | None = None
    reason: str = ""
    notice: str = ""  # where it was announced (JSON from the notifier, e.g. Slack ts)
    # Seconds of reuse approving grants (the rule's grant.reuse_for).  Not stored (the
    # table has no column for it): known to the process that asked, for its notifiers.
    reuse_for: float = 0.0
    issuer: str = ""  # the token's issuer: the requester is (issuer, subject)
    # What runs beside `command` (a Bind's values, "$1 = '5'"), whole, one per entry:
    # shown apart from the text the agent wrote, never inside it.
    values: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["reuse_for"]  # 0.0 for any approval read back from the store
        out["notes"] = showsafe.notes([self.command, *self.values, self.subject])
        return out


def new_approval_id() -> str:
    return "apr-" + secrets.token_hex(6)


class ApprovalStore:
    """Approvals in the state store (same database as the session index)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def create(self, a: Approval) -> None:
        row = asdict(a)
        for name in ("groups", "approvers", "values"):
            row[name] = json.dumps(row[name])
        self.store._execute(
            f"INSERT INTO approvals ({', '.join(_COLUMNS)}) VALUES "
            f"({', '.join('?' for _ in _COLUMNS)})",
            [row[c] for c in _ATTRS],
        )

    @staticmethod
    def _row(r: tuple[Any, ...]) -> Approval:
        d = dict(zip(_ATTRS, r, strict=True))
        for name in ("groups", "approvers", "values"):
            d[name] = json.loads(d[name])
        return Approval(**d)

    def get(self, approval_id: str) -> Approval | None:
        rows = self.store._query(
            f"SELECT {', '.join(_COLUMNS)} FROM approvals WHERE id = ?", (approval_id,)
        )
        return self._row(rows[0]) if rows else None

    def state(self, approval_id: str) -> str | None:
        rows = self.store._query("SELECT state FROM approvals WHERE id = ?", (approval_id,))
        return str(rows[0][0]) if rows else None

    def list(self, state: str | None = None, limit: int = 100) -> list[Approval]:
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        rows = self.store._query(
            f"SELECT {', '.join(_COLUMNS)} FROM approvals {where} ORDER BY created DESC LIMIT ?",
            [*params, limit],
        )
        return [self._row(r) for r in rows]

    def transition(
        self, approval_id: str, to: str, by: str, reason: str, now: float
    ) -> Approval | None:
        """pending → `to`, atomically; None if it was no longer pending, or — to approve —
        past its expiry (every path checks it here: Slack, admin API, CLI)."""
        unexpired = " AND expires > ?" if to == APPROVED else ""
        changed = self.store._execute(
            "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, reason = ? "
            f"WHERE id = ? AND state = 'pending'{unexpired}",
            (to, by, now, reason, approval_id, *((now,) if unexpired else ())),
        )
        return self.get(approval_id) if changed == 1 else None

    def refusal(self, approval_id: str, now: float) -> str:
        """Why a decision on `approval_id` did not happen (after `transition` said None)."""
        a = self.get(approval_id)
        if a is None:
            return "no such approval"
        if a.state == PENDING and a.expires <= now:
            return "approval has expired"
        return f"approval is already {a.state}"

    def set_notice(self, approval_id: str, notice: str) -> None:
        self.store._execute("UPDATE approvals SET notice = ? WHERE id = ?", (notice, approval_id))


def _grant_key(session: Session, command: Command, decision: Decision) -> tuple[Any, ...]:
    """What a reuse grant is keyed on: everything its decision was keyed on — who asked
    ((issuer, subject): two issuers may hand out one subject; and the groups), where,
    the statement's shape and where its unqualified names point (after SET search_path
    one text may reach another schema's tables) — and the rule that asked."""
    who = session.identity
    shape = command.fingerprint or (command.text, command.values)
    return (who.issuer, who.subject, tuple(sorted(who.groups)), session.connector, shape,
            session.scope.state if session.scope else None, decision.rule)  # fmt: skip


class Notifier(Protocol):
    """Where humans learn about approvals (Slack)."""

    async def requested(self, a: Approval) -> str:
        """Announce a pending approval; returns a JSON reference for later updates and
        raises on failure (the approval still exists and can be decided elsewhere)."""
        ...

    async def decided(self, a: Approval) -> None:
        """Show the outcome where the request was announced."""
        ...

    def describe(self) -> str:
        """Where requests go, for the agent's notice (e.g. 'in #db-approvals')."""
        ...


@dataclass
class _Grant:
    until: float
    approval_id: str


@dataclass
class ApprovalService:
    store: ApprovalStore
    notifiers: Sequence[Notifier] = ()
    metrics: Metrics | None = None
    poll_interval: float = 0.5
    clock: Callable[[], float] = time.time
    _wake: dict[str, asyncio.Event] = field(default_factory=dict)
    _grants: dict[tuple[Any, ...], _Grant] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _done: set[str] = field(default_factory=set)  # decisions this process has announced
    _reuse: dict[str, float] = field(default_factory=dict)  # waiting approval id → reuse_for
    # Approvals this process created that are still pending: the gauge, kept as a count
    # (reading the store for it would scan it on the event loop at every request).
    _pending: set[str] = field(default_factory=set)

    # ---- the agent side ----------------------------------------------------------------
    async def wait_for(
        self,
        session: Session,
        command: Command,
        decision: Decision,
        *,
        fresh: set[str] | None = None,
    ) -> str:
        """Block until approved (returns the approval id) or raise ApprovalRejected.

        `fresh`: ids of approvals already used by this agent message (one set per
        message); their grants are not reused, since an approver who granted reuse for
        one statement never saw the others of the same text.  Every id this call creates
        or reuses is added to it."""
        fresh = set() if fresh is None else fresh
        key = _grant_key(session, command, decision)
        grant = self._reusable(key, fresh)
        if grant is not None:
            session.record("approval_reused", approval=grant.approval_id, rule=decision.rule)
            fresh.add(grant.approval_id)
            return grant.approval_id
        a = self._new(session, command, decision)
        fresh.add(a.id)
        if sum(map(len, a.values)) + len(a.command) > _BIG:  # stored whole: off the loop
            await asyncio.to_thread(self.store.create, a)
        else:
            self.store.create(a)
        if a.reuse_for > 0:
            self._reuse[a.id] = a.reuse_for
        self._pending.add(a.id)
        self._gauge()
        session.record(
            "approval_requested",
            approval=a.id,
            rule=a.rule,
            approvers=a.approvers,
            expires=a.expires,
        )
        where = await self._announce(session, a)
        # The agent learns what it waits for and where, never how to approve it itself.
        session.notify(
            f"waiting for approval {a.id} by {', '.join(a.approvers) or 'an approver'}{where}"
        )
        final = await self._await_decision(session, a)
        if decision.reuse_for > 0:
            self._grants[key] = _Grant(self.clock() + decision.reuse_for, a.id)
        return final.id

    def _reusable(self, key: tuple[Any, ...], fresh: set[str]) -> _Grant | None:
        grant = self._grants.get(key)
        if grant is None or grant.until <= self.clock() or grant.approval_id in fresh:
            return None
        return grant

    async def _await_decision(self, session: Session, a: Approval) -> Approval:
        """The approved approval; raises ApprovalRejected for any other outcome, and
        cancels the approval when the agent goes away."""
        try:
            final = await self._wait(a)
        except asyncio.CancelledError:
            gone = self.store.transition(
                a.id, CANCELLED, "", "the agent cancelled or disconnected", self.clock()
            )
            if gone is not None:
                self._finished(gone)
                with contextlib.suppress(Exception):
                    session.record("approval_cancelled", approval=a.id)
            raise
        session.record(
            "approval_decided",
            approval=a.id,
            state=final.state,
            by=final.decided_by,
            reason=final.reason,
        )
        if final.state != APPROVED:
            how = {
                DENIED: f"was denied by {final.decided_by or 'an approver'}",
                EXPIRED: "expired without a decision",
            }.get(final.state, final.state)
            why = f": {final.reason}" if final.reason and final.state == DENIED else ""
            raise ApprovalRejected(f"approval {a.id} {how}{why}", a.id, a.rule)
        return final

    def _new(self, session: Session, command: Command, decision: Decision) -> Approval:
        now = self.clock()
        return Approval(
            id=new_approval_id(),
            session_id=session.id,
            protocol=session.protocol,
            connector=session.connector,
            subject=session.identity.subject,
            issuer=session.identity.issuer,
            values=list(command.values),
            groups=sorted(session.identity.groups),
            command=session.hide(command.text)[0],
            fingerprint=command.fingerprint,
            rule=decision.rule,
            approvers=list(decision.approvers),
            state=PENDING,
            created=now,
            expires=now + (decision.timeout or 600.0),
            reuse_for=decision.reuse_for,
        )

    async def _announce(self, session: Session, a: Approval) -> str:
        where = ""
        for n in self.notifiers:
            try:
                notice = await n.requested(a)
                self.store.set_notice(a.id, notice)
                a.notice = notice
                where = f" {n.describe()}"
                session.record("approval_notified", approval=a.id, via=n.describe())
            except Exception as e:  # Slack down: the approval still exists
                log.error("approval %s: notifier failed: %s", a.id, type(e).__name__)
                session.record("approval_notify_failed", approval=a.id, error=type(e).__name__)
        return where

    async def _wait(self, a: Approval) -> Approval:
        event = self._wake.setdefault(a.id, asyncio.Event())
        try:
            while True:
                # The state alone while waiting: the row may hold megabytes of values.
                state = self.store.state(a.id)
                current = self.store.get(a.id) if state in FINAL else None
                if current is not None and current.state in FINAL:
                    if current.id not in self._done:  # decided by another process (CLI)
                        self._finished(current)
                    return current
                left = a.expires - self.clock()
                if left <= 0:
                    done = self.store.transition(a.id, EXPIRED, "", "timed out", self.clock())
                    if done is not None:
                        self._finished(done)
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), min(self.poll_interval, left))
                if event.is_set():
                    event.clear()
        finally:
            self._wake.pop(a.id, None)
            self._done.discard(a.id)
            self._reuse.pop(a.id, None)
            if a.id in self._pending:  # e.g. the store failed while it waited
                self._pending.discard(a.id)
                self._gauge()

    # ---- the approver side -------------------------------------------------------------
    def decide(self, approval_id: str, approve: bool, by: str, reason: str = "") -> Approval | None:
        """Approve or deny; None when it does not exist, is no longer pending or (to
        approve) has expired — `store.refusal()` says which."""
        done = self.store.transition(
            approval_id, APPROVED if approve else DENIED, by, reason, self.clock()
        )
        if done is None:
            return None
        self._finished(done)
        return done

    def _finished(self, a: Approval) -> None:
        self._done.add(a.id)
        self._pending.discard(a.id)
        a.reuse_for = a.reuse_for or self._reuse.get(a.id, 0.0)  # for the notifiers
        event = self._wake.get(a.id)
        if event is not None:
            event.set()
        if self.metrics is not None:
            self.metrics.inc(f'approval_decisions_total|outcome="{a.state}"')
            if a.decided_at is not None:
                self.metrics.observe("approval_decision_seconds", a.decided_at - a.created)
        self._gauge()
        for n in self.notifiers:
            task = asyncio.get_running_loop().create_task(self._update(n, a))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _update(self, n: Notifier, a: Approval) -> None:
        try:
            await n.decided(a)
        except Exception as e:
            log.error("approval %s: notifier update failed: %s", a.id, type(e).__name__)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.gauges["approvals_pending"] = len(self._pending)

    async def close(self) -> None:
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 2.0)
