"""Decision tables for hoopy.policy.decide(): precedence, shadow mode, opaque code."""

from __future__ import annotations

import pytest

from hoopy.policy import (
    Command,
    Identity,
    KubeMatch,
    Match,
    PolicySet,
    Rule,
    SqlMatch,
    SshMatch,
    admits,
    decide,
)

AGENT = Identity("agent-1", frozenset({"agents"}))
ADMIN = Identity("root-1", frozenset({"admins"}))
NOBODY = Identity("stranger", frozenset({"guests"}))

RULES = PolicySet(
    "main",
    (
        Rule("agents-app", "allow", Match(groups=("agents",), connectors=("app-db",))),
        Rule(
            "admins-do",
            "allow",
            Match(groups=("admins",), sql=SqlMatch(statements=("do", "create_function"))),
        ),
        Rule(
            "no-ddl",
            "deny",
            Match(sql=SqlMatch(statements=("drop", "truncate", "alter"))),
            reason="migrations only",
        ),
        Rule("no-vault", "deny", Match(sql=SqlMatch(tables=("vault",)))),
        Rule("no-sleep", "deny", Match(sql=SqlMatch(functions=("pg_sleep",)))),
        Rule(
            "writes",
            "require_approval",
            Match(sql=SqlMatch(statements=("delete", "update"))),
            approvers=("dba",),
            timeout=60,
        ),
        Rule(
            "pii", "mask", Match(connectors=("app-db",)), columns=("*.email",), detectors=("email",)
        ),
        Rule(
            "pii2", "mask", Match(groups=("agents",)), columns=("customers.ssn",), style="partial"
        ),
    ),
)


def sql(
    *kinds: str,
    reads: tuple[str, ...] = (),
    writes: tuple[str, ...] = (),
    functions: tuple[str, ...] = (),
    opaque: tuple[str, ...] = (),
    connector: str = "app-db",
) -> Command:
    return Command(
        "postgres",
        connector,
        "…",
        frozenset(kinds),
        frozenset(reads),
        frozenset(writes),
        frozenset(functions),
        frozenset(opaque),
    )


@pytest.mark.parametrize(
    ("who", "cmd", "outcome", "rule"),
    [
        (AGENT, sql("select", reads=("customers",)), "allow", "agents-app"),
        (AGENT, sql("drop", "drop_table", writes=("orders",)), "deny", "no-ddl"),
        (AGENT, sql("select", reads=("public.vault",)), "deny", "no-vault"),
        (AGENT, sql("select", reads=("vault",)), "deny", "no-vault"),
        (AGENT, sql("select", functions=("pg_catalog.pg_sleep",)), "deny", "no-sleep"),
        (AGENT, sql("delete", writes=("orders",)), "require_approval", "writes"),
        # deny beats require_approval
        (AGENT, sql("delete", reads=("vault",)), "deny", "no-vault"),
        # no matching allow: other connector, other group
        (AGENT, sql("select", connector="billing"), "deny", ""),
        (NOBODY, sql("select"), "deny", ""),
        # opaque code needs an allow naming it
        (AGENT, sql("do", opaque=("do",)), "deny", ""),
        (ADMIN, sql("do", opaque=("do",)), "allow", "admins-do"),
        (
            ADMIN,
            sql("create", "create_function", opaque=("create_function",)),
            "allow",
            "admins-do",
        ),
        # a non-sql command never matches an sql matcher
        (
            AGENT,
            Command("ssh", "app-db", "rm -rf /", command_line="rm -rf /"),
            "allow",
            "agents-app",
        ),
    ],
)
def test_decision_table(who: Identity, cmd: Command, outcome: str, rule: str) -> None:
    d = decide([RULES], who, cmd)
    assert (d.outcome, d.rule) == (outcome, rule)


def test_denial_message_names_rule_and_reason() -> None:
    d = decide([RULES], AGENT, sql("truncate"))
    assert d.message() == "denied by rule 'no-ddl': migrations only"


def test_approval_carries_approvers_and_timeout() -> None:
    d = decide([RULES], AGENT, sql("update"))
    assert d.approvers == ("dba",) and d.timeout == 60


def test_masks_add_up_and_strictest_style_wins() -> None:
    d = decide([RULES], AGENT, sql("select", reads=("customers",)))
    assert set(d.masks.columns) == {"*.email", "customers.ssn"}
    assert d.masks.detectors == ("email",)
    assert d.masks.style == "redact"
    assert decide([RULES], ADMIN, sql("select", connector="x")).masks.rules == ()


def test_shadow_mode_records_but_does_not_block() -> None:
    shadow = PolicySet(
        "trial", (Rule("no-select", "deny", Match(sql=SqlMatch(("select",)))),), mode="shadow"
    )
    d = decide([RULES, shadow], AGENT, sql("select"))
    assert d.outcome == "allow" and d.shadow == ("no-select",)


def test_shadow_allow_does_not_admit() -> None:
    shadow = PolicySet("trial", (Rule("all", "allow", Match()),), mode="shadow")
    assert not admits([shadow], NOBODY, "app-db")
    assert decide([shadow], NOBODY, sql("select")).outcome == "deny"


