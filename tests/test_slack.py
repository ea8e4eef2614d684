"""Slack notifier and interactivity against a local Slack Web API stand-in.

Real pieces throughout: the approval service over a SQLite state store, slack-sdk's async
client talking HTTP to `tests/slackstub.py`, the aiohttp interactivity endpoint on
127.0.0.1 driven with signed requests, and Socket Mode over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.request import SocketModeRequest

from hoopy.approvals import (
    APPROVED,
    DENIED,
    EXPIRED,
    PENDING,
    Approval,
    ApprovalService,
    ApprovalStore,
    new_approval_id,
)
from hoopy.config import Secret, SlackConfig
from hoopy.errors import ApprovalRejected
from hoopy.policy import Command, Decision, Identity
from hoopy.slack import (
    APPROVE_ACTION,
    DENY_ACTION,
    MAX_COMMAND,
    SlackInteractions,
    SlackNotifier,
    SlackSocketMode,
    clip_code,
    strip_comments,
)
from hoopy.state import StateStore
from tests.slackstub import SlackStub, sign

TOKEN = "xoxb-test-bot-token-1234"
APP_TOKEN = "xapp-test-app-token-5678"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
REQUESTER = "agent-7"
DBA1, DBA2, SRE, STRANGER = "U0DBA1", "U0DBA2", "U0SRE1", "U0NOBODY"


@pytest.fixture
async def stub() -> AsyncIterator[SlackStub]:
    s = SlackStub(token=TOKEN, app_token=APP_TOKEN)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def config(stub: SlackStub, monkeypatch: pytest.MonkeyPatch) -> SlackConfig:
    monkeypatch.setenv("HOOPY_TEST_SLACK_TOKEN", TOKEN)
    monkeypatch.setenv("HOOPY_TEST_SLACK_SECRET", SECRET)
    monkeypatch.setenv("HOOPY_TEST_SLACK_APP", APP_TOKEN)
    return SlackConfig(
        token=Secret("env:HOOPY_TEST_SLACK_TOKEN"),
        signing_secret=Secret("env:HOOPY_TEST_SLACK_SECRET"),
        channel="#db-approvals",
        approvers={"dba": (DBA1, DBA2), "sre": (SRE,)},
        api_url=stub.url,
        app_token=Secret("env:HOOPY_TEST_SLACK_APP"),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


@pytest.fixture
def notifier(config: SlackConfig) -> SlackNotifier:
    return SlackNotifier(config)


@pytest.fixture
async def service(store: StateStore, notifier: SlackNotifier) -> AsyncIterator[ApprovalService]:
    svc = ApprovalService(ApprovalStore(store), notifiers=[notifier], poll_interval=5.0)
    yield svc
    await svc.close()


@dataclass
class Clicks:
    """The interactivity endpoint on 127.0.0.1, and what its on_click callback saw."""

    url: str
    interactions: SlackInteractions
    http: aiohttp.ClientSession
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        async with self.http.post(self.url, data=body, headers=headers) as r:
            return r.status

    async def click(
        self, approval_id: str, user: str, action: str = APPROVE_ACTION, **user_extra: str
    ) -> int:
        body = form(payload(approval_id, user, action, **user_extra))
        return await self.post(body, sign(body, SECRET, int(time.time())))


@pytest.fixture
async def clicks(service: ApprovalService, config: SlackConfig) -> AsyncIterator[Clicks]:
    seen: list[tuple[str, dict[str, Any]]] = []
    interactions = SlackInteractions(
        service, config, on_click=lambda aid, info: seen.append((aid, info))
    )
    app = web.Application()
    app.router.add_post("/slack/interactions", interactions.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as http:
        yield Clicks(f"http://{host}:{port}/slack/interactions", interactions, http, seen)
    await interactions.close()
    await runner.cleanup()


def payload(approval_id: str, user: str, action: str, **user_extra: str) -> dict[str, Any]:
    """A `block_actions` payload shaped like Slack's."""
    return {
        "type": "block_actions",
        "user": {"id": user, "team_id": "T0", **user_extra},
        "team": {"id": "T0", "domain": "hoopy"},
        "channel": {"id": SlackStub.channel_id("#db-approvals"), "name": "db-approvals"},
        "container": {"type": "message", "message_ts": "1700000000.000001"},
        "response_url": "https://hooks.slack.invalid/actions/T0/1/x",
        "actions": [
            {
                "type": "button",
                "block_id": "hoopy_approval",
                "action_id": action,
                "value": approval_id,
                "action_ts": "1700000002.000000",
            }
        ],
    }


