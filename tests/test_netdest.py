"""hoopy.netdest: destinations normalised or refused, patterns parsed and matched, and the
policy decisions on SSH forwards (`ssh: {forward: [...]}`) as tables."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy import netdest
from hoopy.config import ConfigError, load_config
from hoopy.policy import FORWARD, Command, Identity, Match, PolicySet, Rule, SshMatch, decide

# ---- destinations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "shown", "forms"),
    [
        ("db.internal", 5432, "db.internal:5432", ()),
        ("DB.Internal", 5432, "db.internal:5432", ()),
        ("10.1.2.3", 80, "10.1.2.3:80", ()),
        ("2001:DB8:0:0::1", 443, "[2001:db8::1]:443", ()),
        ("::ffff:10.1.2.3", 80, "10.1.2.3:80", ()),  # IPv4-mapped: the IPv4 address
        ("127.0.0.1", 22, "127.0.0.1:22", ("localhost:22", "[::1]:22")),
        ("127.9.9.9", 22, "127.9.9.9:22", ("localhost:22", "127.0.0.1:22", "[::1]:22")),
        ("0.0.0.0", 22, "0.0.0.0:22", ("localhost:22", "127.0.0.1:22", "[::1]:22")),
        ("::", 22, "[::]:22", ("localhost:22", "127.0.0.1:22", "[::1]:22")),
        ("::1", 22, "[::1]:22", ("localhost:22", "127.0.0.1:22")),
        ("::ffff:127.0.0.1", 22, "127.0.0.1:22", ("localhost:22", "[::1]:22")),
        ("LocalHost", 22, "localhost:22", ("127.0.0.1:22", "[::1]:22")),
        ("x.localhost", 22, "x.localhost:22", ("localhost:22", "127.0.0.1:22", "[::1]:22")),
        ("IP6-Localhost", 22, "ip6-localhost:22", ("localhost:22", "127.0.0.1:22", "[::1]:22")),
        (
            "localhost.localdomain",
            1,
            "localhost.localdomain:1",
            ("localhost:1", "127.0.0.1:1", "[::1]:1"),
        ),
        ("a_b-c.d", 1, "a_b-c.d:1", ()),
        ("1e100.net", 65535, "1e100.net:65535", ()),
    ],
)
def test_destinations_are_normalised(
    host: str, port: int, shown: str, forms: tuple[str, ...]
) -> None:
    d = netdest.destination(host, port)
    assert str(d) == shown
    assert d.forms() == (shown, *forms)


@pytest.mark.parametrize(
    ("host", "port", "why"),
    [
        ("db.internal", 0, "out of range"),
        ("db.internal", 65536, "out of range"),
        ("db.internal", 2**32 - 1, "out of range"),
        ("", 22, "plain ASCII"),
        ("db.internal.", 22, "trailing dot"),
        ("db..internal", 22, "non-empty labels"),
        (".db", 22, "non-empty labels"),
        ("-oProxyCommand=x", 22, "none starting with '-'"),
        ("db.internal\x00.evil.com", 22, "plain ASCII"),
        ("db.internal\n", 22, "plain ASCII"),
        ("db internal", 22, "plain ASCII"),
        ("db.internal ", 22, "plain ASCII"),
        ("\tdb", 22, "plain ASCII"),
        ("dé.internal", 22, "plain ASCII"),
        ("db/internal", 22, "letters, digits"),
        ("db@internal", 22, "letters, digits"),
        ("127.1", 22, "canonical IPv4"),
        ("127.0.1", 22, "canonical IPv4"),
        ("0x7f.0.0.1", 22, "canonical IPv4"),
        ("0x7f000001", 22, "canonical IPv4"),
        ("017.0.0.1", 22, "canonical IPv4"),
        ("2130706433", 22, "canonical IPv4"),
        ("256.0.0.1", 22, "canonical IPv4"),
        ("1.2.3.4.5", 22, "canonical IPv4"),
        ("[::1]", 22, "brackets"),
        ("fe80::1%eth0", 22, "zone"),
        ("::g", 22, "not an IPv6 address"),
        ("a" * 254, 22, "1-253"),
    ],
)
def test_ambiguous_destinations_are_refused(host: str, port: int, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        netdest.destination(host, port)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.integers(min_value=-5, max_value=70000))
def test_whatever_is_accepted_is_canonical_and_stable(host: str, port: int) -> None:
    """Hostile input: a destination is either refused or canonical (normalising it again
    changes nothing), and nothing outside the safe alphabet gets through."""
    try:
        d = netdest.destination(host, port)
    except ValueError:
        return
    assert 1 <= d.port <= 65535
    assert d.host == d.host.lower() and d.host.isascii()
    assert all(c.isalnum() or c in ".-_:" for c in d.host)
    assert netdest.destination(d.host, d.port) == d
    h, p = netdest.split(str(d))
    assert (h, int(p)) == (d.host, d.port)


# ---- patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("db.internal:5432", ["db.internal:5432"], ["db.internal.evil.com:5432",
         "evil.db.internal:5432", "db.internal:5433", "db.internalx:5432"]),
        ("db.internal*:5432", ["db.internal:5432", "db.internal2:5432"],
         ["db.internal.evil.com:5432"]),
        ("*.internal:22", ["a.internal:22"], ["a.b.internal:22", "internal:22",
         "a.internal.evil.com:22"]),
        ("db?:1", ["db1:1"], ["db:1", "db.:1", "db12:1"]),
        ("*:*", ["x:1", "10.0.0.1:2", "[::1]:3"], []),
        ("*:22", ["x:22"], ["x:2222"]),
        ("127.0.0.1:80*", ["127.0.0.1:80", "127.0.0.1:8080"], ["127.0.0.1:90",
         "127.0.0.10:80"]),
        ("10.0.0.0/8:1000-2000", ["10.9.9.9:1000", "10.0.0.1:2000"], ["10.0.0.1:999",
         "11.0.0.1:1500", "10.evil.com:1500"]),
        ("10.0.0.*:1", ["10.0.0.7:1"], ["10.0.0.7.evil.com:1", "10.0.1.7:1"]),
        ("[::1]:22", ["[::1]:22"], ["127.0.0.1:22", "[::2]:22"]),
        ("[fd00::/8]:*", ["[fd12::1]:5"], ["[fe80::1]:5", "fd12.evil.com:5"]),
        ("fd00*:1", [], ["[fd00::1]:1"]),  # name globs never match an IPv6 address
        ("DB.Internal:1", ["db.internal:1"], []),
        ("127.0.0.1:22", ["127.0.0.1:22"], ["127.0.0.2:22", "localhost:22"]),
    ],
)  # fmt: skip
def test_patterns_match_exactly(pattern: str, yes: list[str], no: list[str]) -> None:
    netdest.pattern(pattern)
    for form in yes:
        assert netdest.matches((pattern,), form), form
    for form in no:
        assert not netdest.matches((pattern,), form), form


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("db.internal", "name a port"),
        ("db.internal:", "a number, \\*"),
        ("db.internal:0", "out of range"),
        ("db.internal:65536", "out of range"),
        ("db.internal:080", "leading zeros"),
        ("db.internal:10-5", "low <= high"),
        ("db.internal:http", "a number"),
        ("::1:22", "brackets"),
        ("[::1]", "followed by :port"),
        ("[::1:22", "followed by :port"),
        ("10.0.0.1/8:1", "host bits"),
        ("db internal:1", "without spaces"),
        ("db.internal.:1", "trailing dot"),
        ("127.1:1", "canonical IPv4"),
        ("db[0-9]:1", "letters, digits"),
        ("db/x:1", "not an IP address"),
        ("dé:1", "plain ASCII"),
    ],
)
def test_bad_patterns_say_why(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        netdest.pattern(pattern)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,3}", fullmatch=True), st.text(max_size=12))
def test_an_exact_name_only_ever_matches_itself(name: str, suffix: str) -> None:
    """The look-alike attack: any destination that is not exactly `name` (after case
    folding) does not match a rule naming `name`."""
    try:
        netdest.pattern(f"{name}:443")  # `0` is no pattern (nor destination): refused
        d = netdest.destination(name + suffix, 443)
    except ValueError:
        return
    assert netdest.matches((f"{name}:443",), str(d)) == (d.host == name)


def test_cidr_never_matches_names() -> None:
    net = netdest.pattern("0.0.0.0/0:*")
    assert net.matches("1.2.3.4", 1) and not net.matches("example.com", 1)
    assert netdest.pattern("[::/0]:*").network == ipaddress.ip_network("::/0")


# ---- policy decisions ------------------------------------------------------------------

AGENT = Identity("agent-1", frozenset({"agents"}))


def _fwd(host: str, port: int, connector: str = "web-1") -> Command:
    d = netdest.destination(host, port)
    return Command(
        "ssh", connector, f"forward to {d}", kinds=frozenset({FORWARD}), forward=d.forms()
    )


def _exec(line: str) -> Command:
    return Command("ssh", "web-1", line, command_line=line, commands=(line,))


POLICY = PolicySet(
    "p",
    (
        Rule("everything-but-forwards", "allow", Match(groups=("agents",))),
        Rule("any-command", "allow", Match(ssh=SshMatch(commands=("*",), opaque=True))),
        Rule("shells", "allow", Match(ssh=SshMatch(shell=True))),
        Rule("ssh-empty", "allow", Match(ssh=SshMatch())),
        Rule("db", "allow", Match(ssh=SshMatch(forward=("db.internal:*", "127.0.0.1:*")))),
        Rule("no-local-ssh", "deny", Match(ssh=SshMatch(forward=("localhost:22",)))),
        Rule(
            "metrics-need-ops",
            "require_approval",
            Match(ssh=SshMatch(forward=("db.internal:9*",))),
            approvers=("ops",),
        ),
    ),
)


@pytest.mark.parametrize(
    ("cmd", "outcome", "rule"),
    [
        (_fwd("db.internal", 5432), "allow", "db"),
        (_fwd("DB.INTERNAL", 5432), "allow", "db"),
        (_fwd("db.internal.evil.com", 5432), "deny", ""),
        (_fwd("other.internal", 5432), "deny", ""),  # allows without `forward` do not count
        (_fwd("127.0.0.1", 8080), "allow", "db"),
        (_fwd("127.0.0.1", 22), "deny", "no-local-ssh"),  # deny beats allow, via an alias
        (_fwd("::ffff:127.0.0.1", 22), "deny", "no-local-ssh"),
        (_fwd("0.0.0.0", 22), "deny", "no-local-ssh"),
        (_fwd("0.0.0.0", 8080), "deny", ""),  # an allow names the destination as written
        (_fwd("localhost", 8080), "deny", ""),
        (_fwd("db.internal", 9100), "require_approval", "metrics-need-ops"),
        (_exec("ls"), "allow", "everything-but-forwards"),  # forward rules leave exec alone
    ],
)
def test_forward_decisions(cmd: Command, outcome: str, rule: str) -> None:
    d = decide([POLICY], AGENT, cmd)
    assert (d.outcome, d.rule) == (outcome, rule)


def test_forward_rules_do_not_match_commands() -> None:
    deny_all = PolicySet(
        "d",
        (
            Rule("any", "allow", Match(ssh=SshMatch(commands=("*",)))),
            Rule("no-forwards", "deny", Match(ssh=SshMatch(forward=("*:*",)))),
        ),
    )
    assert decide([deny_all], AGENT, _exec("ls")).outcome == "allow"
    assert decide([deny_all], AGENT, _fwd("x", 1)).rule == "no-forwards"


def test_restrictive_rules_without_forward_still_apply() -> None:
    """A deny or approval rule without `ssh`, or with `ssh: {}`, covers forwards too;
    one about commands does not."""
    allow = Rule("db", "allow", Match(ssh=SshMatch(forward=("*:*",))))
    for rule, expected in [
        (Rule("no-agents", "deny", Match(groups=("agents",))), "deny"),
        (Rule("no-ssh", "deny", Match(ssh=SshMatch())), "deny"),
        (Rule("ops", "require_approval", Match(ssh=SshMatch()), approvers=("o",)),
         "require_approval"),
        (Rule("no-rm", "deny", Match(ssh=SshMatch(commands=("rm *", "*")))), "allow"),
        (Rule("no-sftp", "deny", Match(ssh=SshMatch(sftp=("*",)))), "allow"),
        (Rule("no-shell", "deny", Match(ssh=SshMatch(shell=True))), "allow"),
    ]:  # fmt: skip
        d = decide([PolicySet("p", (allow, rule))], AGENT, _fwd("x", 1))
        assert d.outcome == expected, rule.name


def test_shadow_mode_records_but_does_not_block() -> None:
    enforce = PolicySet("e", (Rule("db", "allow", Match(ssh=SshMatch(forward=("*:*",)))),))
    shadow = PolicySet(
        "s", (Rule("would-deny", "deny", Match(ssh=SshMatch(forward=("x:1",)))),), mode="shadow"
    )
    d = decide([enforce, shadow], AGENT, _fwd("x", 1))
    assert d.outcome == "allow" and d.shadow == ("would-deny",)


# ---- configuration ---------------------------------------------------------------------


def test_hoopy_check_reports_bad_forward_rules(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "hoopy.yaml").write_text("")
    policy = tmp_path / "policies" / "p.yaml"
    policy.write_text(
        textwrap.dedent("""\
            rules:
              - name: ok
                effect: allow
                match: {ssh: {forward: ["db.internal:5432", "10.0.0.0/8:80*", "[::1]:22"]}}
              - name: bad
                effect: allow
                match:
                  ssh:
                    forward:
                      - db.internal
                      - "127.1:22"
                      - "db.internal:99999"
              - name: mixed
                effect: deny
                match: {ssh: {forward: ["*:*"], commands: ["ls"]}}
              - name: empty
                effect: deny
                match: {ssh: {forward: []}}
        """)
    )
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "hoopy.yaml")
    assert e.value.problems == [
        f"{policy}:10: ssh.forward: 'db.internal': name a port: host:port, or host:* for any port",
        f"{policy}:11: ssh.forward: '127.1:22': '127.1' is not a canonical IPv4 address "
        "(write it as a.b.c.d, decimal, no leading zeros)",
        f"{policy}:12: ssh.forward: 'db.internal:99999': port 99999 is out of range "
        "(1-65535, no leading zeros)",
        f"{policy}:15: match.ssh.forward: cannot be combined with commands: use another rule",
        f"{policy}:18: match.ssh.forward: empty, so it would match anything: name at least "
        "one, or remove the key",
    ]


def test_forward_patterns_load(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "hoopy.yaml").write_text("")
    (tmp_path / "policies" / "p.yaml").write_text(
        'rules:\n  - {name: a, effect: allow, match: {ssh: {forward: ["DB.x:1"]}}}\n'
    )
    cfg = load_config(tmp_path / "hoopy.yaml")
    assert cfg.policies[0].rules[0].match.ssh == SshMatch(forward=("DB.x:1",))


_NOISY = st.sampled_from(list("abcdefxz0123456789.:-_[]%*?/ \x00\nAZ"))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=_NOISY, max_size=30), st.integers(min_value=-1, max_value=70000))
def test_every_accepted_destination_is_a_pattern_that_matches_it(host: str, port: int) -> None:
    """An operator can always write an allow for what an agent may name: the
    destination's own `host:port` parses as a pattern and matches it."""
    try:
        d = netdest.destination(host, port)
    except ValueError:
        return
    assert netdest.matches((str(d),), str(d))
    for pattern in ("*:*", f"*:{d.port}"):
        assert netdest.matches((pattern,), str(d))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=_NOISY, max_size=30))
