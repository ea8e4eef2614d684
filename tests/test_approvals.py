"""ApprovalService on its own: grants, the agent's notice, expiry on every approval path.

A stand-in Session (the attributes `wait_for` uses) and a real SQLite state store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hoopy.approvals import (
    APPROVED,
    DENIED,
    PENDING,
    Approval,
    ApprovalService,
    ApprovalStore,
    new_approval_id,
)
from hoopy.errors import ApprovalRejected
from hoopy.policy import Command, Decision, Identity
from hoopy.protocols.postgres.searchpath import SearchPath
from hoopy.state import StateStore
from tests.test_slack import StandInSession  # the attributes wait_for uses

FINGERPRINT = "insert into refunds values ($1, $2)"
REUSE = Decision(
    "require_approval", "refunds-need-a-dba", approvers=("dba",), timeout=60, reuse_for=600
)


@dataclass
class SeenNotifier:
    """Keeps what the service hands to notifiers."""

    requested_: list[Approval] = field(default_factory=list)
    decided_: list[Approval] = field(default_factory=list)

    async def requested(self, a: Approval) -> str:
        self.requested_.append(a)
        return "{}"

    async def decided(self, a: Approval) -> None:
        self.decided_.append(a)

    def describe(self) -> str:
        return "in #db-approvals"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


@pytest.fixture
async def service(store: StateStore) -> AsyncIterator[ApprovalService]:
    svc = ApprovalService(ApprovalStore(store), poll_interval=0.02)
    yield svc
    await svc.close()


def refund(values: str) -> Command:
    return Command(
        "postgres", "app-db", f"insert into refunds values {values}", fingerprint=FINGERPRINT
    )


async def pending(service: ApprovalService, seen: set[str], timeout: float = 5) -> Approval:
    """The next pending approval not in `seen` (bounded wait)."""
    async with asyncio.timeout(timeout):
        while True:
            for a in service.store.list(PENDING):
                if a.id not in seen:
                    seen.add(a.id)
                    return a
            await asyncio.sleep(0.01)


async def run_approving(
    service: ApprovalService, session: StandInSession, cmd: Command, fresh: set[str] | None
) -> tuple[str, bool]:
    """wait_for, approving whatever it asks for; returns (approval id, whether it asked)."""
    before = {a.id for a in service.store.list(None)}
    task = asyncio.create_task(service.wait_for(session, cmd, REUSE, fresh=fresh))  # type: ignore[arg-type]
    done, _ = await asyncio.wait({task}, timeout=0.2)
    if done:
        return task.result(), False
    a = await pending(service, before)
    assert service.decide(a.id, True, by="test:dba") is not None
    return await asyncio.wait_for(task, 5), True


async def test_grant_is_not_reused_by_another_statement_of_the_same_message(
    service: ApprovalService,
) -> None:
    session = StandInSession()
    message: set[str] = set()
    first, asked = await run_approving(service, session, refund("(300, 10)"), message)
    assert asked and message == {first}
    # the same shape in the same text: the approver saw only the first one
    second, asked = await run_approving(service, session, refund("(301, 88888888)"), message)
    assert asked and second != first
    assert message == {first, second}
    commands = sorted(a.command for a in service.store.list(APPROVED))
    assert commands == [
        "insert into refunds values (300, 10)",
        "insert into refunds values (301, 88888888)",
    ]


async def test_grant_is_reused_once_by_a_later_message(service: ApprovalService) -> None:
    session = StandInSession()
    first, _ = await run_approving(service, session, refund("(1, 10)"), set())
    later: set[str] = set()
    reused, asked = await run_approving(service, session, refund("(2, 20)"), later)
    assert (reused, asked) == (first, False) and later == {first}
    assert ("approval_reused", {"approval": first, "rule": REUSE.rule}) in session.events
    # a second statement of that later message asks again
    third, asked = await run_approving(service, session, refund("(3, 30)"), later)
    assert asked and third != first


async def test_without_fresh_the_grant_is_reused(service: ApprovalService) -> None:
    session = StandInSession()
    first, _ = await run_approving(service, session, refund("(1, 10)"), None)
    assert await run_approving(service, session, refund("(2, 20)"), None) == (first, False)


async def test_notice_names_the_approval_but_not_how_to_approve_it(
    service: ApprovalService,
) -> None:
    service.notifiers = [SeenNotifier()]
    session = StandInSession()
    aid, _ = await run_approving(service, session, refund("(1, 10)"), set())
    (notice,) = session.notices
    assert aid in notice and "dba" in notice and "in #db-approvals" in notice
    assert "hoopy approvals" not in notice and "approve " not in notice


async def test_notifiers_learn_the_reuse_grant(service: ApprovalService) -> None:
    seen = SeenNotifier()
    service.notifiers = [seen]
    await run_approving(service, StandInSession(), refund("(1, 10)"), set())
    await service.close()
    assert [a.reuse_for for a in seen.requested_] == [600]
    assert [(a.state, a.reuse_for) for a in seen.decided_] == [(APPROVED, 600)]
    assert "reuse_for" not in seen.requested_[0].to_json()  # not stored: not reported


def stored(service: ApprovalService, expires: float) -> Approval:
    now = time.time()
    a = Approval(
        new_approval_id(), "s-1", "postgres", "app-db", "agent-7", ["agents"],
        "delete from orders", "delete from orders", "r", ["dba"], PENDING, now - 700, expires,
    )  # fmt: skip
    service.store.create(a)
    return a


async def test_expired_approval_cannot_be_approved(service: ApprovalService) -> None:
    old = stored(service, time.time() - 1)
    assert service.decide(old.id, True, by="admin:alice") is None
    assert service.store.transition(old.id, APPROVED, "cli:bob", "", time.time()) is None
    assert service.store.refusal(old.id, time.time()) == "approval has expired"
    got = service.store.get(old.id)
    assert got is not None and got.state == PENDING
    # denying it is harmless and still possible
    denied = service.decide(old.id, False, by="admin:alice")
    assert denied is not None and denied.state == DENIED
    assert service.store.refusal(old.id, time.time()) == "approval is already denied"
    assert service.store.refusal("apr-nope", time.time()) == "no such approval"


async def test_unexpired_approval_can_be_approved(service: ApprovalService) -> None:
    a = stored(service, time.time() + 60)
    done = service.decide(a.id, True, by="admin:alice")
    assert done is not None and done.state == APPROVED


# ---- issue 16: who asked is (issuer, subject); grants keyed with the search_path -----------

ISSUER_A, ISSUER_B = "https://idp-a.example", "https://idp-b.example"


def agent(issuer: str, subject: str = "agent-1", **kw: object) -> StandInSession:
    return StandInSession(identity=Identity(subject, frozenset({"agents"}), issuer), **kw)  # type: ignore[arg-type]


async def test_grant_is_not_reused_by_the_same_subject_of_another_issuer(
    service: ApprovalService,
) -> None:
    first, _ = await run_approving(service, agent(ISSUER_A), refund("(1, 10)"), None)
    # issuer A's agent-1 again: reused
    assert await run_approving(service, agent(ISSUER_A), refund("(2, 20)"), None) == (first, False)
    # issuer B's agent-1 is another agent: asks anew, and the approval says whose
    other, asked = await run_approving(service, agent(ISSUER_B), refund("(3, 30)"), None)
    assert asked and other != first
    stored_ = service.store.get(other)
    assert stored_ is not None and (stored_.issuer, stored_.subject) == (ISSUER_B, "agent-1")


async def test_grant_is_not_reused_after_search_path_changes(service: ApprovalService) -> None:
    path = SearchPath("app")
    first, _ = await run_approving(service, agent(ISSUER_A, scope=path), refund("(1, 10)"), None)
    moved = SearchPath("app")
    assert moved.observe(set_path("SET search_path = public, other"))
    again, asked = await run_approving(
        service, agent(ISSUER_A, scope=moved), refund("(2, 20)"), None
    )
    assert asked and again != first
    unknown = SearchPath("app")
    assert unknown.observe(set_path("SET search_path = public, current_schema()"))
    assert unknown.schemas is None
    assert (await run_approving(service, agent(ISSUER_A, scope=unknown), refund("(3, 30)"), None))[
        1
    ]
    # the same scope as the first: the grant is reused
    assert await run_approving(
        service, agent(ISSUER_A, scope=SearchPath("app")), refund("(4, 40)"), None
    ) == (first, False)


def set_path(text: str) -> Command:
    return Command("postgres", "app-db", text, kinds=frozenset({"set", "set_search_path"}))


async def test_values_travel_beside_the_command(service: ApprovalService) -> None:
    """A Bind's values are their own field, stored and read back whole: never spliced
    into the agent's text."""
    long_value = "$1 = '" + "5," * 100 + ",".join(map(str, range(1, 101))) + "'"
    values = [long_value, *(f"${i} = '{i}'" for i in range(2, 41))]
    cmd = refund("($1, $2)").with_values(values)
    aid, _ = await run_approving(service, agent(ISSUER_A), cmd, None)
    got = service.store.get(aid)
    assert got is not None
    assert got.command == "insert into refunds values ($1, $2)"
    assert got.values == values  # all 40, the first one whole
    assert got.to_json()["values"] == values and got.to_json()["issuer"] == ISSUER_A