def form(p: dict[str, Any]) -> bytes:
    return urllib.parse.urlencode({"payload": json.dumps(p)}).encode()


def approval(command: str = "delete from orders where id = 42", **kw: Any) -> Approval:
    now = time.time()
    fields: dict[str, Any] = {
        "id": new_approval_id(),
        "session_id": "s-1",
        "protocol": "postgres",
        "connector": "app-db",
        "subject": REQUESTER,
        "groups": ["agents"],
        "command": command,
        "fingerprint": "fp",
        "rule": "writes-need-a-dba",
        "approvers": ["dba"],
        "state": PENDING,
        "created": now,
        "expires": now + 600,
    }
    return Approval(**{**fields, **kw})


async def announce(service: ApprovalService, notifier: SlackNotifier, a: Approval) -> Approval:
    """What the service does for a new approval: store it, post it, keep the reference."""
    service.store.create(a)
    a.notice = await notifier.requested(a)
    service.store.set_notice(a.id, a.notice)
    return a


def texts(blocks: list[dict[str, Any]]) -> str:
    """Every text in the blocks, one per line."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(blocks)
    return "\n".join(found)


def buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


def state_of(service: ApprovalService, a: Approval) -> str:
    got = service.store.get(a.id)
    assert got is not None
    return got.state


# ---- the notifier -----------------------------------------------------------------------


async def test_request_message_has_buttons_and_details(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    a = await announce(service, notifier, approval())
    (call,) = stub.called("chat.postMessage")
    assert call.token == TOKEN
    assert call.args["channel"] == "#db-approvals"
    assert a.id in call.args["text"]
    blocks = call.args["blocks"]
    assert [(b["action_id"], b["value"]) for b in buttons(blocks)] == [
        (APPROVE_ACTION, a.id),
        (DENY_ACTION, a.id),
    ]
    assert [b["text"]["text"] for b in buttons(blocks)] == ["Approve", "Deny"]
    body = texts(blocks)
    for needle in (a.id, REQUESTER, "agents", "app-db", "postgres", "writes-need-a-dba", "dba"):
        assert needle in body
    assert "```\nDELETE FROM orders\nWHERE id = 42\n```" in body  # pretty-printed SQL
    assert f"<!date^{int(a.expires)}^" in body
    ref = json.loads(a.notice)
    assert ref == {"channel": SlackStub.channel_id("#db-approvals"), "ts": ref["ts"]}
    assert (ref["channel"], ref["ts"]) in stub.messages
    assert notifier.describe() == "in #db-approvals"


async def test_hostile_command_is_escaped_fenced_and_truncated(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    evil = "select 1 -- <!channel> <https://evil.example|click> ``` & done\n" * 400
    a = await announce(service, notifier, approval(evil, protocol="ssh"))
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    (code,) = [b["text"]["text"] for b in blocks if b.get("text", {}).get("text", "")[:3] == "```"]
    assert "<!channel>" not in code and "<https://" not in code
    assert "&lt;!channel&gt;" in code and "&amp; done" in code
    assert code.count("```") == 2  # only the fence itself
    assert len(code) < 3000 and "truncated" in code
    assert a.id in stub.called("chat.postMessage")[0].args["text"]


def test_code_block_limits() -> None:
    assert clip_code("x" * 10_000) == ("```\n" + "x" * MAX_COMMAND + "\n```", True)
    many, cut = clip_code("\n".join(f"line {i}" for i in range(100)), max_lines=5)
    assert "line 4" in many and "line 5" not in many and cut
    assert clip_code("select 1") == ("```\nselect 1\n```", False)


def code_of(blocks: list[dict[str, Any]]) -> str:
    """The text of the section holding the command's code block."""
    (code,) = [b["text"]["text"] for b in blocks if b.get("text", {}).get("text", "")[:3] == "```"]
    return str(code)


