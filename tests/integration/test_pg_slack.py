"""Approvals through Slack with the real psql: slack-sdk talks to a local Slack Web API
stand-in; clicks reach hoopy's endpoint signed exactly as Slack signs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_approvals import cli_decide, wait_pending
from tests.integration.test_pg_psql import app_count
from tests.slackstub import SlackStub, sign

SECRET = "slack-signing-secret-for-tests"


@dataclass
class Slack:
    stub: SlackStub
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@pytest.fixture(scope="module")
def slack() -> Iterator[Slack]:
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    stub = SlackStub(token="xoxb-hoopy-test")
    s = Slack(stub, loop)
    s.run(stub.start())
    try:
        yield s
    finally:
        s.run(stub.stop())
        loop.call_soon_threadsafe(loop.stop)


SLACK_ENV = {"TEST_SLACK_TOKEN": "xoxb-hoopy-test", "TEST_SLACK_SECRET": SECRET}


def slack_yaml(slack: Slack) -> str:
    """hoopy.yaml's slack section for the stand-in (secrets from SLACK_ENV)."""
    return (
        "slack:\n  token: env:TEST_SLACK_TOKEN\n  signing_secret: env:TEST_SLACK_SECRET\n"
        '  channel: "#db-approvals"\n  approvers: {dba: [U0DBA1, U0DBA2]}\n'
        f"  api_url: {slack.stub.url}\n"
    )


@pytest.fixture(scope="module")
def hoopy_slack(
    backend: Backend, slack: Slack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hoopy]:
    h = start_hoopy(
        tmp_path_factory.mktemp("hoopy-slack"), backend, slack_yaml(slack), env=SLACK_ENV
    )
    try:
        yield h
    finally:
        stop_hoopy(h)


def click(
    h: Hoopy,
    approval_id: str,
    user: str,
    action: str = "hoopy_approve",
    secret: str = SECRET,
    age: int = 0,
) -> int:
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower()},
        "channel": {"id": "C0APPROVALS"},
        "actions": [{"action_id": action, "value": approval_id}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    headers = {
        **sign(body, secret, int(time.time()) - age),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    req = urllib.request.Request(
        f"http://{h.addresses['admin']}/slack/interactions",
        data=body,
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def state(h: Hoopy, aid: str) -> str:
    return h.cli("approvals", "list", "--all").stdout.split(aid, 1)[1].split()[2]


def psql_bg(h: Hoopy, sql: str, sub: str = "slack-agent") -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["psql", h.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPASSWORD": h.token(sub)},
    )


def test_slack_click_flow(hoopy_slack: Hoopy, slack: Slack, backend: Backend) -> None:
    h = hoopy_slack
    p = psql_bg(h, "update orders set status = 'slack-ok' where id = 4")
    a = wait_pending(h, "slack-ok")
    posted = slack.run(slack.stub.wait_for("chat.postMessage"))[-1].args
    text = json.dumps(posted)
    assert a["id"] in text and "hoopy_approve" in text and "hoopy_deny" in text
    assert "writes-need-a-dba" in text and "slack-agent" in text
    # forged signature, stale timestamp, non-approver: nothing is released
    assert click(h, a["id"], "U0DBA1", secret="wrong-secret") == 401
    assert click(h, a["id"], "U0DBA1", age=6 * 60) == 401
    assert click(h, a["id"], "U0RANDOM") == 200
    slack.run(slack.stub.wait_for("chat.postEphemeral"))
    assert state(h, a["id"]) == "pending" and p.poll() is None
    # an approver's click releases it; the Slack message is updated with the outcome
    assert click(h, a["id"], "U0DBA1") == 200
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"waiting for approval {a['id']}" in err and "in #db-approvals" in err
    assert app_count(backend, "select count(*) from orders where status = 'slack-ok'") == 1
    updates = slack.run(slack.stub.wait_for("chat.update"))
    assert "approved" in json.dumps(updates[-1].args).lower()
    # the clicks are in the session's recording
    sid = h.cli("sessions", "list", "--subject", "slack-agent").stdout.split()[0]
    events = [json.loads(x) for x in h.cli("sessions", "show", sid).stdout.splitlines()]
    outcomes = [e.get("outcome") for e in events if e["type"] == "approval_click"]
    assert "not_approver" in outcomes and "approved" in outcomes


def test_simultaneous_clicks_make_one_decision(hoopy_slack: Hoopy, backend: Backend) -> None:
    h = hoopy_slack
    p = psql_bg(h, "update orders set status = 'race' where id = 5")
    a = wait_pending(h, "'race'")
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda u=u, act=act: results.append(click(h, a["id"], u, act)))
        for u, act in (("U0DBA1", "hoopy_approve"), ("U0DBA2", "hoopy_deny"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]
    p.wait(30)
    final = state(h, a["id"])
    assert final in ("approved", "denied")
    ran = app_count(backend, "select count(*) from orders where status = 'race'")
    assert ran == (1 if final == "approved" else 0)
    assert (p.returncode == 0) == (final == "approved")


def test_timeout_gives_42501_naming_the_approval(hoopy_slack: Hoopy) -> None:
    r = subprocess.run(
        [
            "psql",
            hoopy_slack.conninfo(),
            "-X",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "insert into expiring values (1)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGPASSWORD": hoopy_slack.token("slack-agent")},
    )
    assert r.returncode != 0
    assert "42501" in r.stderr and "expired without a decision" in r.stderr
    assert "approval apr-" in r.stderr


def test_slack_unreachable_cli_still_approves(
    hoopy_slack: Hoopy, slack: Slack, backend: Backend
) -> None:
    slack.stub.fail = "http500"
    try:
        p = psql_bg(hoopy_slack, "update orders set status = 'no-slack' where id = 6")
        a = wait_pending(hoopy_slack, "no-slack")
        r = cli_decide(hoopy_slack, "approve", a["id"])
        assert r.returncode == 0, r.stderr
        _out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert f"waiting for approval {a['id']}" in err
        assert "hoopy approvals" not in err  # the agent is not told how to approve itself
    finally:
        slack.stub.fail = None
    assert app_count(backend, "select count(*) from orders where status = 'no-slack'") == 1
