"""What an approver sees is what runs, and who asked is exact (issue 16).

Real pieces: `hoopy serve` with its dev issuer (issuer A) and a second OIDC issuer (B,
another DevIssuer on 127.0.0.1), the Slack Web API stand-in receiving the approval
messages, clicks signed as Slack signs them, and the real psql and asyncpg clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from hoopy import pgcluster
from hoopy.devissuer import DevIssuer
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_approvals import ADMIN_TOKEN, admin, cli_decide
from tests.integration.test_pg_psql import app_count
from tests.integration.test_pg_slack import SECRET, click
from tests.slackstub import SlackStub

TABLE = "view_t"  # 100 rows, ids 1..100; every test leaves it whole


@dataclass
class World:
    hoopy: Hoopy
    stub: SlackStub
    issuer_b: DevIssuer
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @property
    def url_a(self) -> str:
        return self.hoopy.issuer.issuer_url

    @property
    def url_b(self) -> str:
        return self.issuer_b.issuer_url

    def token_b(self, sub: str, groups: tuple[str, ...] = ("agents",)) -> str:
        return self.issuer_b.mint(sub, list(groups), ttl=900)

    def posted(self, approval_id: str) -> dict[str, Any]:
        """The Slack message announcing `approval_id` (its text and blocks), waiting for
        it (the approval is stored before it is posted); TimeoutError if it never is."""
        count = 1
        while True:
            calls = self.run(self.stub.wait_for("chat.postMessage", count))
            for call in calls:
                if approval_id in json.dumps(call.args):
                    blocks = call.args.get("blocks")
                    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
                    return {"text": call.args.get("text", ""), "blocks": blocks}
            count = len(calls) + 1


def _policy_b(url_b: str) -> str:
    return f"""\
mode: enforce
rules:
  - name: issuer-b-agent-1-no-secret
    effect: deny
    reason: issuer B's agent-1 is not issuer A's
    match: {{issuers: ["{url_b}"], subjects: [agent-1], sql: {{tables: [view_secret]}}}}
"""


@pytest.fixture(scope="module")
def world(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    async def seed() -> None:
        conn = await backend.app_conn()
        try:
            await conn.execute(
                f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int, note text);"
                f"INSERT INTO {TABLE} SELECT g, 'row' FROM generate_series(1, 100) g;"
                "DROP TABLE IF EXISTS view_secret; CREATE TABLE view_secret (v text);"
                "INSERT INTO view_secret VALUES ('s');"
                "CREATE SCHEMA IF NOT EXISTS other; DROP TABLE IF EXISTS other.refunds;"
                "CREATE TABLE other.refunds (id int, amount int);"
                "INSERT INTO other.refunds VALUES (888, 0)"
            )
        finally:
            await conn.close()

    asyncio.run(seed())
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    stub = SlackStub(token="xoxb-hoopy-test")
    run(stub.start())
    folder = tmp_path_factory.mktemp("hoopy-view")
    port = pgcluster.free_port()
    issuer_b = DevIssuer(folder / "issuer-b", f"http://127.0.0.1:{port}")
    run(issuer_b.start("127.0.0.1", port))
    extra = (
        "slack:\n  token: env:TEST_SLACK_TOKEN\n  signing_secret: env:TEST_SLACK_SECRET\n"
        '  channel: "#db-approvals"\n  approvers: {dba: [U0DBA1, U0DBA2]}\n'
        f"  api_url: {stub.url}\n"
        f"identity:\n  issuers:\n    - {{url: 'http://127.0.0.1:{port}', audience: hoopy}}\n"
    )
    h = start_hoopy(
        folder / "gw",
        backend,
        extra,
        env={"TEST_SLACK_TOKEN": "xoxb-hoopy-test", "TEST_SLACK_SECRET": SECRET},
        policies={"issuers": _policy_b(issuer_b.issuer_url)},
    )
    try:
        yield World(h, stub, issuer_b, loop)
    finally:
        stop_hoopy(h)
        asyncio.run(_cleanup(backend))
        run(issuer_b.stop())
        run(stub.stop())
        loop.call_soon_threadsafe(loop.stop)


async def _cleanup(backend: Backend) -> None:
    """Leave the shared tables as other modules expect them (refunds counts)."""
    conn = await backend.app_conn()
    try:
        await conn.execute(
            f"DROP TABLE {TABLE}; DROP TABLE view_secret; DROP SCHEMA other CASCADE;"
            "DELETE FROM refunds WHERE id IN (777, 888)"
        )
    finally:
        await conn.close()


def psql_bg(h: Hoopy, sql: str, token: str, *more: str) -> subprocess.Popen[str]:
    args = ["-c", sql, *(a for m in more for a in ("-c", m))]
    return subprocess.Popen(
        ["psql", h.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPASSWORD": token},
    )


def pending(h: Hoopy, pred: Any, timeout: float = 20) -> dict[str, Any]:
    """The pending approval (admin API) for which `pred` holds, polled (bounded)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, items = admin(h, "GET", "/api/approvals?state=pending")
        for a in items:  # type: ignore[union-attr]
            if pred(a):
                return dict(a)
        time.sleep(0.05)
    raise AssertionError("no such pending approval")