async def test_a_long_comment_cannot_hide_the_where_clause(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    sneaky = "update orders set status='x' where id = 7 /*" + "-" * 2600 + "*/ or true"
    await announce(service, notifier, approval(sneaky))
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    code = code_of(blocks)
    assert "WHERE\n  id = 7\n  OR TRUE" in code and "--" not in code and "truncated" not in code
    assert [b["action_id"] for b in buttons(blocks)] == [APPROVE_ACTION, DENY_ACTION]


def test_strip_comments_keeps_what_runs() -> None:
    sql = "select 5 -/**/- 1, '--kept', $$/*kept*/$$ /* a /* nested */ b */ from t -- end\nwhere x"
    assert strip_comments(sql) == "select 5 - - 1, '--kept', $$/*kept*/$$ from t\nwhere x"


async def test_truncated_command_offers_no_approve_button(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, clicks: Clicks
) -> None:
    long = "update orders set status = '" + "x" * 3000 + "' where id = 7 or true"
    a = await announce(service, notifier, approval(long))
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    code = code_of(blocks)
    assert "or true" not in code.lower() and "truncated" in code
    assert f"hoopy approvals show {a.id}" in code and f"GET /api/approvals/{a.id}" in code
    assert [b["action_id"] for b in buttons(blocks)] == [DENY_ACTION]
    # a crafted (or stale) Approve click is refused all the same
    assert await clicks.click(a.id, DBA1) == 200
    (eph,) = await stub.wait_for("chat.postEphemeral")
    assert "truncated" in eph.args["text"] and state_of(service, a) == PENDING
    assert clicks.seen[0][1]["outcome"] == "truncated"


async def test_reuse_grant_is_spelled_out(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    shape = "insert into refunds values ($1, $2) /* note */"
    a = approval("insert into refunds values (300, 10)", fingerprint=shape, reuse_for=600)
    await announce(service, notifier, a)
    call = stub.called("chat.postMessage")[0]
    body = texts(call.args["blocks"])
    assert "Approving also allows* every statement of this shape" in body
    assert f"by {REQUESTER} on app-db for 10 min" in body
    assert "```\nINSERT INTO refunds\nVALUES\n  ($1, $2)\n```" in body
    assert "10 min" in call.args["text"]
    a.state, a.decided_by = APPROVED, "alice"
    await notifier.decided(a)
    assert "This approval also allows*" in texts(stub.called("chat.update")[0].args["blocks"])
    # a one-time approval says nothing of the kind
    await announce(service, notifier, approval())
    assert "also allows" not in texts(stub.called("chat.postMessage")[1].args["blocks"])


async def test_decided_shows_outcome_for_every_final_state(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    a = await announce(service, notifier, approval())
    for state, by, want in [
        (EXPIRED, "", "Expired"),
        ("cancelled", "", "Cancelled"),
        (DENIED, "alice", "Denied* by alice"),
        (APPROVED, f"slack:{DBA1} (jane)", f"Approved* by <@{DBA1}>"),
    ]:
        a.state, a.decided_by = state, by
        await notifier.decided(a)
        call = stub.called("chat.update")[-1]
        assert (call.args["channel"], call.args["ts"]) == tuple(json.loads(a.notice).values())
        assert state in call.args["text"] and a.id in call.args["text"]
        assert want in texts(call.args["blocks"]) and buttons(call.args["blocks"]) == []
    a.notice = ""  # never announced: nothing to update, no error
    await notifier.decided(a)
    assert len(stub.called("chat.update")) == 4


@pytest.mark.parametrize("failure", ["http500", "channel_not_found", "stopped", "bad_token"])
async def test_requested_raises_when_slack_fails(
    stub: SlackStub, config: SlackConfig, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if failure == "stopped":
        await stub.stop()
    elif failure == "bad_token":
        monkeypatch.setenv("HOOPY_TEST_SLACK_TOKEN", "xoxb-wrong")
    else:
        stub.fail = failure
    notifier = SlackNotifier(config)
    with pytest.raises(Exception) as caught:
        await notifier.requested(approval())
    if failure in ("channel_not_found", "bad_token"):
        assert isinstance(caught.value, SlackApiError)
    assert TOKEN not in str(caught.value) and "xoxb-wrong" not in str(caught.value)


# ---- clicks over HTTP ----------------------------------------------------------------------


async def test_approver_click_approves_and_updates_message(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, clicks: Clicks
) -> None:
    a = await announce(service, notifier, approval())
    assert await clicks.click(a.id, DBA1, username="jane") == 200
    done = service.store.get(a.id)
    assert done is not None and done.state == APPROVED
    assert done.decided_by == f"slack:{DBA1} (jane)"
    (update,) = await stub.wait_for("chat.update")
    assert json.loads(a.notice) == {"channel": update.args["channel"], "ts": update.args["ts"]}
    assert "approved" in update.args["text"] and buttons(update.args["blocks"]) == []
    assert f"<@{DBA1}>" in texts(update.args["blocks"])
    assert clicks.seen == [
        (
            a.id,
            {
                "user": DBA1,
                "username": "jane",
                "action": "approve",
                "outcome": APPROVED,
                "transport": "http",
            },
        )
    ]
    assert stub.called("chat.postEphemeral") == []


async def test_deny_click_denies(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, clicks: Clicks
) -> None:
    a = await announce(service, notifier, approval())
    assert await clicks.click(a.id, DBA2, action=DENY_ACTION) == 200
    assert state_of(service, a) == DENIED
    (update,) = await stub.wait_for("chat.update")
    assert "denied" in update.args["text"]


async def test_forged_and_stale_signatures_are_rejected_without_effect(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, clicks: Clicks
) -> None:
    a = await announce(service, notifier, approval())
    body = form(payload(a.id, DBA1, APPROVE_ACTION))
    now = int(time.time())
    forged = sign(body, "not-the-secret", now)
    assert await clicks.post(body, forged) == 401
    tampered = form(payload(a.id, DBA2, APPROVE_ACTION))  # body changed after signing
    assert await clicks.post(tampered, sign(body, SECRET, now)) == 401
    assert await clicks.post(body, sign(body, SECRET, now - 6 * 60)) == 401  # stale
    assert await clicks.post(body, sign(body, SECRET, now + 6 * 60)) == 401  # from the future
    assert await clicks.post(body, {}) == 401
    odd = {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"}
    assert await clicks.post(body, odd) == 401
    assert state_of(service, a) == PENDING
    assert clicks.seen == []
    await clicks.interactions.close()
    assert [c.method for c in stub.calls] == ["chat.postMessage"]
    # The same body, correctly signed now, works: the rejections were about the signature.
    assert await clicks.post(body, sign(body, SECRET, int(time.time()))) == 200
    assert state_of(service, a) == APPROVED


@pytest.mark.parametrize(
    ("user", "group_hint"),
    [(SRE, "dba"), (STRANGER, "dba")],
)
async def test_non_approver_gets_ephemeral_refusal(
    stub: SlackStub,
    service: ApprovalService,
    notifier: SlackNotifier,
    clicks: Clicks,
    user: str,
    group_hint: str,
) -> None:
    a = await announce(service, notifier, approval())
    assert await clicks.click(a.id, user) == 200
    (eph,) = await stub.wait_for("chat.postEphemeral")
    assert eph.args["user"] == user
    assert eph.args["channel"] == SlackStub.channel_id("#db-approvals")
    assert "not an approver" in eph.args["text"] and group_hint in eph.args["text"]
    assert state_of(service, a) == PENDING
    assert clicks.seen[0][1]["outcome"] == "not_approver"
    assert stub.called("chat.update") == []


@pytest.mark.parametrize(
    ("user", "extra"),
    [
        (DBA1, {"username": REQUESTER}),  # an approver whose Slack handle is the requester
        (DBA2, {"name": REQUESTER.upper()}),
        (REQUESTER, {}),  # the requester's subject is its Slack user id
    ],
)
async def test_requester_cannot_decide_own_request(
    stub: SlackStub,
    service: ApprovalService,
    notifier: SlackNotifier,
    clicks: Clicks,
    config: SlackConfig,
    user: str,
    extra: dict[str, str],
) -> None:
    config.approvers["dba"] = (*config.approvers["dba"], REQUESTER)
    a = await announce(service, notifier, approval())
    assert await clicks.click(a.id, user, **extra) == 200
    (eph,) = await stub.wait_for("chat.postEphemeral")
    assert "You requested" in eph.args["text"]
    assert state_of(service, a) == PENDING
    assert clicks.seen[0][1]["outcome"] == "own_request"


async def test_simultaneous_clicks_make_exactly_one_decision(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, clicks: Clicks
) -> None:
    a = await announce(service, notifier, approval())
    statuses = await asyncio.gather(
        clicks.click(a.id, DBA1, APPROVE_ACTION), clicks.click(a.id, DBA2, DENY_ACTION)
    )
    assert statuses == [200, 200]
    final = state_of(service, a)
    assert final in (APPROVED, DENIED)
    (eph,) = await stub.wait_for("chat.postEphemeral")
    assert "already" in eph.args["text"]
    await service.close()
    assert len(stub.called("chat.update")) == 1
    assert sorted(info["outcome"] for _, info in clicks.seen) == sorted([final, "already_decided"])


async def test_late_unknown_and_expired_clicks_change_nothing(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, clicks: Clicks
) -> None:
    old = await announce(service, notifier, approval(expires=time.time() - 1))
    assert await clicks.click(old.id, DBA1) == 200
    assert await clicks.click("apr-000000000000", DBA1) == 200
    assert service.decide(old.id, False, by="cli") is not None
    assert await clicks.click(old.id, DBA2) == 200  # already denied
    replies = [c.args["text"] for c in await stub.wait_for("chat.postEphemeral", 3)]
    assert any("expired" in r for r in replies)
    assert any("unknown" in r for r in replies)
    assert any("already denied" in r for r in replies)
    assert state_of(service, old) == DENIED
    assert [i["outcome"] for _, i in clicks.seen] == ["expired", "unknown", "already_decided"]


async def test_signed_but_malformed_requests(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, clicks: Clicks
) -> None:
    a = await announce(service, notifier, approval())
    now = int(time.time())
    for body, want in [
        (b"payload=not-json", 400),
        (b"nothing=here", 400),
        (b"\xff\xfe", 401),  # not UTF-8: the verifier cannot even read it
        (form({"type": "view_submission", "user": {"id": DBA1}}), 200),
        (form({**payload(a.id, DBA1, "someone_else"), "type": "block_actions"}), 200),
        (form({**payload(a.id, DBA1, APPROVE_ACTION), "user": "U0DBA1"}), 200),
    ]:
        assert await clicks.post(body, sign(body, SECRET, now)) == want, body
    assert state_of(service, a) == PENDING
    assert clicks.seen == []


# ---- the whole loop: an agent waits, a DBA clicks ----------------------------------------------


@dataclass
class StandInSession:
    """The attributes ApprovalService.wait_for uses from a Session."""

    identity: Identity = field(default_factory=lambda: Identity(REQUESTER, frozenset({"agents"})))
    id: str = "s-42"
    protocol: str = "postgres"
    connector: str = "app-db"
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    scope: Any = None  # session.CommandScope (PostgreSQL: its search_path)

    def record(self, type_: str, **fields: Any) -> None:
        self.events.append((type_, fields))

    def notify(self, text: str) -> None:
        self.notices.append(text)

    def hide(self, text: str) -> tuple[str, tuple[str, ...]]:
        return text, ()


def _wait(service: ApprovalService, session: StandInSession) -> asyncio.Task[str]:
    command = Command("postgres", "app-db", "update orders set status = 'x' where id = 1")
    decision = Decision("require_approval", "writes-need-a-dba", approvers=("dba",), timeout=60)
    return asyncio.create_task(service.wait_for(session, command, decision))  # type: ignore[arg-type]


async def test_waiting_agent_is_released_by_slack_click(
    stub: SlackStub, service: ApprovalService, clicks: Clicks
) -> None:
    session = StandInSession()
    waiting = _wait(service, session)
    (post,) = await stub.wait_for("chat.postMessage")
    approve = buttons(post.args["blocks"])[0]
    assert await clicks.click(approve["value"], DBA1) == 200
    assert await asyncio.wait_for(waiting, 5) == approve["value"]
    assert "in #db-approvals" in session.notices[0]
    assert ("approval_notified", {"approval": approve["value"], "via": "in #db-approvals"}) in (
        session.events
    )
    (update,) = await stub.wait_for("chat.update")
    assert "approved" in update.args["text"]


async def test_waiting_agent_is_refused_by_deny_click(
    stub: SlackStub, service: ApprovalService, clicks: Clicks
) -> None:
    waiting = _wait(service, StandInSession())
    (post,) = await stub.wait_for("chat.postMessage")
    deny = buttons(post.args["blocks"])[1]
    assert deny["action_id"] == DENY_ACTION
    assert await clicks.click(deny["value"], DBA2, action=DENY_ACTION, username="bob") == 200
    with pytest.raises(ApprovalRejected, match=f"denied by slack:{DBA2}"):
        await asyncio.wait_for(waiting, 5)


# ---- Socket Mode ----------------------------------------------------------------------------


class EnvelopeAcks:
    """The one method of a SocketModeClient that the listener calls."""

    def __init__(self) -> None:
        self.acks: list[dict[str, Any]] = []

    async def send_socket_mode_response(self, response: Any) -> None:
        self.acks.append(response.to_dict())


async def test_socket_mode_envelope_reaches_the_core(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, config: SlackConfig
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    interactions = SlackInteractions(service, config, on_click=lambda i, d: seen.append((i, d)))
    socket = SlackSocketMode(interactions)
    a = await announce(service, notifier, approval())
    b = await announce(service, notifier, approval())
    client = EnvelopeAcks()
    await socket.on_request(client, SocketModeRequest("events_api", "env-0", {"type": "x"}))
    await socket.on_request(
        client, SocketModeRequest("interactive", "env-1", payload(a.id, SRE, APPROVE_ACTION))
    )
    await socket.on_request(
        client, SocketModeRequest("interactive", "env-2", payload(b.id, DBA1, DENY_ACTION))
    )
    assert client.acks == [{"envelope_id": f"env-{i}"} for i in range(3)]
    assert (state_of(service, a), state_of(service, b)) == (PENDING, DENIED)
    assert [d["outcome"] for _, d in seen] == ["not_approver", DENIED]
    assert all(d["transport"] == "socket" for _, d in seen)
    (eph,) = stub.called("chat.postEphemeral")
    assert eph.args["user"] == SRE


async def test_socket_mode_over_a_websocket(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, config: SlackConfig
) -> None:
    socket = SlackSocketMode(SlackInteractions(service, config))
    a = await announce(service, notifier, approval())
    await socket.start()
    try:
        ack = await stub.send_envelope("interactive", payload(a.id, DBA1, APPROVE_ACTION))
        assert set(ack) == {"envelope_id"}
        await stub.wait_for("chat.update")  # the decision's message update
        assert state_of(service, a) == APPROVED
    finally:
        await socket.close()
    (opened,) = stub.called("apps.connections.open")
    assert opened.token == APP_TOKEN


def test_socket_mode_needs_an_app_token(service: ApprovalService, config: SlackConfig) -> None:
    config = SlackConfig(
        config.token, config.signing_secret, config.channel, api_url=config.api_url
    )
    with pytest.raises(ValueError, match="app_token"):
        SlackSocketMode(SlackInteractions(service, config))


# ---- issue 16: what the approver sees is what runs -------------------------------------


async def test_a_comment_cannot_pose_as_values(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    """The old marker between a statement and its values, written by the agent itself:
    a comment, shown as nothing, and no values block appears."""
    await announce(service, notifier, approval("DELETE FROM orders\n-- bound: WHERE id = 5"))
    body = texts(stub.called("chat.postMessage")[0].args["blocks"])
    assert "WHERE id = 5" not in body and "runs with these" not in body
    assert "```\nDELETE FROM orders\n```" in body


async def test_a_value_that_fits_is_shown_whole_tail_included(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    tail = ",".join(map(str, range(1, 101)))
    value = "$1 = '" + "5," * 100 + tail + "'"
    await announce(service, notifier, approval("delete from t where x = $1", values=[value]))
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    assert tail + "'" in texts(blocks) and "truncated" not in texts(blocks)
    assert [b["action_id"] for b in buttons(blocks)] == [APPROVE_ACTION, DENY_ACTION]


async def test_values_are_shown_apart_and_whole(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    a = approval("delete from orders where id = $1", values=["$1 = '42'"])
    await announce(service, notifier, a)
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    body = texts(blocks)
    assert "*It runs with these 1 value(s):*\n```\n$1 = '42'\n```" in body
    assert code_of(blocks).startswith("```\nDELETE FROM orders\nWHERE id = $1")
    assert [b["action_id"] for b in buttons(blocks)] == [APPROVE_ACTION, DENY_ACTION]


@pytest.mark.parametrize(
    "values",
    [
        ["$1 = '" + "5," * 1500 + ",".join(map(str, range(1, 101))) + "'"],  # one long value
        [f"${i} = '{i}'" for i in range(1, 41)],  # more values than are shown
    ],
    ids=["long-value", "many-values"],
)
async def test_cut_values_offer_no_approve_button(
    stub: SlackStub,
    service: ApprovalService,
    notifier: SlackNotifier,
    clicks: Clicks,
    values: list[str],
) -> None:
    a = approval("delete from orders where id::text = any(string_to_array($1, ','))")
    a.values = values
    await announce(service, notifier, a)
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    body = texts(blocks)
    assert "These values are truncated" in body and f"hoopy approvals show {a.id}" in body
    assert [b["action_id"] for b in buttons(blocks)] == [DENY_ACTION]
    assert await clicks.click(a.id, DBA1) == 200
    (eph,) = await stub.wait_for("chat.postEphemeral")
    assert "truncated" in eph.args["text"] and state_of(service, a) == PENDING
    stored_ = service.store.get(a.id)
    assert stored_ is not None and stored_.values == values  # stored whole


@pytest.mark.parametrize(
    ("hidden", "escaped"),
    [
        ("\u202e", "\\u202e"),  # right-to-left override (Trojan Source)
        ("\u2066", "\\u2066"),  # left-to-right isolate
        ("\u2069", "\\u2069"),  # pop directional isolate
        ("\u200b", "\\u200b"),  # zero-width space
        ("\ufeff", "\\ufeff"),  # zero-width no-break space
        ("\U000e0041", "\\U000e0041"),  # tag character (invisible text)
    ],
)
async def test_hidden_characters_are_shown_escaped_and_flagged(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, hidden: str, escaped: str
) -> None:
    sql = f"delete from orders where note = 'a{hidden}b' or id = 1"
    a = approval(sql, values=[f"$1 = 'v{hidden}'"], subject=f"agent{hidden}7")
    await announce(service, notifier, a)
    call = stub.called("chat.postMessage")[0]
    everything = json.dumps(call.args, ensure_ascii=False)
    assert hidden not in everything
    body = texts(call.args["blocks"])
    assert f"'a{escaped}b'" in body and f"'v{escaped}'" in body
    assert "invisible or direction-changing" in body
    assert any("invisible" in n for n in a.to_json()["notes"])


async def test_look_alike_letters_are_named(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    """A Cyrillic o (U+043E) in a table name reads as `orders`: the approver is told."""
    await announce(service, notifier, approval("delete from \u043erders where id = 1"))
    body = texts(stub.called("chat.postMessage")[0].args["blocks"])
    assert "U+043E CYRILLIC SMALL LETTER O" in body and "may look like others" in body
    await announce(service, notifier, approval("delete from orders where id = 1"))
    assert "Read closely" not in texts(stub.called("chat.postMessage")[1].args["blocks"])


async def test_requested_by_names_the_issuer(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    a = approval(issuer="https://idp-b.example", reuse_for=600)
    await announce(service, notifier, a)
    call = stub.called("chat.postMessage")[0]
    body = texts(call.args["blocks"])
    assert "*Token issuer*\nhttps://idp-b.example" in body
    assert f"by {REQUESTER} (of https://idp-b.example) on app-db" in body
    assert "(of https://idp-b.example)" in call.args["text"]


async def test_requester_under_another_issuer_still_cannot_approve(
    stub: SlackStub,
    service: ApprovalService,
    notifier: SlackNotifier,
    clicks: Clicks,
    config: SlackConfig,
) -> None:
    """Slack users are not OIDC identities: the self-approval check matches the subject
    under any issuer, refusing more, never less."""
    config.approvers["dba"] = (*config.approvers["dba"], REQUESTER)
    a = await announce(service, notifier, approval(issuer="https://idp-b.example"))
    assert await clicks.click(a.id, REQUESTER) == 200
    (eph,) = await stub.wait_for("chat.postEphemeral")
    assert "You requested" in eph.args["text"] and state_of(service, a) == PENDING


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM orders\n-- bound: WHERE id = 5",
        "DELETE FROM orders /* bound: WHERE id = 5 */",
        "DELETE FROM orders\n--\u2028It runs with these 1 value(s): WHERE id = 5",
        "DELETE FROM orders -- ```\n*It runs with these 1 value(s):*\n```\n$1 = 5",
        "DELETE FROM orders\r\n-- bound: $1 = '5'",
    ],
)
async def test_no_agent_text_makes_a_values_block(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier, sql: str
) -> None:
    await announce(service, notifier, approval(sql))
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    sections = [b["text"]["text"] for b in blocks if b.get("type") == "section" and "text" in b]
    assert not any(t.startswith("*It runs with") for t in sections)
    code = code_of(blocks)  # what is not a comment stays inside the one code block
    assert code.startswith("```\nDELETE FROM orders") and code.count("```") == 2
    assert "WHERE id = 5" not in code


async def test_values_cannot_break_out_of_their_block(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    a = approval("delete from orders where id = $1", values=["$1 = 'a```\n$2 = <!channel>'"])
    await announce(service, notifier, a)
    blocks = stub.called("chat.postMessage")[0].args["blocks"]
    body = texts(blocks)
    (values,) = [
        b["text"]["text"] for b in blocks if "It runs with" in b.get("text", {}).get("text", "")
    ]
    assert "<!channel>" not in body and "&lt;!channel&gt;" in body
    assert values.count("```") == 2
    assert "a`\u200b`\u200b`\\n$2 = &lt;!channel&gt;'" in body  # one line, one value


async def test_huge_values_are_cheap_to_show(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    """A 20 MB value: stored whole, shown cut (no Approve) without scanning all of it."""
    from hoopy.slack import request_blocks

    a = approval("delete from orders where note = $1", values=["$1 = '" + "x" * 20_000_000 + "'"])
    start = time.perf_counter()
    blocks = request_blocks(a)
    assert time.perf_counter() - start < 0.5
    assert [b["action_id"] for b in buttons(blocks)] == [DENY_ACTION]


async def test_a_subject_cannot_forge_another_line(
    stub: SlackStub, service: ApprovalService, notifier: SlackNotifier
) -> None:
    """A subject (or group) with newlines could draw a fake "Token issuer" line."""
    forged = "agent-1\n*Token issuer*\nhttps://idp-a.example"
    a = approval(subject=forged, issuer="https://idp-b.example", groups=["x\ny"], reuse_for=60)
    await announce(service, notifier, a)
    call = stub.called("chat.postMessage")[0]
    body = texts(call.args["blocks"])
    assert "\n*Token issuer*\nhttps://idp-a.example" not in body
    lines = body.split("\n")
    assert [ln for ln in lines if ln.startswith("*Token issuer*")] == ["*Token issuer*"]
    assert lines[lines.index("*Token issuer*") + 1] == "https://idp-b.example"
    assert "\n" not in call.args["text"]
