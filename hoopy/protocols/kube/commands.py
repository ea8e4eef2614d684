"""What hoopy decides on for a Kubernetes request: its attributes (parsed, remembered),
the protocol-neutral `Command` the policy reads, and item-by-item visibility for lists
and watches that cross namespaces.  Pure functions of the request (and the session's
policy, for visibility), kept apart from the proxy's I/O."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from hoopy.policy import Command, Decision, PolicySet, decide
from hoopy.protocols.kube.podcmds import Site
from hoopy.protocols.kube.requestinfo import RequestInfo, go_bool, parse_query, request_info
from hoopy.session import Session
from hoopy.shell import on_a_terminal, opaque_kind, read_argv, shell_command

FILTER_KEYS = ("namespaces", "names")


def filters(session: Session, keys: tuple[str, ...] = FILTER_KEYS, masks: bool = False) -> bool:
    """Could a namespace or name rule hide some items of a list from this identity?
    (`masks`: could a mask rule with detectors scoped so mask some items, not others?)"""
    from hoopy.policy import _identity_matches  # the policy's own identity test

    for ps in session.policies:
        for rule in ps.rules:
            k = rule.match.kubernetes
            if (rule.effect == "mask") != masks or k is None:
                continue
            if masks and not rule.detectors:
                continue
            if any(getattr(k, f) for f in keys) and _identity_matches(
                rule.match, session.identity, session.connector
            ):
                return True
    return False


class Visibility:
    """Item by item: would the agent be allowed this verb on this item's namespace and
    name?  Items it would not (denied, or needing an approval) are dropped."""

    def __init__(self, session: Session, info: RequestInfo) -> None:
        self.session = session
        self.info = info
        self.cache: dict[tuple[str, str], Decision] = {}

    def visible(self, namespace: str, name: str) -> bool:
        return self.decision(namespace, name).outcome == "allow"

    def decision(self, namespace: str, name: str) -> Decision:
        """The policy's decision on this verb of the item (its masks included)."""
        hit = self.cache.get((namespace, name))
        if hit is None:
            i = self.info
            cmd = Command(
                "kubernetes",
                self.session.connector,
                text="",
                kinds=frozenset({i.verb}),
                verb=i.verb,
                resource=i.full_resource,
                namespace=namespace,
                name=name,
                fingerprint=f"k8s\0{i.verb}\0{i.full_resource}\0{namespace}\0{name}",
            )
            hit = self.session.decide(cmd)
            if len(self.cache) < 100_000:
                self.cache[(namespace, name)] = hit
        return hit


_PARSED: dict[tuple[str, str, str], tuple[dict[str, list[str]], RequestInfo]] = {}


def parsed(method: str, path: str, query: str) -> tuple[dict[str, list[str]], RequestInfo]:
    """parse_query + request_info, remembered (both are pure functions of their input;
    agents repeat the same few paths).  Rejections are not remembered: they raise."""
    key = (method, path, query)
    hit = _PARSED.get(key)
    if hit is None:
        q = parse_query(query)
        hit = (q, request_info(method, path, q))
        if len(_PARSED) >= 4096:
            _PARSED.clear()
        _PARSED[key] = hit
    return hit


_COMMANDS: dict[tuple[str, str, RequestInfo, str], Command] = {}


def cached_command(
    connector: str, info: RequestInfo, q: dict[str, list[str]], method: str, query: str
) -> Command:
    """command_for, remembered: it is a function of these (q is read from query)."""
    key = (connector, method, info, query)
    command = _COMMANDS.get(key)
    if command is None:
        command = command_for(connector, info, q, method)
        if len(_COMMANDS) >= 4096:
            _COMMANDS.clear()
        _COMMANDS[key] = command
    return command


def command_for(connector: str, info: RequestInfo, q: dict[str, list[str]], method: str) -> Command:
    where = f"{info.namespace}/{info.name}" if info.namespace else info.name
    text = " ".join(x for x in (info.verb, info.full_resource, where) if x)
    base = f"k8s\0{info.verb}\0{info.full_resource}\0{info.namespace}\0{info.name}"
    if info.subresource == "attach":
        # no command: whatever runs reads the agent's input, if it sends any
        return Command(
            "kubernetes",
            connector,
            text=text + (" (stdin)" if go_bool(q.get("stdin")) else ""),
            kinds=frozenset({"exec"}),
            opaque=frozenset({"shell_attach"}) if go_bool(q.get("stdin")) else frozenset(),
            verb=info.verb,
            resource=info.full_resource,
            namespace=info.namespace,
            name=info.name,
            fingerprint=base + "\0attach\0" + str(go_bool(q.get("stdin"))),
        )
    if info.subresource == "exec":
        argv = q.get("command", [])
        reading = read_argv(argv)
        if go_bool(q.get("tty")) and go_bool(q.get("stdin")):
            # `exec -it pod -- less f`: a pager's `!` runs what is typed (as `ssh -t`)
            reading = on_a_terminal(reading)
        return shell_command(
            "kubernetes",
            connector,
            reading,
            text=f"{text} -- {reading.text}" if argv else text,
            verb=info.verb,
            resource=info.full_resource,
            namespace=info.namespace,
            name=info.name,
            fingerprint=base + "\0" + "\0".join(argv) + f"\0{reading.opaque}",
        )
    if info.subresource == "portforward":
        text += " ports " + ",".join(q.get("ports", []))
    return Command(
        "kubernetes",
        connector,
        text=text,
        kinds=frozenset({info.verb}),
        verb=info.verb,
        resource=info.full_resource,
        namespace=info.namespace,
        name=info.name,
        fingerprint=base,
    )