async def test_pending_gauge_is_a_counter_not_a_scan(service: ApprovalService) -> None:
    """Issue 15: the gauge no longer reads the store (up to 10,000 rows on the event
    loop) at every request and decision."""
    from hoopy.gateway import Metrics

    service.metrics = Metrics()
    calls: list[object] = []
    real_list = service.store.list
    service.store.list = lambda *a, **k: calls.append(a) or real_list(*a, **k)  # type: ignore[method-assign]
    session = agent(ISSUER_A)
    task = asyncio.create_task(service.wait_for(session, refund("(1, 1)"), REUSE))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while service.metrics.gauges.get("approvals_pending") != 1:
            await asyncio.sleep(0.01)
    service.store.list = real_list  # type: ignore[method-assign]
    assert calls == []
    (a,) = service.store.list(PENDING)
    service.store.list = lambda *a, **k: calls.append(a) or real_list(*a, **k)  # type: ignore[method-assign]
    assert service.decide(a.id, False, by="test") is not None
    with pytest.raises(Exception, match="denied"):
        await asyncio.wait_for(task, 5)
    assert service.metrics.gauges["approvals_pending"] == 0 and calls == []


async def test_grant_is_keyed_with_the_rule_and_groups(service: ApprovalService) -> None:
    """A grant covers what its decision was made on: another rule asking for the same
    statement (another approver group), or the agent with other groups, asks again."""
    first, _ = await run_approving(service, agent(ISSUER_A), refund("(1, 10)"), None)
    other_rule = Decision(
        "require_approval", "security-review", approvers=("sec",), timeout=60, reuse_for=600
    )
    before = {a.id for a in service.store.list(None)}
    task = asyncio.create_task(
        service.wait_for(agent(ISSUER_A), refund("(2, 20)"), other_rule)  # type: ignore[arg-type]
    )
    a = await pending(service, before)
    assert a.rule == "security-review" and a.id != first
    assert service.decide(a.id, False, by="test") is not None
    with pytest.raises(ApprovalRejected):
        await asyncio.wait_for(task, 5)
    regrouped = StandInSession(
        identity=Identity("agent-1", frozenset({"agents", "admins"}), ISSUER_A)
    )
    assert (await run_approving(service, regrouped, refund("(3, 30)"), None))[1]
