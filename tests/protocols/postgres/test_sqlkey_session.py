"""Statements keyed by sqlkey through the session's cached decisions: a statement seen
before (same key, same connector, same session) reuses its decision, and nothing cached
turns a denial or an approval into an allow, nor survives a search_path change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoopy.errors import CommandDenied
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