def test_admission() -> None:
    assert admits([RULES], AGENT, "app-db")
    assert not admits([RULES], AGENT, "billing")
    assert admits([RULES], ADMIN, "anything")  # admins-do names no connector
    assert not admits([RULES], NOBODY, "app-db")


def test_an_approval_rule_opens_only_the_connectors_it_names() -> None:
    approval = Rule(
        "dba-approves", "require_approval", Match(groups=("agents",)), approvers=("dba",)
    )
    scoped = Rule(
        "dba-approves-app",
        "require_approval",
        Match(groups=("agents",), connectors=("app-db",)),
        approvers=("dba",),
    )
    assert not admits([PolicySet("p", (approval,))], AGENT, "other-db")
    assert admits([PolicySet("p", (scoped,))], AGENT, "app-db")
    assert not admits([PolicySet("p", (scoped,))], AGENT, "other-db")


def test_glob_star_does_not_cover_opaque() -> None:
    star = PolicySet("p", (Rule("everything", "allow", Match(sql=SqlMatch(("*",)))),))
    assert decide([star], AGENT, sql("do", opaque=("do",))).outcome == "deny"
    assert decide([star], AGENT, sql("select")).outcome == "allow"


def test_ssh_and_kube_matchers() -> None:
    ps = PolicySet(
        "p",
        (
            Rule("ok", "allow", Match()),
            Rule("no-rm", "deny", Match(ssh=SshMatch(("rm *", "*sudo*")))),
            Rule(
                "no-secrets",
                "deny",
                Match(kubernetes=KubeMatch(verbs=("get", "list"), resources=("secrets",))),
            ),
        ),
    )
    rm = Command("ssh", "h", "rm -rf /", command_line="rm -rf /")
    ls = Command("ssh", "h", "ls", command_line="ls")
    sec = Command("kubernetes", "k", "GET", verb="get", resource="secrets", namespace="x")
    pods = Command("kubernetes", "k", "GET", verb="get", resource="pods", namespace="x")
    assert decide([ps], AGENT, rm).rule == "no-rm"
    assert decide([ps], AGENT, ls).outcome == "allow"
    assert decide([ps], AGENT, sec).rule == "no-secrets"
    assert decide([ps], AGENT, pods).outcome == "allow"


def test_matching_is_case_insensitive() -> None:
    assert decide([RULES], AGENT, sql("select", reads=("VAULT",))).rule == "no-vault"


def test_allow_must_cover_every_kind_table_and_function() -> None:
    ps = PolicySet(
        "p",
        (
            Rule(
                "selects", "allow", Match(groups=("agents",), sql=SqlMatch(statements=("select",)))
            ),
            Rule(
                "public-tables",
                "allow",
                Match(groups=("admins",), sql=SqlMatch(tables=("public_*",))),
            ),
            Rule(
                "creates",
                "allow",
                Match(groups=("creators",), sql=SqlMatch(statements=("create",))),
            ),
        ),
    )
    # a data-modifying CTE is not covered by an allow on select
    assert decide([ps], AGENT, sql("select", "delete", writes=("t",))).outcome == "deny"
    assert decide([ps], AGENT, sql("select", reads=("t",))).outcome == "allow"
    assert decide([ps], ADMIN, sql("select", reads=("public_x", "secrets"))).outcome == "deny"
    assert decide([ps], ADMIN, sql("select", reads=("public_x",))).outcome == "allow"
    creator = Identity("c", frozenset({"creators"}))
    # a specific kind is covered by its generic verb
    assert decide([ps], creator, sql("create", "create_table")).outcome == "allow"


def test_an_opaque_refusal_says_what_the_statement_does() -> None:
    d = decide([RULES], AGENT, sql("select", "read_activity", opaque=("read_activity",)))
    assert d.outcome == "deny" and "other sessions' activity" in d.reason
    assert "sql.statements" in d.reason  # and how to allow it
    d = decide([RULES], AGENT, sql("do", opaque=("do",)))
    assert "cannot be checked statically" in d.reason


def test_issuers_tie_subjects_to_their_issuer() -> None:
    """Issue 16: two issuers may both say sub=agent-1; `issuers` tells them apart."""
    ps = PolicySet(
        "p",
        (
            Rule(
                "a-agent-1-only",
                "allow",
                Match(subjects=("agent-1",), issuers=("https://idp-a.example",)),
            ),
            Rule("corp-deny", "deny", Match(issuers=("https://*.corp.example",))),
        ),
    )
    cmd = Command("postgres", "app-db", "select 1", kinds=frozenset({"select"}))
    a = Identity("agent-1", frozenset(), "https://idp-a.example")
    b = Identity("agent-1", frozenset(), "https://idp-b.example")
    corp = Identity("agent-1", frozenset(), "https://login.corp.example")
    assert decide([ps], a, cmd).outcome == "allow"
    assert decide([ps], b, cmd).outcome == "deny"
    assert decide([ps], corp, cmd).rule == "corp-deny"
    assert admits([ps], a, "app-db") and not admits([ps], b, "app-db")
