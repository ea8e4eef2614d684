"""Just-in-time approvals: a privileged command waits for a human decision.

Theory of operation: `Session.check` hands a `require_approval` decision to
`ApprovalService.wait_for`, which stores a pending `Approval` in the state
store, tells the notifiers (Slack) and the agent (via `Session.notify`), then
waits.  A decision arrives in-process (admin API, Slack click →
`decide()`, which wakes the waiter at once) or from another process (`hoopy
approvals approve ID` writes the store; waiters poll it).  Transitions are a
single `UPDATE … WHERE state = 'pending'`, so two approvers clicking at once
produce exactly one decision.  An approval releases one command once, unless
its rule grants reuse of the same statement fingerprint for a while.
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
)


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def new_approval_id() -> str:
    return "apr-" + secrets.token_hex(6)


class ApprovalStore:
    """Approvals in the state store (same database as the session index)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def create(self, a: Approval) -> None:
        row = asdict(a)
        row["groups"] = json.dumps(a.groups)
        row["approvers"] = json.dumps(a.approvers)
        self.store._execute(
            f"INSERT INTO approvals ({', '.join(_COLUMNS)}) VALUES "
            f"({', '.join('?' for _ in _COLUMNS)})",
            [row[c] for c in _COLUMNS],
        )

    @staticmethod
    def _row(r: tuple[Any, ...]) -> Approval:
        d = dict(zip(_COLUMNS, r, strict=True))
        d["groups"] = json.loads(d["groups"])
        d["approvers"] = json.loads(d["approvers"])
        return Approval(**d)

    def get(self, approval_id: str) -> Approval | None:
        rows = self.store._query(
            f"SELECT {', '.join(_COLUMNS)} FROM approvals WHERE id = ?", (approval_id,)
        )
        return self._row(rows[0]) if rows else None

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
        """pending → `to`, atomically; None if it was no longer pending."""
        changed = self.store._execute(
            "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, reason = ? "
            "WHERE id = ? AND state = 'pending'",
            (to, by, now, reason, approval_id),
        )
        return self.get(approval_id) if changed == 1 else None

    def set_notice(self, approval_id: str, notice: str) -> None:
        self.store._execute("UPDATE approvals SET notice = ? WHERE id = ?", (notice, approval_id))


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
    _grants: dict[tuple[str, str, str], _Grant] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _done: set[str] = field(default_factory=set)  # decisions this process has announced

    # ---- the agent side ----------------------------------------------------------------
    async def wait_for(self, session: Session, command: Command, decision: Decision) -> str:
        key = (session.identity.subject, session.connector, command.fingerprint or command.text)
        grant = self._grants.get(key)
        if grant is not None and grant.until > self.clock():
            session.record("approval_reused", approval=grant.approval_id, rule=decision.rule)
            return grant.approval_id
        a = self._new(session, command, decision)
        self.store.create(a)
        self._gauge()
        session.record(
            "approval_requested",
            approval=a.id,
            rule=a.rule,
            approvers=a.approvers,
            expires=a.expires,
        )
        where = await self._announce(session, a)
        session.notify(
            f"waiting for approval {a.id} by {', '.join(a.approvers) or 'an approver'}{where}; "
            f"an admin can also run: hoopy approvals approve {a.id}"
        )
        try:
            final = await self._wait(a)
        except asyncio.CancelledError:
            gone = self.store.transition(
                a.id, CANCELLED, "", "the agent disconnected", self.clock()
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
        if decision.reuse_for > 0:
            self._grants[key] = _Grant(self.clock() + decision.reuse_for, a.id)
        return a.id

    def _new(self, session: Session, command: Command, decision: Decision) -> Approval:
        now = self.clock()
        return Approval(
            id=new_approval_id(),
            session_id=session.id,
            protocol=session.protocol,
            connector=session.connector,
            subject=session.identity.subject,
            groups=sorted(session.identity.groups),
            command=command.text,
            fingerprint=command.fingerprint,
            rule=decision.rule,
            approvers=list(decision.approvers),
            state=PENDING,
            created=now,
            expires=now + (decision.timeout or 600.0),
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
                current = self.store.get(a.id)
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

    # ---- the approver side -------------------------------------------------------------
    def decide(self, approval_id: str, approve: bool, by: str, reason: str = "") -> Approval | None:
        """Approve or deny; None when it does not exist or is no longer pending."""
        done = self.store.transition(
            approval_id, APPROVED if approve else DENIED, by, reason, self.clock()
        )
        if done is None:
            return None
        self._finished(done)
        return done

    def _finished(self, a: Approval) -> None:
        self._done.add(a.id)
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
            self.metrics.gauges["approvals_pending"] = len(self.store.list(PENDING, 10_000))

    async def close(self) -> None:
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 2.0)