def rows(backend: Backend) -> int:
    return app_count(backend, f"select count(*) from {TABLE}")


def shown(message: dict[str, Any]) -> str:
    """Everything an approver reads in a Slack message."""
    return json.dumps(message, ensure_ascii=False)


# ---- 1. a comment cannot pose as bound values ------------------------------------------


def test_a_comment_cannot_pose_as_bound_values(world: World, backend: Backend) -> None:
    h = world.hoopy
    p = psql_bg(h, f"DELETE FROM {TABLE}\n-- bound: WHERE id = 5", h.token("agent-c"))
    a = pending(h, lambda a: TABLE in a["command"] and a["subject"] == "agent-c")
    message = shown(world.posted(a["id"]))
    # The approver reads the statement that runs, without the comment, and no values:
    # nothing in the agent's text can make "WHERE id = 5" appear as what it runs with.
    assert "WHERE id = 5" not in message and "id = 5" not in message
    assert "runs with these" not in message
    assert f"DELETE FROM {TABLE}" in message
    assert a["values"] == []
    assert click(h, a["id"], "U0DBA1", "hoopy_deny") == 200
    _out, err = p.communicate(timeout=30)
    assert p.returncode != 0 and "denied" in err
    assert rows(backend) == 100


def test_bound_values_travel_in_their_own_field(world: World, backend: Backend) -> None:
    """asyncpg binds $1: Slack shows it apart, labelled; approving runs exactly that."""
    h = world.hoopy

    async def agent() -> str:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=h.pg_port,
            user="agent",
            database="app-db",
            password=h.token("agent-v"),
            ssl="require",
        )
        try:
            return str(await conn.execute(f"UPDATE {TABLE} SET note = $1 WHERE id = 7", "bound"))
        finally:
            await conn.close()

    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(_run_catching(agent())))
    t.start()
    a = pending(h, lambda a: TABLE in a["command"] and a["subject"] == "agent-v")
    assert a["command"] == f"UPDATE {TABLE} SET note = $1 WHERE id = 7"
    assert len(a["values"]) == 1 and a["values"][0].startswith("$1 = ")
    assert "'bound'" in a["values"][0]
    message = world.posted(a["id"])
    text = shown(message)
    assert "It runs with these 1 value(s)" in text and "hoopy_approve" in text
    assert click(h, a["id"], "U0DBA1") == 200
    t.join(30)
    assert result == ["UPDATE 1"]
    assert app_count(backend, f"select count(*) from {TABLE} where note = 'bound'") == 1


def _run_catching(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except Exception as e:
        return e


# ---- 2. cut values keep no Approve button ----------------------------------------------


def test_cut_values_offer_no_approve_and_show_prints_them_whole(
    world: World, backend: Backend
) -> None:
    h = world.hoopy
    head = "5," * 1500  # past what Slack shows (the 100 now show whole)
    tail = ",".join(str(i) for i in range(1, 101))
    value = head + tail

    async def agent() -> Any:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=h.pg_port,
            user="agent",
            database="app-db",
            password=h.token("agent-cut"),
            ssl="require",
        )
        try:
            return await conn.execute(
                f"DELETE FROM {TABLE} WHERE id::text = ANY(string_to_array($1, ','))", value
            )
        finally:
            await conn.close()

    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(_run_catching(agent())))
    t.start()
    a = pending(h, lambda a: TABLE in a["command"] and a["subject"] == "agent-cut")
    message = world.posted(a["id"])
    text = shown(message)
    assert "hoopy_approve" not in text and "hoopy_deny" in text  # Deny only
    assert "values are truncated" in text and f"hoopy approvals show {a['id']}" in text
    # an Approve click (a forged or stale button) is refused: it stays pending
    assert click(h, a["id"], "U0DBA1") == 200
    assert h.cli("approvals", "list").stdout.count(a["id"]) == 1
    # `approvals show` prints every value whole: the tail that deletes every row is there
    show = h.cli("approvals", "show", a["id"])
    assert show.returncode == 0, show.stderr
    values = json.loads(show.stdout)["values"]
    assert len(values) == 1 and value in values[0]
    r = cli_decide(h, "deny", a["id"])
    assert r.returncode == 0, r.stderr
    t.join(30)
    assert isinstance(result[0], asyncpg.InsufficientPrivilegeError)
    assert rows(backend) == 100


# ---- 3. an agent is (issuer, subject) ----------------------------------------------------