def generated(cmd: Command) -> Command:
    """A create named by generateName: its name is a prefix (policy.generated_name)."""
    return dataclasses.replace(
        cmd,
        text=cmd.text + "<5 random characters> (generateName)",
        fingerprint=cmd.fingerprint + "\0generateName",
        generated_name=True,
    )


# ---- commands a write carries (podcmds.py) --------------------------------------------

_RANK = {"allow": 0, "require_approval": 1, "deny": 2}
_SHOWN = 1000  # characters of each command shown in the recorded text


def _command_rules(session: Session) -> list[PolicySet]:
    """The deny and approval rules about commands (`commands` or `opaque`): those an
    exec of the same commands would meet, whatever resources they name."""
    out = []
    for ps in session.policies:
        rules = tuple(
            r
            for r in ps.rules
            if r.effect in ("deny", "require_approval")
            and r.match.kubernetes is not None
            and (r.match.kubernetes.commands or r.match.kubernetes.opaque)
        )
        if rules:
            out.append(dataclasses.replace(ps, rules=rules))
    return out


def _speaks_of_commands(session: Session) -> bool:
    """Whether any rule of the session's policies, of any effect, is about Kubernetes
    commands (`commands` or `opaque`)."""
    return any(
        r.match.kubernetes is not None
        and bool(r.match.kubernetes.commands or r.match.kubernetes.opaque)
        for ps in session.policies
        for r in ps.rules
    )


def judge_write(session: Session, base: Command, sites: list[Site]) -> tuple[Command, Decision]:
    """The decision on a write carrying commands, and the one Command recorded for it.
    The write itself is decided as before (its commands never help an allow: a rule
    allowing `ls` in exec does not allow creating a Deployment that runs `ls`); then
    each command twice: as part of this write (the write's verb, resource, namespace
    and name with the commands: an allow must cover them, opaque ones need `opaque:
    true`, deny and approval rules on them apply), and as the exec of it would be
    judged by the deny and approval rules about commands (`resources: [pods/exec]` and
    `commands: [rm *]` denies `rm` in a Deployment too).  The strictest wins; its
    reason names the container."""
    worst = session.decide(base)
    where = ""
    shadows = list(worst.shadow)  # (shadow-mode rules that would have blocked any part)
    exec_rules = _command_rules(session)
    # Opaque commands are refused to protect rules about commands: with none in the
    # policy there is nothing they could hide from (the image, chosen freely, runs
    # anything already), and routine manifests (`/app/server`, `python app.py`) pass.
    lenient = not _speaks_of_commands(session)
    pod = base.name if base.resource.split("/")[0] == "pods" else base.name + "-"
    for site in sites:
        r = site.reading
        key = base.fingerprint + "\0cmd\0" + _digest((r.text, *r.opaque))
        fields = dict(verb=base.verb, namespace=base.namespace, fingerprint=key)
        write = shell_command(
            "kubernetes",
            base.connector,
            r,
            resource=base.resource,
            name=base.name,
            generated_name=base.generated_name,
            **fields,
        )
        write = dataclasses.replace(write, kinds=base.kinds)
        if lenient:
            write = dataclasses.replace(write, opaque=frozenset())
        found = [session.decide(write)]
        if exec_rules:
            as_exec = shell_command(
                "kubernetes",
                base.connector,
                r,
                resource="pods/exec",
                name=pod,
                generated_name=base.generated_name or pod != base.name,
                **{**fields, "verb": "create"},
            )
            d = decide(exec_rules, session.identity, as_exec)
            if d.outcome == "require_approval" or (d.outcome == "deny" and d.rule):
                found.append(d)
        for d in found:
            shadows.extend(d.shadow)
            if _rank(d) > _rank(worst):
                worst, where = d, site.where
    shadow = tuple(dict.fromkeys(shadows))
    if where:
        reason = worst.reason or ("no policy rule allows this" if worst.outcome == "deny" else "")
        worst = dataclasses.replace(
            worst, reason=f"{reason} (in {where[:300]})", masks=session.decide(base).masks
        )
    worst = dataclasses.replace(worst, shadow=shadow)
    shown = "; ".join(f"{s.where}: {_cut((s.shown or s.reading).text)}" for s in sites[:50])
    if len(sites) > 50:
        shown += f"; … {len(sites) - 50} more"
    opaque = frozenset(opaque_kind(w) for s in sites for w in s.reading.opaque)
    record = dataclasses.replace(
        base,
        text=f"{base.text} -- {shown}",
        commands=tuple(
            dict.fromkeys(c.line for s in sites for c in (s.shown or s.reading).commands)
        ),
        opaque=base.opaque | opaque,
        fingerprint=base.fingerprint
        + "\0cmds\0"
        + _digest(f"{s.where}\0{s.reading.text}" for s in sites),
    )
    return record, worst


def _rank(d: Decision) -> tuple[int, bool]:
    """Stricter first; of two denials, the one a rule made (it names what to fix)."""
    return _RANK[d.outcome], bool(d.rule)


def _digest(parts: Iterable[str]) -> str:
    """A fingerprint's part for commands (kept in the approvals store: an env value
    `$(VAR)` put into a command is not to be kept there)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
