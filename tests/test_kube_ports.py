"""`kubernetes: {ports: [...]}`: how pods/portforward streams are decided, and what
`hoopy check` says about the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hoopy.config import check_config, load_config
from hoopy.policy import Command, Identity, KubeMatch, Match, PolicySet, Rule, decide

AGENT = Identity("agent-1", frozenset({"agents"}))


def cmd(ports: tuple[int, ...] = (), resource: str = "pods/portforward", ns: str = "pf") -> Command:
    return Command(
        "kubernetes",
        "k",
        "create",
        kinds=frozenset({"create"}),
        verb="create",
        resource=resource,
        namespace=ns,
        name="db",
        ports=ports,
    )


POLICY = PolicySet(
    "p",
    (
        Rule("broad", "allow", Match(groups=("agents",))),
        Rule(
            "pg",
            "allow",
            Match(kubernetes=KubeMatch(resources=("pods/portforward",), ports=((5432, 5432),))),
        ),
        Rule(
            "web", "allow", Match(kubernetes=KubeMatch(ports=((8000, 8080),), namespaces=("pf",)))
        ),
        Rule("no-ssh", "deny", Match(kubernetes=KubeMatch(ports=((22, 22),)))),
    ),
)


@pytest.mark.parametrize(
    ("command", "outcome", "rule"),
    [
        (cmd(), "allow", "broad"),  # the tunnel itself: its ports come stream by stream
        (cmd((5432,)), "allow", "pg"),
        (cmd((8000,)), "allow", "web"),
        (cmd((8080,)), "allow", "web"),
        (cmd((8081,)), "deny", ""),  # a broad allow never opens a port: it must be named
        (cmd((8000,), ns="other"), "deny", ""),
        (cmd((5432, 8081)), "deny", ""),  # an allow covers every port or none
        (cmd((22,)), "deny", "no-ssh"),
        (cmd((22, 5432)), "deny", "no-ssh"),  # a deny needs only one
        (cmd(resource="pods"), "allow", "broad"),  # rules with ports leave other things be
    ],
)
def test_port_decisions(command: Command, outcome: str, rule: str) -> None:
    d = decide([POLICY], AGENT, command)
    assert (d.outcome, d.rule) == (outcome, rule)


def test_restrictive_port_rules_wait_for_the_streams() -> None:
    only_deny = PolicySet(
        "p",
        (
            Rule("broad", "allow", Match(groups=("agents",))),
            Rule("no-ssh", "deny", Match(kubernetes=KubeMatch(ports=((22, 22),)))),
        ),
    )
    assert decide([only_deny], AGENT, cmd()).outcome == "allow"


def write(tmp_path: Path, ports: str, resources: str = "[pods/portforward]") -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "connectors").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "kc").write_text("apiVersion: v1\n")
    (tmp_path / "connectors" / "k.yaml").write_text(
        f"type: kubernetes\nkubeconfig: file:{tmp_path / 'kc'}\n"
    )
    (tmp_path / "policies" / "p.yaml").write_text(
        textwrap.dedent(
            f"""\
            rules:
              - name: fwd
                effect: allow
                match: {{kubernetes: {{resources: {resources}, ports: {ports}}}}}
            """
        )
    )
    cfg = tmp_path / "hoopy.yaml"
    cfg.write_text("listen: {kubernetes: 127.0.0.1:0}\nstate: sqlite:s.db\nrecordings: r/\n")
    return cfg


def test_ports_field_parsed(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[5432, "8000-8080", 1, 65535]')
    rule = load_config(cfg).policies[0].rules[0]
    assert rule.match.kubernetes is not None
    assert rule.match.kubernetes.ports == ((5432, 5432), (8000, 8080), (1, 1), (65535, 65535))


@pytest.mark.parametrize(
    ("ports", "problem"),
    [
        ("[]", "empty, so it would match anything"),
        ("[0]", "'0' is not a port"),
        ("[65536]", "'65536' is not a port"),
        ('["9-3"]', "'9-3' is not a port"),
        ('["http"]', "'http' is not a port"),
        ('["-5"]', "'-5' is not a port"),
        ("[[1]]", "'a list or mapping' is not a port"),
    ],
)
def test_ports_field_mistakes(tmp_path: Path, ports: str, problem: str) -> None:
    problems = check_config(write(tmp_path, ports))
    assert any(problem in p and "p.yaml:4" in p for p in problems), problems


def test_attach_with_stdin_is_opaque_without_it_is_not() -> None:
    from hoopy.protocols.kube.commands import command_for as _command
    from hoopy.protocols.kube.requestinfo import parse_query, request_info

    path = "/api/v1/namespaces/pf/pods/w/attach"
    for query, opaque in (
        ("stdin=true&stdout=true&tty=true", {"shell_attach"}),
        ("stdin=yes&stdout=true", {"shell_attach"}),  # as the cluster reads a bool
        ("stdout=true&stderr=true", set()),
        ("stdin=false&stdout=true", set()),
    ):
        q = parse_query(query)
        c = _command("k", request_info("POST", path, q), q, "POST")
        assert (c.resource, set(c.opaque)) == ("pods/attach", opaque), query
        assert not c.commands and not c.command_line


def test_ports_outside_port_forward_are_a_mistake(tmp_path: Path) -> None:
    problems = check_config(write(tmp_path, "[80]", resources="[pods, pods/exec]"))
    assert any("only apply to pods/portforward" in p for p in problems), problems
    assert check_config(write(tmp_path / "b", "[80]", resources='["pods/*"]')) == []
