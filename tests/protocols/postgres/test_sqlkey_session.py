"""Statements keyed by sqlkey through the session's cached decisions: a statement seen
before (same key, same connector, same session) reuses its decision, and nothing cached
turns a denial or an approval into an allow, nor survives a search_path change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoopy.errors import AuthFailed, CommandDenied
from hoopy.policy import Command, Identity, Match, PolicySet, Rule, SqlMatch
from hoopy.protocols.postgres.classcache import Classifier
from hoopy.protocols.postgres.searchpath import SearchPath
from hoopy.recorder import Recorder
from hoopy.session import Session
from hoopy.state import StateStore

POLICY = PolicySet(
    "p",
    (
        Rule(
            "read-t",
            "allow",
            Match(groups=("agents",), sql=SqlMatch(statements=("select",), tables=("public.*",))),
        ),
        Rule("no-secret", "deny", Match(sql=SqlMatch(tables=("public.secret",)))),
        Rule("evil-needs-ok", "require_approval", Match(sql=SqlMatch(tables=("evil.*",)))),
        Rule(
            "set-path",
            "allow",
            Match(groups=("agents",), sql=SqlMatch(statements=("select",), functions=("*",))),
        ),
    ),
)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    store = StateStore(tmp_path / "state.db")
    rec = Recorder(tmp_path / "recordings", store)
    identity = Identity("agent", frozenset({"agents"}), "dev", "fp", time.time() + 3600)
    log = rec.open_session(
        "s1" + "0" * 30,
        protocol="postgres",
        connector="db",
        subject="agent",
        groups=["agents"],
        client="test",
        tls=False,
    )
    yield Session(
        "s1", identity, "db", "postgres", "test", log, [POLICY], scope=SearchPath("agent")
    )
    log.close("closed")
    store.close()


def one(c: Classifier, sql: str) -> Command:
    (cmd,) = c.classify(sql, "db")
    return cmd


def test_a_statement_seen_before_reuses_its_decision(session: Session) -> None:
    c = Classifier()
    c.use_key = True
    a = one(c, "select * from t where a = 1")
    assert session.decide(a).outcome == "allow"
    hits = c.hits
    b = one(c, "select * from t where a = 2")
    assert c.hits == hits + 1 and ("select * from t where a = \x01i", "db") in c._keyed
    assert session.decide(b) is session.decide(a)
    assert session.check_now(b).outcome == "allow"


def test_a_denial_stays_a_denial(session: Session) -> None:
    c = Classifier()
    c.use_key = True
    for value in ("1", "2", "'x'"):
        cmd = one(c, f"select * from secret where a = {value}")
        with pytest.raises(CommandDenied, match="no-secret"):
            session.check_now(cmd)
    assert session.denied == 3


def test_a_search_path_change_drops_cached_decisions(session: Session) -> None:
    """`t` is public.t until the path takes in evil: then the same key's statement may
    read evil.t and needs an approval (none configured here: refused, never allowed)."""
    c = Classifier()
    c.use_key = True
    assert session.decide(one(c, "select * from t where a = 1")).outcome == "allow"
    harmless = one(c, "select set_config('search_path', 'public', false)")
    assert session.decide(harmless).outcome == "allow"
    # the same key as the harmless one: classified from the cache, read from its text
    assert ("select set_config(\x01s, \x01s, false)", "db") in c._keyed
    hits = c.hits
    evil = one(c, "select set_config('search_path', 'evil', false)")
    assert c.hits == hits + 1 and evil.text.endswith("'evil', false)")
    assert session.decide(evil).outcome == "allow"
    after = one(c, "select * from t where a = 2")
    decision = session.decide(after)
    assert decision.outcome == "require_approval" and decision.rule == "evil-needs-ok"
    with pytest.raises(CommandDenied, match="no approval service"):
        asyncio.run(session.check(after))


def test_the_lanes_cached_command_follows_a_search_path_change(session: Session) -> None:
    """The cached-statement lane hands the session the same Command object each time
    (Classifier.keyed): decided once, later decisions skip the scope's look (`_inert`),
    but a search_path change must still reach them."""
    c = Classifier()
    c.use_key = True
    one(c, "select * from t where a = 1")  # classified once: the lane's Command now
    found = c.keyed("select * from t where a = 2", "db")
    assert found is not None
    (cmd,), _ = found
    assert session.decide(cmd).outcome == "allow"
    assert session._inert.get(cmd.fingerprint) is cmd
    assert session.decide(cmd).outcome == "allow"  # through the inert look
    switch = one(c, "select set_config('search_path', 'evil', false)")
    assert session.decide(switch).outcome == "allow"
    assert switch.fingerprint not in session._inert  # it changes the scope: never skipped
    again = c.keyed("select * from t where a = 3", "db")
    assert again is not None and again[0][0] is cmd
    decision = session.decide(cmd)
    assert decision.outcome == "require_approval" and decision.rule == "evil-needs-ok"
    with pytest.raises(CommandDenied, match="no approval service"):
        asyncio.run(session.check(cmd))


def test_a_cached_statement_stops_when_the_token_expires(session: Session) -> None:
    """check_now's expiry look (no expired() frame) on the lane's cached Command: refused
    and recorded with the statement's own text, not the cached one's."""
    c = Classifier()
    c.use_key = True
    one(c, "select * from t where a = 1")
    found = c.keyed("select * from t where a = 2", "db")
    assert found is not None
    (cmd,), text = found
    assert session.check_now(cmd, session.decide(cmd), text).outcome == "allow"
    session.clock = lambda: session.identity.expires_at + 1
    with pytest.raises(AuthFailed, match="token expired"):
        session.check_now(cmd, session.decide(cmd), text)
    session.log.flush()
    lines = session.log.path.read_text().splitlines()
    assert '"reason":"token expired"' in lines[-1] and "a = 2" in lines[-1]