def test_patterns_parse_or_say_why(text: str) -> None:
    try:
        p = netdest.pattern(text)
    except ValueError as e:
        assert str(e)
        return
    for host in ("db.internal", "10.0.0.1", "::1", "localhost"):
        p.matches(host, 22)  # never raises


# ---- attacks: one place, another spelling ---------------------------------------------


@pytest.mark.parametrize(
    ("rule", "host", "port"),
    [
        # a deny written in IPv4-mapped form must stop the place it names, however the
        # agent spells it (destinations normalise mapped addresses to IPv4)
        ("[::ffff:127.0.0.0/104]:*", "127.0.0.1", 22),
        ("[::ffff:127.0.0.0/104]:*", "::ffff:127.0.0.1", 22),
        ("[::ffff:10.1.2.3]:5432", "10.1.2.3", 5432),
        ("[::ffff:10.1.2.3]:5432", "::ffff:a01:203", 5432),
        # nss-myhostname resolves every name under localhost.localdomain to loopback
        ("127.0.0.1:*", "db.localhost.localdomain", 22),
        ("localhost:*", "X.LocalHost.LocalDomain", 22),
        # systemd's synthesised names for the host itself and its resolver stubs
        ("localhost:22", "_outbound", 22),
        ("127.0.0.0/8:*", "_LocalDNSStub", 53),
        ("[::1]:*", "_localdnsproxy", 53),
        # IPv6 forms a translator or tunnel turns into the IPv4 address they carry
        ("10.0.0.0/8:*", "64:ff9b::a00:5", 5432),  # NAT64 well-known prefix
        ("10.0.0.0/8:*", "64:ff9b::10.0.0.5", 5432),
        ("10.0.0.5:5432", "64:ff9b:1:a00:0:500::", 5432),  # NAT64 local-use /48
        ("localhost:22", "64:ff9b::7f00:1", 22),
        ("127.0.0.1:*", "::127.0.0.1", 22),  # IPv4-compatible
        ("127.0.0.1:*", "::ffff:0:127.0.0.1", 22),  # SIIT IPv4-translated
        ("10.0.0.0/8:*", "2002:a00:5::1", 5432),  # 6to4
        # 0.x.y.z is "this host": Linux connects it to local listeners
        ("127.0.0.1:*", "0.1.2.3", 22),
        ("localhost:22", "0.0.0.1", 22),
    ],
)
def test_deny_is_not_bypassed_by_another_spelling(rule: str, host: str, port: int) -> None:
    policy = PolicySet(
        "p",
        (
            Rule("any", "allow", Match(ssh=SshMatch(forward=("*:*",)))),
            Rule("no", "deny", Match(ssh=SshMatch(forward=(rule,)))),
        ),
    )
    d = decide([policy], AGENT, _fwd(host, port))
    assert (d.outcome, d.rule) == ("deny", "no")


def test_a_mapped_allow_names_only_its_ipv4_block() -> None:
    allow = PolicySet(
        "p", (Rule("db", "allow", Match(ssh=SshMatch(forward=("[::ffff:10.0.0.0/120]:5432",)))),)
    )
    assert decide([allow], AGENT, _fwd("10.0.0.7", 5432)).outcome == "allow"
    assert decide([allow], AGENT, _fwd("10.0.1.7", 5432)).outcome == "deny"
    assert (
        decide([allow], AGENT, _fwd("::a00:7", 5432)).outcome == "deny"
    )  # IPv4-compatible: not mapped


def test_embedded_ipv4_aliases_never_widen_an_allow() -> None:
    """The carried IPv4 address is an alias: deny and approval rules see it, an allow
    must still name the IPv6 destination itself."""
    allow = PolicySet("p", (Rule("v4", "allow", Match(ssh=SshMatch(forward=("10.0.0.5:*",)))),))
    assert decide([allow], AGENT, _fwd("64:ff9b::a00:5", 1)).outcome == "deny"
    assert decide([allow], AGENT, _fwd("10.0.0.5", 1)).outcome == "allow"
    assert netdest.destination("2001:db8::1", 1).aliases == ()  # documentation space: none