def test_a_reuse_grant_is_not_reused_by_another_issuers_subject(
    world: World, backend: Backend
) -> None:
    h = world.hoopy
    sql = "insert into refunds values (777, 1)"
    p = psql_bg(h, sql, h.token("agent-1"))  # issuer A's agent-1
    a = pending(h, lambda a: "777" in a["command"] and a["subject"] == "agent-1")
    assert admin(h, "POST", f"/api/approvals/{a['id']}/approve")[0] == 200
    assert p.wait(30) == 0
    # issuer A's agent-1 again: the grant (reuse_for 15m) covers it
    again = psql_bg(h, sql, h.token("agent-1"))
    assert again.wait(30) == 0, again.communicate()[1]
    # issuer B's own agent-1: another agent, so it asks anew
    p = psql_bg(h, sql, world.token_b("agent-1"))
    b = pending(h, lambda x: "777" in x["command"] and x["id"] != a["id"])
    assert b["subject"] == "agent-1" and b["issuer"] == world.url_b
    text = shown(world.posted(b["id"]))
    assert world.url_b in text and "Token issuer" in text  # approvers see whose agent-1
    assert admin(h, "POST", f"/api/approvals/{b['id']}/deny")[0] == 200
    _out, err = p.communicate(timeout=30)
    assert p.returncode != 0 and "denied" in err
    assert a["issuer"] == world.url_a


def test_policy_matches_issuers(world: World) -> None:
    h = world.hoopy
    ok = h.psql("-At", "-c", "select v from view_secret", token=h.token("agent-1"))
    assert ok.returncode == 0 and ok.stdout.strip() == "s", ok.stderr
    refused = h.psql("-At", "-c", "select v from view_secret", token=world.token_b("agent-1"))
    assert refused.returncode != 0 and "issuer-b-agent-1-no-secret" in refused.stderr


def test_session_index_holds_the_issuer(world: World) -> None:
    h = world.hoopy
    assert h.psql("-c", "select 1", token=world.token_b("agent-idx")).returncode == 0
    listed = h.cli("sessions", "list", "--subject", "agent-idx", "--issuer", world.url_b)
    assert listed.returncode == 0 and f"issuer={world.url_b}" in listed.stdout
    other = h.cli("sessions", "list", "--subject", "agent-idx", "--issuer", world.url_a)
    assert other.stdout.strip() == ""
    _, sessions = admin(h, "GET", f"/api/sessions?subject=agent-idx&issuer={world.url_b}")
    assert [s["issuer"] for s in sessions] == [world.url_b]  # type: ignore[union-attr]


# ---- 4. the state database is the gateway's alone ---------------------------------------


def test_state_folder_and_database_are_private(world: World) -> None:
    folder = world.hoopy.folder / "state"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        path = folder / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert (folder / "state.db").exists()


# ---- likely items ---------------------------------------------------------------------


def test_a_grant_is_keyed_with_the_search_path(world: World) -> None:
    """`insert into refunds` approved with reuse, then the same text after SET
    search_path reaches other.refunds: it must ask again."""
    h = world.hoopy
    sql = "insert into refunds values (888, 1)"
    p = psql_bg(h, sql, h.token("agent-sp"))
    a = pending(h, lambda a: "888" in a["command"] and a["subject"] == "agent-sp")
    assert admin(h, "POST", f"/api/approvals/{a['id']}/approve")[0] == 200
    assert p.wait(30) == 0
    p = psql_bg(h, "set search_path = other, public", h.token("agent-sp"), sql)
    b = pending(h, lambda x: "888" in x["command"] and x["subject"] == "agent-sp")
    assert b["id"] != a["id"]
    assert admin(h, "POST", f"/api/approvals/{b['id']}/deny")[0] == 200
    assert p.wait(30) != 0


def test_hidden_characters_are_revealed_to_approvers(world: World, backend: Backend) -> None:
    """Trojan Source: a right-to-left override inside a literal would reorder what the
    approver reads; Slack, `approvals show` and the admin API show it escaped, flagged."""
    h = world.hoopy
    sql = f"DELETE FROM {TABLE} WHERE note = 'x\u202e' OR id > 0 -- \u2066'"
    p = psql_bg(h, sql, h.token("agent-bidi"))
    a = pending(h, lambda a: a["subject"] == "agent-bidi")
    text = shown(world.posted(a["id"]))
    assert "\u202e" not in text and "\u2066" not in text
    assert "\\\\u202e" in text and "invisible or direction-changing" in text
    assert any("invisible" in n for n in a["notes"])
    show = h.cli("approvals", "show", a["id"])
    assert "\u202e" not in show.stdout and "\\u202e" in show.stdout
    assert "invisible" in show.stderr
    req = urllib.request.Request(
        f"http://{h.addresses['admin']}/api/approvals/{a['id']}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read().decode()
    assert "\u202e" not in raw and "\\u202e" in raw and "invisible" in raw
    assert admin(h, "POST", f"/api/approvals/{a['id']}/deny")[0] == 200
    assert p.wait(30) != 0
    assert rows(backend) == 100
