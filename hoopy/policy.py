"""The rule engine: a protocol-neutral Command in, a Decision out.

Theory of operation: every proxy turns what it reads on the wire into a
`Command` and hands it to `session.check()`, which calls `decide()` here.
`decide()` is pure (no I/O, no clock) so it can be tested as tables and its
results cached by the proxies.

Precedence (DESIGN §5): deny over require_approval over allow; no matching
allow means deny; mask rules add up.  Policy sets in `mode: shadow` only record
what they would have denied: their deny / approval outcomes never block.

Statements whose effect cannot be seen statically (DO blocks, function bodies,
dynamic EXECUTE) are "opaque": an allow covers them only when the allow rule
names that exact kind in `sql.statements` — a rule with no `sql` matcher, or a
glob like `*`, does not count.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from hoopy import netdest
from hoopy.kubenames import generated_name_matches

Effect = Literal["allow", "deny", "require_approval", "mask"]
Outcome = Literal["allow", "deny", "require_approval"]


@dataclass(frozen=True)
class Identity:
    """Who is asking: the validated claims of an OIDC token."""

    subject: str
    groups: frozenset[str] = frozenset()
    issuer: str = ""
    token_fingerprint: str = ""  # sha256 prefix of the token: never the token itself
    expires_at: float = 0.0


@dataclass(frozen=True)
class Command:
    """One thing an agent asked a backend to do, independent of protocol."""

    protocol: str  # "postgres" | "ssh" | "kubernetes"
    connector: str
    text: str  # the raw command as sent (SQL statement, command line, request line)
    kinds: frozenset[str] = frozenset()  # lower-case verbs: select, delete, exec, get …
    tables_read: frozenset[str] = frozenset()
    tables_written: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    # kinds whose effect cannot be seen statically (do, create_function, execute_dynamic …)
    opaque: frozenset[str] = frozenset()
    fingerprint: str = ""  # literal-free form, for caching and approvals
    # ssh
    command_line: str = ""
    # ssh, kubernetes exec: each simple command the line runs, normalised (hoopy.shell)
    commands: tuple[str, ...] = ()
    # ssh SFTP operations (kinds sftp_<op>): every absolute path the operation touches,
    # as written (normalised) and as the backend resolves it (symlinks)
    paths: tuple[str, ...] = ()
    # kubernetes
    verb: str = ""
    resource: str = ""
    namespace: str = ""
    name: str = ""
    # kubernetes pods/portforward: the pod ports a forward opens
    ports: tuple[int, ...] = ()
    # postgres: names that may be functions the server calls, or may be columns: `t.f`
    # is f(t) when t has no column f (functional notation).  Deny and approval rules
    # count them; allow rules, which must cover everything called, do not.
    maybe_functions: frozenset[str] = frozenset()
    # postgres: the schemas an unqualified table name may be in: ("public",) unless the
    # session changed its search_path; None when hoopy cannot know where it points.
    schemas: tuple[str, ...] | None = ("public",)
    # postgres: schemas an unqualified table may also be in, which hoopy cannot confirm
    # exist, so only restrictive rules consider them: the "$user" schema of the search
    # path (the backend role's own), and pg_catalog for pg_* names (searched first).
    also_schemas: tuple[str, ...] = ()
    # What runs beside the text and is not part of it (a Bind's parameter values, one
    # string each, as an approver reads them): shown apart, never spliced into `text`.
    values: tuple[str, ...] = ()
    # kubernetes: a create named by generateName: `name` is the prefix the cluster
    # completes with 5 random characters (names rules judge every completion: kubenames)
    generated_name: bool = False
    # ssh direct-tcpip (kind FORWARD): the destination `host:port` as named (normalised,
    # hoopy.netdest), then other names of the same place, which only restrictive rules see
    forward: tuple[str, ...] = ()

    @property
    def tables(self) -> frozenset[str]:
        return self.tables_read | self.tables_written

    def with_text(self, text: str) -> Command:
        """This command with another raw text (same fingerprint): a cheap copy, as
        dataclasses.replace costs more than classifying a cached statement."""
        fields = self.__dict__.copy()
        fields["text"] = text
        new = object.__new__(Command)
        object.__setattr__(new, "__dict__", fields)
        return new

    def with_values(self, values: Sequence[str]) -> Command:
        """This command with the values it runs with (same text and fingerprint)."""
        new = self.with_text(self.text)
        new.__dict__["values"] = tuple(values)
        return new


@dataclass(frozen=True)
class SqlMatch:
    statements: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SshMatch:
    commands: tuple[str, ...] = ()
    opaque: bool = False  # allow: also covers shell lines hoopy cannot read; else: only those
    sftp: tuple[str, ...] = ()  # SFTP operations (SFTP_OPS globs)
    paths: tuple[str, ...] = ()  # SFTP: globs over the paths an operation touches
    shell: bool = False  # interactive (PTY) shell sessions: allowed only by a rule saying so
    forward: tuple[str, ...] = ()  # direct-tcpip destinations (hoopy.netdest patterns)


# The Command kind of opening an interactive shell (each line typed is checked after).
SHELL_SESSION = "shell_session"
# The Command kind of an SSH direct-tcpip channel (ssh -L, ssh -W): allowed only by a
# rule naming its destination in `ssh.forward`.
FORWARD = "forward_tcp"


# SFTP operations a rule's `ssh.sftp` names (Command.kinds are "sftp_" + op).
SFTP_OPS = (
    "read", "write", "remove", "rename", "mkdir", "rmdir", "setstat", "stat", "list",
    "symlink", "link",
)  # fmt: skip


@dataclass(frozen=True)
class KubeMatch:
    verbs: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    opaque: bool = False  # as SshMatch.opaque, for exec/attach commands
    # pods/portforward: the ports (inclusive ranges) a rule names; see _ports_match
    ports: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Match:
    subjects: tuple[str, ...] = ()
    # Globs over the token issuer's URL: an agent is (issuer, subject), and two issuers
    # may hand out the same subject or group names.
    issuers: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    connectors: tuple[str, ...] = ()
    sql: SqlMatch | None = None
    ssh: SshMatch | None = None
    kubernetes: KubeMatch | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    effect: Effect
    match: Match = field(default_factory=Match)
    reason: str = ""
    approvers: tuple[str, ...] = ()
    timeout: float = 600.0  # seconds, for require_approval
    reuse_for: float = 0.0  # seconds an approval may be reused (0: one-time grant)
    columns: tuple[str, ...] = ()  # mask: table.column globs
    detectors: tuple[str, ...] = ()  # mask: value detector names
    style: str = "redact"  # mask: redact | partial | hash
    source: str = ""  # "file:line" for operators


@dataclass(frozen=True)
class PolicySet:
    name: str
    rules: tuple[Rule, ...]
    mode: Literal["enforce", "shadow"] = "enforce"
    source: str = ""


# Strictest first: when rules disagree about one value, the strictest style wins.
STYLE_ORDER = {"redact": 0, "hash": 1, "partial": 2}


@dataclass(frozen=True)
class MaskRule:
    """One mask rule as it applies to a command: its name, what it covers, its style."""

    name: str
    columns: tuple[str, ...] = ()
    detectors: tuple[str, ...] = ()
    style: str = "redact"


@dataclass(frozen=True)
class Masks:
    """Every mask rule that matched a command; they add up."""

    entries: tuple[MaskRule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def columns(self) -> tuple[str, ...]:
        return _unique(c for e in self.entries for c in e.columns)

    @property
    def detectors(self) -> tuple[str, ...]:
        return _unique(d for e in self.entries for d in e.detectors)

    @property
    def style(self) -> str:
        return strictest(e.style for e in self.entries)

    @property
    def column_rules(self) -> tuple[MaskRule, ...]:
        return tuple(e for e in self.entries if e.columns)

    @property
    def detector_style(self) -> str:
        return strictest(e.style for e in self.entries if e.detectors)


def strictest(styles: Iterable[str]) -> str:
    return min(styles, key=lambda s: STYLE_ORDER.get(s, 0), default="redact")


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    rule: str = ""  # the rule that decided ("" when nothing matched)
    reason: str = ""
    approvers: tuple[str, ...] = ()
    timeout: float = 0.0
    reuse_for: float = 0.0
    masks: Masks = field(default_factory=Masks)
    shadow: tuple[str, ...] = ()  # shadow-mode rules that would have blocked

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"

    def message(self) -> str:
        """What the agent is told; names the rule so operators can find it."""
        if self.outcome == "allow":
            return "allowed"
        if not self.rule:
            return f"denied: {self.reason or 'no policy rule allows this'}"
        text = f"denied by rule '{self.rule}'"
        return f"{text}: {self.reason}" if self.reason else text


NO_ALLOW = Decision("deny", "", "no policy rule allows this")


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE | re.DOTALL)


def glob_any(patterns: Sequence[str], values: Iterable[str]) -> bool:
    """True when any value matches any glob (case-insensitive)."""
    compiled = [_glob(p) for p in patterns]
    return any(c.match(v) for v in values for c in compiled)


def _table_covered(patterns: Sequence[str], table: str, every: bool, cmd: Command) -> bool:
    """Does a glob name this table?  A table goes by its bare name and its qualified
    name.  Restrictive rules (`every` False) match when any place the name may resolve
    to matches; an allow (`every`) must match wherever it resolves."""
    schema, _, bare = table.rpartition(".")
    if bare == "*":  # every table of a schema (GRANT … ON ALL TABLES IN SCHEMA s)
        return _schema_covered(patterns, schema, every)
    if glob_any(patterns, (bare,) if schema else (table,)):
        return True
    if schema:
        return glob_any(patterns, (table,))
    schemas = cmd.schemas
    if schemas is None:  # search_path unknown: the table may be in any schema
        if every:
            return glob_any(patterns, ("\0." + bare,))  # only `*.name` covers it
        return glob_any([p.rpartition(".")[2] for p in patterns], (bare,))
    if bare.startswith("pg_"):  # pg_catalog is searched first: pg_class is its own
        schemas = ("pg_catalog", *schemas)
    qualified = [glob_any(patterns, (f"{s}.{bare}",)) for s in schemas]
    if every:
        return all(qualified)
    return any(qualified) or glob_any(patterns, [f"{s}.{bare}" for s in cmd.also_schemas])


def _schema_covered(patterns: Sequence[str], schema: str, every: bool) -> bool:
    """Every table of `schema`: an allow must name them all (`schema.*`, `*`); a
    restrictive rule matches when it names any table that may be there."""
    if every:
        return glob_any(patterns, (f"{schema}.\0",))  # `schema.*`, `*.*`, `*`
    for p in patterns:
        p_schema, dot, _ = p.rpartition(".")
        if not dot or _glob(p_schema).match(schema):
            return True
    return False


def _identity_matches(m: Match, who: Identity, connector: str) -> bool:
    if m.issuers and not glob_any(m.issuers, (who.issuer,)):
        return False
    if m.subjects and not glob_any(m.subjects, (who.subject,)):
        return False
    if m.groups and not glob_any(m.groups, who.groups):
        return False
    return not (m.connectors and not glob_any(m.connectors, (connector,)))


def _kind_names(kind: str) -> tuple[str, ...]:
    """A specific kind (drop_table) is also its generic verb (drop)."""
    head = kind.split("_", 1)[0]
    return (kind, head) if head != kind else (kind,)


# Kinds that only wrap the statement they run: an allow covering what runs inside
# covers them too (explain analyze select … is allowed where select is).
WRAPPER_KINDS = frozenset({"explain", "prepare", "execute", "declare"})


def _kind_items(kinds: frozenset[str]) -> list[tuple[str, ...]]:
    """Kinds to cover: a generic verb present with its specific kind goes with it."""
    heads = {k.split("_", 1)[0] for k in kinds if "_" in k}
    inner = kinds - WRAPPER_KINDS
    if inner:
        heads |= WRAPPER_KINDS
    return [_kind_names(k) for k in kinds if k not in heads]


def _covered(patterns: Sequence[str], items: Iterable[tuple[str, ...]], every: bool) -> bool:
    """Each item is a tuple of names it goes by; any/every item must match a glob."""
    hits = (glob_any(patterns, names) for names in items)
    return all(hits) if every else any(hits)


def _sql_matches(s: SqlMatch, cmd: Command, every: bool) -> bool:
    """`every`: an allow must cover all of a statement's kinds, tables and functions,
    or `with d as (delete …) select …` would pass an allow on select."""
    if cmd.protocol != "postgres":
        return False
    if s.statements and not _covered(s.statements, _kind_items(cmd.kinds), every):
        return False
    if s.tables:
        hits = (_table_covered(s.tables, t, every, cmd) for t in cmd.tables)
        if not (all(hits) if every else any(hits)):
            return False
    called = cmd.functions if every else cmd.functions | cmd.maybe_functions
    fn_names = ((f, f.rsplit(".", 1)[-1]) for f in called)
    return not (s.functions and not _covered(s.functions, fn_names, every))


@lru_cache(maxsize=4096)
def _glob_exact(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


def _shell_matches(patterns: Sequence[str], opaque: bool, cmd: Command, every: bool) -> bool:
    """`commands` globs against a shell line (hoopy.shell): each normalised simple
    command and the whole line.  An allow (`every`) must cover every simple command
    (the whole line alone would let `ls *` cover `ls; rm -rf /`), case-sensitively
    (`LS` is another program); deny and approval rules match any simple command or the
    whole line, ignoring case.  `opaque: true` narrows a restrictive rule to lines hoopy
    cannot read; on an allow it is the permission to run them (see _covers_opaque)."""
    if opaque and not every and not cmd.opaque:
        return False
    if not patterns:
        return True
    if not (cmd.commands or cmd.command_line):  # not a command line (`get pods`): no match
        return False
    # `rm *` also names a bare `rm` (xargs rm): each command is tried with a space added
    if every:
        compiled = [_glob_exact(p) for p in patterns]
        items = cmd.commands or (cmd.command_line,)
        return all(any(c.match(v) or c.match(v + " ") for c in compiled) for v in items)
    return glob_any(patterns, (*cmd.commands, *(c + " " for c in cmd.commands), cmd.command_line))


def _ssh_matches(s: SshMatch, cmd: Command, every: bool = False) -> bool:
    if cmd.protocol != "ssh":
        return False
    if FORWARD in cmd.kinds:
        return _forward_matches(s, cmd, every)
    if s.forward:
        return False  # a rule about forwarding says nothing about commands
    if SHELL_SESSION in cmd.kinds:  # an allow must say `shell: true`; `ssh: {}` denies all
        return s.shell or (not every and not (s.commands or s.opaque or s.sftp or s.paths))
    if s.shell and not (s.commands or s.opaque or s.sftp or s.paths):
        return False  # `shell: true` alone is about opening shells, not the lines run
    ops = [k[5:] for k in cmd.kinds if k.startswith("sftp_")]
    if ops or s.sftp or s.paths:
        return _sftp_matches(s, cmd, ops, every)
    return _shell_matches(s.commands, s.opaque, cmd, every)


def _sftp_matches(s: SshMatch, cmd: Command, ops: list[str], every: bool) -> bool:
    """`sftp` (operations) and `paths` (globs) against an SFTP operation.  Only a rule
    naming `sftp` operations allows any (SFTP is off unless a policy turns it on), and it
    must cover each operation and every path (a rename's source and target, a symlink's
    target, the path as written and as the backend resolves it); deny and approval
    rules match any.  A rule about `commands` alone says nothing about SFTP, nor a rule
    about SFTP about command lines; `ssh: {}` with neither still matches everything."""
    if not ops:  # an exec or shell line
        return bool(s.commands) and _shell_matches(s.commands, s.opaque, cmd, every)
    if not (s.sftp or s.paths):  # `opaque: true` narrows a rule to unreadable lines
        return not s.commands and not s.opaque and not every
    if every and not s.sftp:
        return False
    if s.sftp and not _covered(s.sftp, [(op,) for op in ops], every):
        return False
    return not (s.paths and not _covered(s.paths, [(p,) for p in cmd.paths], every))


def _forward_matches(s: SshMatch, cmd: Command, every: bool) -> bool:
    """`forward` patterns against a direct-tcpip destination.  Only a rule naming it
    allows one, and an allow must match the destination as named; deny and approval
    rules match it or any other name of the same place (netdest aliases).  A rule about
    commands, SFTP or shells says nothing about forwarding; `ssh: {}` matches it."""
    if not s.forward:
        return not every and not (s.commands or s.opaque or s.sftp or s.paths or s.shell)
    return any(netdest.matches(s.forward, f) for f in (cmd.forward[:1] if every else cmd.forward))


def _kube_matches(k: KubeMatch, cmd: Command, every: bool = False) -> bool:
    if cmd.protocol != "kubernetes":
        return False
    checks = (
        (k.verbs, cmd.verb),
        (k.resources, cmd.resource),
        (k.namespaces, cmd.namespace),
        (() if cmd.generated_name else k.names, cmd.name),
    )
    if not all(not pats or glob_any(pats, (val,)) for pats, val in checks):
        return False
    if k.ports and not _ports_match(k.ports, cmd, every):
        return False
    if k.names and cmd.generated_name and not generated_name_matches(k.names, cmd.name, every):
        return False
    return _shell_matches(k.commands, k.opaque, cmd, every)


def _ports_match(ranges: tuple[tuple[int, int], ...], cmd: Command, every: bool) -> bool:
    """An allow must cover every port a forward opens, a restrictive rule any of them.
    A port-forward connection itself carries no port (kubectl names each stream's port
    inside the tunnel): an allow naming ports admits the connection, and each stream is
    then judged on its own port; restrictive rules wait for the streams."""
    if not cmd.ports:
        return every and cmd.resource == "pods/portforward"
    hits = [any(lo <= p <= hi for lo, hi in ranges) for p in cmd.ports]
    return all(hits) if every else any(hits)


def rule_matches(rule: Rule, who: Identity, cmd: Command) -> bool:
    """Restrictive rules (deny, approval, mask) match when any part of a command
    matches; permissive ones (allow) only when every part does."""
    m = rule.match
    if not _identity_matches(m, who, cmd.connector):
        return False
    if m.sql is not None and not _sql_matches(m.sql, cmd, every=rule.effect == "allow"):
        return False
    every = rule.effect == "allow"
    if m.ssh is None and every and not cmd.kinds.isdisjoint(_OPT_IN_KINDS):
        return False  # shells and forwarding are off unless a rule names them under `ssh`
    if m.ssh is not None and not _ssh_matches(m.ssh, cmd, every):
        return False
    if every and cmd.ports and (m.kubernetes is None or not m.kubernetes.ports):
        return False  # a forwarded port is allowed only by a rule that names it
    return not (m.kubernetes is not None and not _kube_matches(m.kubernetes, cmd, every))


_OPT_IN_KINDS = frozenset({SHELL_SESSION, FORWARD})


def _covers_opaque(rule: Rule, cmd: Command) -> bool:
    """An allow covers opaque code only if it names every opaque kind exactly."""
    if not cmd.opaque:
        return True
    if cmd.protocol in ("ssh", "kubernetes"):  # shell lines: `opaque: true` names them all
        shell = rule.match.ssh if cmd.protocol == "ssh" else rule.match.kubernetes
        return shell is not None and shell.opaque
    sql = rule.match.sql
    if sql is None:
        return False
    named = {s.lower() for s in sql.statements}
    return cmd.opaque <= named


def admits(policies: Sequence[PolicySet], who: Identity, connector: str) -> bool:
    """May this identity open a session on this connector at all?

    True when some enforcing allow rule could apply to this identity and
    connector (its command matchers are not considered yet), or a
    require_approval rule that names who it is for (subjects or groups) and the
    connectors it is about: an approval rule about commands alone admits nobody, and
    one about a group's commands anywhere does not open every connector to it.
    """
    for ps in policies:
        if ps.mode != "enforce":
            continue
        for rule in ps.rules:
            m = rule.match
            scoped = bool(m.subjects or m.groups) and bool(m.connectors)
            if (rule.effect == "allow" or (rule.effect == "require_approval" and scoped)) and (
                _identity_matches(m, who, connector)
            ):
                return True
    return False


def may_mask(policies: Sequence[PolicySet], who: Identity, connector: str) -> bool:
    """Could any mask rule apply to this identity's commands on this connector?  Sessions
    where none can skip the per-message bookkeeping masking needs."""
    return any(
        rule.effect == "mask" and _identity_matches(rule.match, who, connector)
        for ps in policies
        for rule in ps.rules
    )


def may_sftp(policies: Sequence[PolicySet], who: Identity, connector: str) -> bool:
    """Could some enforcing allow rule let this identity do an SFTP operation on this
    connector?  Only then is the `sftp` subsystem opened (each operation is checked)."""
    return any(
        rule.effect == "allow"
        and rule.match.ssh is not None
        and bool(rule.match.ssh.sftp)
        and _identity_matches(rule.match, who, connector)
        for ps in policies
        if ps.mode == "enforce"
        for rule in ps.rules
    )


def identity_masks(policies: Sequence[PolicySet], who: Identity, connector: str) -> Masks:
    """Every mask rule that could apply to this identity on this connector, whatever the
    command: for results whose statement hoopy cannot see (a cursor's FETCH)."""
    return _merge_masks(
        [
            rule
            for ps in policies
            for rule in ps.rules
            if rule.effect == "mask" and _identity_matches(rule.match, who, connector)
        ]
    )


def decide(policies: Sequence[PolicySet], who: Identity, cmd: Command) -> Decision:
    """The one decision function every protocol shares."""
    deny: Rule | None = None
    approve: Rule | None = None
    allow: Rule | None = None
    shadow: list[str] = []
    mask_rules: list[Rule] = []
    for ps in policies:
        for rule in ps.rules:
            if not rule_matches(rule, who, cmd):
                continue
            if rule.effect == "mask":
                mask_rules.append(rule)
            elif ps.mode == "shadow":
                if rule.effect in ("deny", "require_approval"):
                    shadow.append(rule.name)
            elif rule.effect == "deny":
                deny = deny or rule
            elif rule.effect == "require_approval":
                approve = approve or rule
            elif rule.effect == "allow" and allow is None and _covers_opaque(rule, cmd):
                allow = allow or rule
    masks = _merge_masks(mask_rules)
    sh = tuple(shadow)
    if deny is not None:
        return Decision("deny", deny.name, deny.reason, masks=masks, shadow=sh)
    if approve is not None:
        if cmd.opaque and not _covers_opaque(approve, cmd) and allow is None:
            return Decision("deny", "", _opaque_reason(cmd), masks=masks, shadow=sh)
        return Decision(
            "require_approval",
            approve.name,
            approve.reason,
            approvers=approve.approvers,
            timeout=approve.timeout,
            reuse_for=approve.reuse_for,
            masks=masks,
            shadow=sh,
        )
    if allow is not None:
        return Decision("allow", allow.name, allow.reason, masks=masks, shadow=sh)
    if cmd.opaque:
        return Decision("deny", "", _opaque_reason(cmd), masks=masks, shadow=sh)
    return Decision("deny", "", NO_ALLOW.reason, masks=masks, shadow=sh)


# What each opaque kind does that no table or function rule can see (the default: code
# whose effect cannot be checked statically, as DO and function bodies).
_OPAQUE_WHAT = {
    "read_statistics": "reads planner statistics, which hold other tables' values",
    "read_activity": "reads other sessions' activity (their live SQL)",
    "signal_backend": "signals other sessions' backends (all agents share one role)",
    "create_extension": "runs an extension's install or update script",
    "shell_unparseable": "a shell line hoopy cannot parse the way bash would (or too big)",
    "shell_dynamic": "runs a program or code known only when the line runs",
    "shell_code": "runs code hoopy cannot see (a script, a pipe or option fed to an "
    "interpreter, a file run by path, an environment that loads code)",
    "shell_alias": "renames commands (alias, hash -p, key bindings) or uses history expansion",
    "shell_attach": "sends input to a process already running in the pod (kubectl attach -i)",
}


def _opaque_reason(cmd: Command) -> str:
    kinds = sorted(cmd.opaque)
    what = "; ".join(
        dict.fromkeys(
            _OPAQUE_WHAT.get(k, "code whose effect cannot be checked statically") for k in kinds
        )
    )
    if cmd.protocol in ("ssh", "kubernetes"):
        key = "ssh" if cmd.protocol == "ssh" else "kubernetes"
        return f"{', '.join(kinds)}: {what}: it needs an allow rule with {key}: {{opaque: true}}"
    return f"{', '.join(kinds)}: {what}: it needs an allow rule naming it in sql.statements"


def _merge_masks(rules: Sequence[Rule]) -> Masks:
    if not rules:
        return Masks()
    return Masks(tuple(MaskRule(r.name, r.columns, r.detectors, r.style) for r in rules))
