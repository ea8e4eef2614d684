"""`ssh: {shell: true}`: opening an interactive shell is allowed only by a rule saying
so; `may_sftp` opens the SFTP subsystem only for rules naming operations; config parses
the key and refuses a wrong type."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoopy.config import ConfigError, load_config
from hoopy.policy import (
    SHELL_SESSION,
    Command,
    Identity,
    Match,
    PolicySet,
    Rule,
    SshMatch,
    decide,
    may_sftp,
)
from hoopy.protocols.ssh.lineedit import LineReady, line_command

WHO = Identity("agent-1", frozenset({"ops"}))
SHELL = Command("ssh", "web-1", "(interactive shell)", kinds=frozenset({SHELL_SESSION}))


def _decide(*rules: Rule, cmd: Command = SHELL) -> tuple[str, str]:
    d = decide([PolicySet("p", rules)], WHO, cmd)
    return d.outcome, d.rule


def _allow(name: str, **ssh: object) -> Rule:
    return Rule(name, "allow", Match(connectors=("web-1",), ssh=SshMatch(**ssh)))  # type: ignore[arg-type]


def test_only_shell_true_allows_a_shell() -> None:
    assert _decide(_allow("s", shell=True)) == ("allow", "s")
    assert _decide(Rule("no-ssh-section", "allow", Match(connectors=("web-1",)))) == ("deny", "")
    assert _decide(_allow("cmds", commands=("*",))) == ("deny", "")
    assert _decide(_allow("empty")) == ("deny", "")  # `ssh: {}` allows every command, no shell
    assert _decide(_allow("opaque", opaque=True)) == ("deny", "")
    assert _decide(_allow("sftp", sftp=("read",))) == ("deny", "")


def test_deny_and_approval_rules_on_shells() -> None:
    allow = _allow("s", shell=True)
    deny = Rule("no-shells", "deny", Match(ssh=SshMatch(shell=True)))
    assert _decide(allow, deny) == ("deny", "no-shells")
    everything = Rule("nothing", "deny", Match(ssh=SshMatch()))
    assert _decide(allow, everything) == ("deny", "nothing")
    about_rm = Rule("no-rm", "deny", Match(ssh=SshMatch(commands=("rm *",))))
    assert _decide(allow, about_rm) == ("allow", "s")
    approve = Rule("ask", "require_approval", Match(ssh=SshMatch(shell=True)), approvers=("ops",))
    assert _decide(allow, approve) == ("require_approval", "ask")


def test_shell_true_alone_allows_no_command_line() -> None:
    """`shell: true` opens shells; what is typed in one needs its own allow."""
    allow = _allow("s", shell=True)
    typed = line_command(LineReady("rm -rf /"), "web-1")
    assert _decide(allow, cmd=typed) == ("deny", "")
    assert _decide(allow, _allow("ls", commands=("ls *",)), cmd=typed) == ("deny", "")
    ls = line_command(LineReady("ls -l /tmp"), "web-1")
    assert _decide(allow, _allow("ls", commands=("ls *",)), cmd=ls) == ("allow", "ls")
    both = _allow("both", shell=True, commands=("ls *",))
    assert _decide(both, cmd=ls) == ("allow", "both")
    assert _decide(both) == ("allow", "both")
    # a deny about shells does not deny command lines
    deny = Rule("no-shells", "deny", Match(ssh=SshMatch(shell=True)))
    assert _decide(deny, _allow("ls", commands=("ls *",)), cmd=ls) == ("allow", "ls")


def test_may_sftp() -> None:
    def ps(*rules: Rule, mode: str = "enforce") -> list[PolicySet]:
        return [PolicySet("p", rules, mode)]  # type: ignore[arg-type]

    reads = _allow("r", sftp=("read",), paths=("/srv/*",))
    assert may_sftp(ps(reads), WHO, "web-1")
    assert not may_sftp(ps(reads), WHO, "web-2")
    assert not may_sftp(ps(reads, mode="shadow"), WHO, "web-1")
    assert not may_sftp(ps(_allow("cmds", commands=("*",))), WHO, "web-1")
    assert not may_sftp(ps(Rule("all", "allow", Match(connectors=("web-1",)))), WHO, "web-1")
    deny = Rule("d", "deny", Match(ssh=SshMatch(sftp=("*",))))
    assert not may_sftp(ps(deny), WHO, "web-1")
    other = Rule("o", "allow", Match(groups=("else",), ssh=SshMatch(sftp=("read",))))
    assert not may_sftp(ps(other), WHO, "web-1")


def _config(tmp_path: Path, ssh: str) -> Path:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        f"rules:\n  - name: r\n    effect: allow\n    match: {{ssh: {ssh}}}\n"
    )
    (tmp_path / "hoopy.yaml").write_text("")
    return tmp_path / "hoopy.yaml"


def test_config_parses_shell(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "{shell: true, commands: ['ls *']}"))
    m = cfg.policies[0].rules[0].match.ssh
    assert m == SshMatch(commands=("ls *",), shell=True)


def test_config_refuses_a_non_boolean_shell(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, "{shell: sometimes}"))
    assert any("shell" in p for p in e.value.problems), e.value.problems
