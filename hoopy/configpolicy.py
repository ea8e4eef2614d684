"""policies/<name>.yaml → PolicySet: rules, their match sections (sql, ssh,
kubernetes), approvals and masks.

Separate from hoopy.config (hoopy.yaml and connectors/) because it is its own
vocabulary, checked against the policy engine's (hoopy.policy) and the SQL
classifier's names.  Problems are collected as file:line like the rest of the loader.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from yaml.nodes import Node, ScalarNode, SequenceNode

from hoopy import netdest
from hoopy.policy import (
    SFTP_OPS,
    Effect,
    KubeMatch,
    Match,
    PolicySet,
    Rule,
    SqlMatch,
    SshMatch,
    glob_any,
)
from hoopy.yamlsrc import (
    Doc,
    Section,
    Tree,
    compose,
    is_null,
    line_of,
    suggest,
    yaml_files,
)

EFFECTS: tuple[Effect, ...] = ("allow", "deny", "require_approval", "mask")
_EFFECTS: dict[str, Effect] = {e: e for e in EFFECTS}
DETECTORS = (
    "email", "credit_card", "ssn", "phone", "iban", "ipv4", "ipv6", "jwt", "aws_access_key",
    "private_key", "api_key",
)  # fmt: skip
MASK_STYLES = ("redact", "partial", "hash")
_RULE_KEYS = (
    "name", "effect", "reason", "match", "approvers", "timeout", "grant", "columns",
    "detectors", "style",
)  # fmt: skip
_EFFECT_ONLY = {  # keys that only make sense for one effect
    "approvers": "require_approval", "timeout": "require_approval", "grant": "require_approval",
    "columns": "mask", "detectors": "mask", "style": "mask",
}  # fmt: skip
_MATCH_KEYS = ("subjects", "issuers", "groups", "connectors", "sql", "ssh", "kubernetes")
_SQL_KEYS = ("statements", "tables", "functions")
_KUBE_KEYS = ("verbs", "resources", "namespaces", "names", "commands")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class PolicyRefs:
    """What rules are checked against, across all policy files."""

    connectors: set[str]
    approver_groups: set[str] | None  # None: no Slack, approvals come from the CLI/API
    rule_sources: dict[str, str] = field(default_factory=dict)  # rule name -> file:line
    issuers: int = 0  # token issuers configured (the dev issuer counts)


def load_policies(ld: Tree, folder: Path, refs: PolicyRefs) -> tuple[PolicySet, ...]:
    sets = (_policy_set(ld, path, refs) for path in yaml_files(folder))
    return tuple(s for s in sets if s is not None)


def _policy_set(ld: Tree, path: Path, refs: PolicyRefs) -> PolicySet | None:
    doc = ld.doc(path)
    node = compose(path, doc)
    sec = Section.of(doc, node, ("mode", "rules")) if node is not None else None
    if sec is None:
        return None
    mode: Literal["enforce", "shadow"] = (
        "shadow" if sec.choice("mode", ("enforce", "shadow")) == "shadow" else "enforce"
    )
    rules_node = sec.get("rules")
    rules: list[Rule] = []
    if rules_node is None:
        sec.missing("rules")
    elif not isinstance(rules_node, SequenceNode):
        sec.error("rules", "expected a list of rules")
    else:
        for item in rules_node.value:
            rule = _rule(doc, item, refs, ld.relname(path))
            if rule is not None:
                rules.append(rule)
    return PolicySet(path.stem, tuple(rules), mode, ld.relname(path))


def _rule(doc: Doc, node: Node, refs: PolicyRefs, rel: str) -> Rule | None:
    sec = Section.of(doc, node, _RULE_KEYS, "rule")
    if sec is None:
        return None
    source = f"{rel}:{line_of(node)}"
    name = sec.text("name", required=True)
    if name is not None and name in refs.rule_sources:
        sec.error("name", f"rule name '{name}' is already used at {refs.rule_sources[name]}")
    elif name is not None:
        refs.rule_sources[name] = source
    effect = sec.choice("effect", EFFECTS)
    if effect is None and not sec.has("effect"):
        sec.missing("effect")
    for key, only in _EFFECT_ONLY.items():
        if sec.has(key) and effect is not None and effect != only:
            sec.error(key, f"only applies to effect {only}")
    reason = sec.text("reason", "") or ""
    effect_ = _EFFECTS.get(effect or "", "deny")
    rule = Rule(name or "", effect_, _match(sec, refs), reason, source=source)
    if effect == "require_approval":
        rule = _with_approval(sec, refs, rule)
    elif effect == "mask":
        rule = _with_masks(sec, rule)
    return rule if name and effect else None


def _with_approval(sec: Section, refs: PolicyRefs, rule: Rule) -> Rule:
    approvers = sec.string_items("approvers")
    if not approvers:
        sec.missing("approvers")
    for group, node in approvers:
        known = refs.approver_groups
        if known is not None and group not in known:
            msg = f"approvers: group '{group}' is not in slack.approvers{suggest(group, known)}"
            sec.doc.error(node, msg)
    grant = sec.section("grant", ("reuse_for",))
    return replace(
        rule,
        approvers=tuple(g for g, _ in approvers),
        timeout=sec.duration("timeout", 600.0),
        reuse_for=grant.duration("reuse_for", 0.0, zero_ok=True) if grant else 0.0,
    )


def _with_masks(sec: Section, rule: Rule) -> Rule:
    detectors = sec.string_items("detectors")
    for value, node in detectors:
        if value not in DETECTORS:
            sec.doc.error(node, f"detectors: unknown detector '{value}'{suggest(value, DETECTORS)}")
    columns = sec.strings("columns")
    if not columns and not detectors:
        sec.doc.error(sec.node, "a mask rule needs columns or detectors")
    return replace(
        rule,
        columns=columns,
        detectors=tuple(v for v, _ in detectors if v in DETECTORS),
        style=sec.choice("style", MASK_STYLES, "redact") or "redact",
    )


def _match(rule: Section, refs: PolicyRefs) -> Match:
    m = rule.section("match", _MATCH_KEYS)
    if m is None:
        return Match()
    connectors = _match_items(m, "connectors")
    for value, node in connectors:
        if not (_GLOB_CHARS & set(value)) and value not in refs.connectors:
            hint = suggest(value, refs.connectors)
            m.doc.error(node, f"match.connectors: no connector named '{value}'{hint}")
    sql = _sql_match(m)
    subjects, issuers = _match_strings(m, "subjects"), _match_strings(m, "issuers")
    if subjects and not issuers and refs.issuers > 1:
        m.error(
            "subjects",
            f"{refs.issuers} token issuers are configured and a subject is only unique "
            "within its issuer: add match.issuers to say whose subjects these are",
        )
    ssh = m.section("ssh", ("commands", "opaque", "sftp", "paths", "shell", "forward"))
    kube = m.section("kubernetes", (*_KUBE_KEYS, "opaque", "ports"))
    return Match(
        subjects=subjects,
        issuers=issuers,
        groups=_match_strings(m, "groups"),
        connectors=tuple(v for v, _ in connectors),
        sql=sql,
        ssh=_ssh_match(ssh) if ssh else None,
        kubernetes=_kube_match(kube) if kube else None,
    )


def _ssh_match(ssh: Section) -> SshMatch:
    sftp = _match_items(ssh, "sftp")
    for value, node in sftp:
        if not (_GLOB_CHARS & set(value)) and value not in SFTP_OPS:
            ssh.doc.error(node, f"ssh.sftp: unknown operation '{value}'{suggest(value, SFTP_OPS)}")
    return SshMatch(
        _match_strings(ssh, "commands"),
        _opaque(ssh),
        sftp=tuple(v for v, _ in sftp),
        paths=_match_strings(ssh, "paths"),
        shell=ssh.boolean("shell", False),
        forward=_forward_patterns(ssh),
    )


def _forward_patterns(ssh: Section) -> tuple[str, ...]:
    """`ssh.forward`: direct-tcpip destinations (`host:port` patterns, hoopy.netdest).
    A forward is not a command line: the key stands alone."""
    items = _match_items(ssh, "forward")
    others = [k for k in ("commands", "opaque", "sftp", "paths", "shell") if ssh.has(k)]
    if items and others:
        ssh.error("forward", f"cannot be combined with {', '.join(others)}: use another rule")
    for value, node in items:
        try:
            netdest.pattern(value)
        except ValueError as e:
            ssh.doc.error(node, f"ssh.forward: '{value}': {e}")
    return tuple(v for v, _ in items)


def _kube_match(kube: Section) -> KubeMatch:
    verbs, resources, namespaces, names, commands = (_match_strings(kube, k) for k in _KUBE_KEYS)
    ports = _ports(kube)
    if ports and resources and not glob_any(resources, ("pods/portforward",)):
        kube.error("ports", "ports only apply to pods/portforward, which resources leaves out")
    return KubeMatch(verbs, resources, namespaces, names, commands, _opaque(kube), ports)


def _ports(kube: Section) -> tuple[tuple[int, int], ...]:
    """`ports: [5432, "8000-8080"]` (pods/portforward): port numbers or inclusive ranges."""
    node = kube.values.get("ports")
    if node is None:
        return ()
    items = node.value if isinstance(node, SequenceNode) else [node]
    if not items or is_null(node):
        kube.error("ports", "empty, so it would match anything: name at least one port")
        return ()
    out: list[tuple[int, int]] = []
    for item in items:
        text = str(item.value) if isinstance(item, ScalarNode) else "a list or mapping"
        lo, dash, hi = text.partition("-")
        try:
            pair = (int(lo), int(hi) if dash else int(lo))
        except ValueError:
            pair = (0, 0)
        if not isinstance(item, ScalarNode) or not (1 <= pair[0] <= pair[1] <= 65535):
            kube.doc.error(
                item, f"kubernetes.ports: '{text[:40]}' is not a port (1-65535) or a range 'LO-HI'"
            )
            continue
        out.append(pair)
    return tuple(out)


def _opaque(sec: Section) -> bool:
    """`opaque: true` (ssh, kubernetes): shell lines hoopy cannot read (hoopy.shell)."""
    return sec.boolean("opaque", False)


def _sql_match(m: Section) -> SqlMatch | None:
    sql = m.section("sql", _SQL_KEYS)
    if sql is None:
        return None
    statements = _match_items(sql, "statements")
    for value, node in statements:
        problem = _statement_kind_problem(value)
        if problem:
            sql.doc.error(node, problem)
    return SqlMatch(
        tuple(v for v, _ in statements),
        _match_strings(sql, "tables"),
        _match_strings(sql, "functions"),
    )


def _match_items(sec: Section, key: str) -> list[tuple[str, Node]]:
    """A match field's strings.  An absent matcher means "any", so an empty list (or a
    key with no value) is a mistake: `tables: []` would silently match every table."""
    node = sec.values.get(key)
    if node is not None and (is_null(node) or (isinstance(node, SequenceNode) and not node.value)):
        sec.error(key, "empty, so it would match anything: name at least one, or remove the key")
    return sec.string_items(key)


def _match_strings(sec: Section, key: str) -> tuple[str, ...]:
    return tuple(v for v, _ in _match_items(sec, key))


@functools.cache
def _statement_kinds() -> tuple[frozenset[str], frozenset[str]]:
    """Every name a statement kind goes by (kinds and their verbs: `drop` covers
    `drop_table`), and the verbs a `verb_object` kind may start with."""
    from hoopy.protocols.postgres import classkinds as c
    from hoopy.protocols.postgres.pgquery import OBJECT_TYPES

    # The classifier's own list (one list: a kind it emits is a kind a rule may name).
    kinds = set(c.STATEMENT_KINDS)
    kinds |= {c.object_kind(v, o) for v in c.OBJECT_KIND_VERBS for o in OBJECT_TYPES}
    verbs = {k for k in kinds if "_" not in k}
    return frozenset(kinds | {k.split("_", 1)[0] for k in kinds}), frozenset(verbs)


def _statement_kind_problem(value: str) -> str | None:
    """What is wrong with a name (or glob) in `sql.statements`, or None."""
    names, verbs = _statement_kinds()
    kind = value.lower()  # policy matches kinds case-insensitively
    verb, _, obj = kind.partition("_")
    if kind in names or (obj and verb in verbs):  # verb_object: objects come from the tree
        return None
    if _GLOB_CHARS & set(kind):
        if any(fnmatch.fnmatchcase(n, kind) for n in names):
            return None
        return f"statement pattern '{value}' matches no statement kind"
    return f"unknown statement kind '{value}'{suggest(kind, names)}"
