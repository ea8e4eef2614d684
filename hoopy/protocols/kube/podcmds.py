"""The commands a Kubernetes write would have the cluster run (sans-I/O: a body in,
shell readings out).

Why: `kubectl exec -- rm …` is judged by the shell classifier, and the same program
can run without exec: a Pod, an ephemeral container (`kubectl debug`), or any pod
template (Deployment, Job, CronJob …) whose containers carry `command`/`args`,
lifecycle hooks or exec probes.  Each such place is a `Site` here; commands.py's
`judge_write` decides the write on them as exec commands are decided.

Containers are found wherever a `containers`, `initContainers` or
`ephemeralContainers` list is, whatever the kind (custom resources carry pod specs
too).  `command` + `args` are an argv run without a shell (a shell only when the argv
is one: `sh -c '…'`).  No command and no args: the image's own entrypoint runs, which
is nothing hoopy can judge.  A create or update (PUT) holds whole containers; a patch
or a server-side apply may hold parts of one, merged with what the object already
has: what cannot be resolved from the body alone is opaque (fail closed).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from hoopy.protocols.kube import podproto
from hoopy.protocols.kube.bodies import PROTOBUF_MAGIC, BodyError, _decode
from hoopy.shell import ShellReading, read_argv
from hoopy.shellwords import plain

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
MAX_SITES = 1000
# Resources whose objects hold pod specs (podproto.py reads their protobuf bodies)
POD_RESOURCES = frozenset(
    {
        "pods",
        "deployments",
        "statefulsets",
        "daemonsets",
        "replicasets",
        "replicationcontrollers",
        "jobs",
        "cronjobs",
        "podtemplates",
    }
)
# JSON patch paths through these segments can reach a container's command.
_POD_SEGMENTS = frozenset(
    {
        "",
        "spec",
        "template",
        "jobTemplate",
        *CONTAINER_LISTS,
        "command",
        "args",
        "exec",
        "lifecycle",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "postStart",
        "preStop",
    }
)
_ARGV_KEYS = ("command", "args")
_DIRECTIVE = re.compile(r"command|args|retainKeys", re.IGNORECASE)
_HALF = "unparseable: a patch sets a command ending in an option, not its args"
_REF = re.compile(r"\$(\$|\(([^)]*)\)|\(|.?)", re.DOTALL)
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*\Z")  # what an env name may be


@dataclass(frozen=True)
class Site:
    """One command a write carries: where (a path in the body, the container's name)
    and its reading."""

    where: str
    reading: ShellReading
    # What the recording shows: the words as written when `$(VAR)` put an env value
    # into them (env values are not recorded; the decision is on the expanded words)
    shown: ShellReading | None = None
    # A patch's container that sets its command and not its args (or the reverse):
    # what the object already has completes it (resolve()); until then it is judged
    # on the patch's words
    need: Need | None = None


@dataclass(frozen=True)
class Need:
    keys: tuple[str | int, ...]  # where the container list is (indices as ints)
    key: str | int  # the container's name (strategic merge, apply) or index (JSON patch)
    fragment: dict[str, Any]  # what the patch gives of it
    label: str


def write_sites(
    content_type: str, body: bytes, method: str, resource: str, subresource: str = ""
) -> list[Site]:
    """Every command the body would have the cluster run.  BodyError if unreadable."""
    if not body:
        return []
    if "protobuf" in content_type or body.startswith(PROTOBUF_MAGIC):
        if resource not in POD_RESOURCES or subresource not in ("", "ephemeralcontainers"):
            return []
        value: Any = podproto.decode(resource, body)
    else:
        value = _decode(content_type, body)
    # A JSON merge patch replaces lists whole: its containers are whole, as a create's.
    # A strategic merge patch and a server-side apply merge containers by name, and a
    # JSON patch can write into one: those give parts of containers.
    patch = method == "PATCH"
    merge = "merge-patch" in content_type and "strategic" not in content_type
    finder = _Finder(patch and not merge)
    try:
        if isinstance(value, list) and patch:
            finder.json_patch(value)
        else:
            finder.walk(value, "")
    except RecursionError:
        raise BodyError("the request body is nested too deeply") from None
    if len(finder.sites) > MAX_SITES:  # (each is read and decided: a bound on the work)
        raise BodyError(f"the request body carries over {MAX_SITES} container commands")
    return finder.sites


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


class _Finder:
    def __init__(self, partial: bool) -> None:
        self.partial = partial
        self.by_index = False  # (a JSON patch names containers by index, not by name)
        self.keys: tuple[str | int, ...] = ()  # the container's place (walk)
        self.sites: list[Site] = []

    def opaque(self, where: str, text: str, why: str) -> None:
        self.sites.append(Site(where, ShellReading(text, (), (why,))))

    # ---- JSON patch: each op's value, put back where its path says --------------
    def json_patch(self, ops: list[Any]) -> None:
        for i, op in enumerate(ops):
            if not isinstance(op, dict):
                continue
            kind, path = op.get("op"), op.get("path")
            if not isinstance(path, str) or not isinstance(kind, str):
                continue
            segs = [_unescape(s) for s in path.split("/")[1:]] if path else []
            where = f"JSON patch op {i} ({kind} {path[:200]})"
            kind = kind.lower()
            if kind == "test":
                continue
            touches = any(s in _POD_SEGMENTS for s in segs) or not segs
            if kind in ("copy", "move"):
                if touches:  # the value comes from the object: nothing to read here
                    self.opaque(where, where, f"unparseable: a JSON patch {kind} into {path!r}")
                continue
            if kind == "remove":
                # removing a command makes the args the argv; removing a word shifts it
                if any(s in _ARGV_KEYS for s in segs):
                    self.opaque(where, where, f"unparseable: a JSON patch removes {path!r}")
                continue
            if "value" not in op:
                continue
            # a word of a command or args set alone: the rest is the object's
            for j, s in enumerate(segs[:-1]):
                if s in _ARGV_KEYS and j + 1 < len(segs):
                    words = [op["value"]] if isinstance(op["value"], str) else []
                    self.sites.append(
                        Site(
                            where,
                            _with(
                                read_argv(words) if words else None,
                                (f"unparseable: a JSON patch sets part of {s} ({path!r})"),
                            ),
                        )
                    )
                    break
            else:
                inside = any(s in CONTAINER_LISTS and len(segs) > j + 2 for j, s in enumerate(segs))
                skeleton = _skeleton(segs, op["value"])
                if skeleton is None:
                    self.opaque(where, where, f"unparseable: a JSON patch index in {path!r}")
                    continue
                held, self.partial, self.by_index = self.partial, inside, True
                try:
                    self.walk(skeleton, "")
                finally:
                    self.partial, self.by_index = held, False

    # ---- objects and patches ---------------------------------------------------
    def walk(self, v: Any, path: str, keys: tuple[str | int, ...] = ()) -> None:
        if isinstance(v, dict):
            for k, child in v.items():
                at = f"{path}.{k}" if path else str(k)
                if k in CONTAINER_LISTS and isinstance(child, list):
                    for i, c in enumerate(child):
                        if isinstance(c, dict):
                            self.keys = (*keys, k, i)
                            self.container(c, f"{at}[{i}]", k == "ephemeralContainers")
                elif isinstance(child, (dict, list)):
                    self.walk(child, at, (*keys, k))
        elif isinstance(v, list):
            for i, child in enumerate(v):
                self.walk(child, f"{path}[{i}]", (*keys, i))

    def container(self, c: dict[str, Any], at: str, ephemeral: bool = False) -> None:
        name = c.get("name")
        label = f"{at} ({name})" if isinstance(name, str) and name else at
        # an ephemeral container is never changed once added (`kubectl debug` adds a
        # new one): what a patch gives of it is the whole of it
        partial = self.partial and not ephemeral
        env = _Env(c, partial)
        for k in c:
            # (`$retainKeys` drops what it does not name: the command, and the args that
            # were its arguments become the argv; `$setElementOrder/env` is kubectl's own)
            if isinstance(k, str) and k.startswith("$") and _DIRECTIVE.search(k):
                self.opaque(label, label, f"unparseable: patch directive {k[:60]!r}")
        self.argv(c, label, env, partial)
        self.hooks(c, label, env, depth=0)

    def argv(self, c: dict[str, Any], label: str, env: _Env, partial: bool) -> None:
        has_cmd, has_args = "command" in c, "args" in c
        cmd, args = c.get("command"), c.get("args")
        if cmd is None and args is None:
            if partial and has_cmd and not has_args:
                # the command is removed: the args already there become the argv
                self.opaque(label, label, "unparseable: a patch removes a container's command")
            return
        words = _words(cmd), _words(args)
        if words[0] is False or words[1] is False:
            self.opaque(label, label, "unparseable: command or args is not a list of strings")
            return
        command = words[0] if isinstance(words[0], list) else []
        arguments = words[1] if isinstance(words[1], list) else []
        written = [*command, *arguments]
        argv, why = env.expand(written)
        read = read_argv if command else _args_only
        shown = read(written) if argv != written else None
        if command:
            reading = read_argv(argv)
            if partial and not has_args and command[-1].startswith("-"):
                # the object's own args follow it, as the operand of that option (its
                # code, for `sh -c`): judged on the patch's words, that is unknown
                why = why or _HALF
        else:
            reading = _args_only(argv)
        need = None
        if partial and ((command and not has_args) or (arguments and not has_cmd)):
            key: str | int | None = self.keys[-1] if self.by_index else c.get("name")
            if isinstance(key, (str, int)) and self.keys:
                need = Need(self.keys[:-1], key, c, label)
        self.sites.append(Site(f"{label} command", _with(reading, why), shown, need))

    def hooks(self, v: Any, label: str, env: _Env, depth: int, path: str = "") -> None:
        """Lifecycle hooks' and exec probes' `exec.command` (argv, no shell)."""
        if depth > 8 or not isinstance(v, dict):
            return
        for k, child in v.items():
            if k in ("command", "args", "env", "envFrom") and depth == 0:
                continue
            at = f"{path}.{k}" if path else str(k)
            if k == "exec" and isinstance(child, dict) and "command" in child:
                words = _words(child.get("command"))
                where = f"{label} {at}.command"
                if words is False:
                    self.opaque(where, where, "unparseable: exec.command is not a list of strings")
                elif isinstance(words, list) and words:  # (none, or removed: nothing runs)
                    argv, why = env.expand(words)
                    shown = read_argv(words) if argv != words else None
                    self.sites.append(Site(where, _with(read_argv(argv), why), shown))
            elif isinstance(child, dict):
                self.hooks(child, label, env, depth + 1, at)


def _skeleton(segs: list[str], value: Any) -> Any:
    """The object a JSON patch op's value would be part of: `/spec/containers/1` and a
    container give {"spec": {"containers": [None, container]}} (None: not written);
    None when an index is out of bounds for hoopy."""
    for s in reversed(segs):
        if s.isdigit():
            if len(s) > 4 or int(s) > MAX_SITES:
                return None
            value = [None] * int(s) + [value]
        else:
            value = [value] if s == "-" else {s: value}
    return value


def _words(v: Any) -> list[str] | bool | None:
    """A command/args value: its words, None when absent, False when not strings."""
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(w, str) for w in v):
        return False
    return list(v)


def _with(reading: ShellReading | None, why: str) -> ShellReading:
    if reading is None:
        return ShellReading("", (), (why,))
    return ShellReading(
        reading.text, reading.commands, (*reading.opaque, why) if why else reading.opaque
    )


def _args_only(argv: list[str]) -> ShellReading:
    """`args` without `command`: the image's entrypoint runs with them, or, in an image
    without one (busybox), they are the argv.  Read as the argv (args[0] by a path is
    then not opaque: it may well be the entrypoint's argument), plus, as an image whose
    entrypoint is a shell would run them (`sh -c` + args, `sh` + args), the commands of
    that code (only those: an argument is rarely valid code, and restrictive rules
    should still see `rm` in it)."""
    reading = read_argv(argv)
    why = _path_reason(argv[0]) if argv else ""
    opaque = list(reading.opaque)
    if why in opaque:
        opaque.remove(why)
    commands = reading.commands
    if argv:  # (ENTRYPOINT ["sh", "-c"], then ["sh"]: `args: [-c, code]`)
        for shell in (["sh", "-c"], ["sh"]):
            commands = (*commands, *read_argv([*shell, *argv]).commands[1:])
    return ShellReading(reading.text, commands, tuple(opaque))


def _path_reason(word: str) -> str:
    from hoopy.shell import program_name

    return program_name(plain(word))[1]


class _Env:
    """Kubernetes' `$(VAR)` expansion of command and args (`$$` is a `$`).  A reference
    to a name an env variable can have makes the command opaque: whatever this body
    says, `kubectl set env` (a write without a command), envFrom or a service link can
    set it later, and its value is spliced into the words as they are (into shell code,
    it can close a quote).  A value the container's literal `env` gives is put in for
    the decision all the same, so deny rules see the command it makes today; any other
    reference (`$(date +%s)`: no variable has that name) stays as written."""

    def __init__(self, c: dict[str, Any], partial: bool) -> None:
        self.values: dict[str, str] = {}
        env = c.get("env")
        for e in env if isinstance(env, list) else []:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                v = e.get("value")
                if isinstance(v, str) and "$" not in v and "valueFrom" not in e:
                    self.values[e["name"]] = v

    def expand(self, words: list[str]) -> tuple[list[str], str]:
        why: list[str] = []

        def one(m: re.Match[str]) -> str:
            if m.group(1) == "$":
                return "$"
            name = m.group(2)
            if name is None or not _ENV_NAME.match(name):
                return m.group(0)  # `$x`, `$(` unclosed, no variable's name: as written
            why.append(f"$({name}) is an environment variable's value")
            return self.values.get(name, m.group(0))

        out = [_REF.sub(one, w) if "$" in w else w for w in words]
        return out, f"program is not literal: {why[0]}" if why else ""


def resolve(sites: list[Site], current: dict[str, Any] | None) -> list[Site]:
    """`sites` with each patch's part of a container completed by the object the
    cluster has now (`current`; None when there is none: the patch makes it whole)."""
    out = []
    for site in sites:
        need = site.need
        if need is None:
            out.append(site)
            continue
        merged = dict(need.fragment)
        have = _container(current, need) if current is not None else None
        if have is not None:
            for k in ("command", "args", "env", "envFrom"):
                if k not in merged and k in have:
                    merged[k] = have[k]
        finder = _Finder(False)
        finder.argv(merged, need.label, _Env(merged, False), False)
        # the patch's own words are judged too: a directive (`$patch: replace`,
        # `$retainKeys`) can drop the object's half, and then they run alone
        own = site.reading
        for done in finder.sites:
            r = done.reading
            both = ShellReading(
                r.text,
                (*r.commands, *own.commands),
                (*r.opaque, *(w for w in own.opaque if w != _HALF)),
            )
            out.append(dataclasses.replace(done, reading=both, shown=site.shown))
    return out


def _container(obj: Any, need: Need) -> dict[str, Any] | None:
    for k in need.keys:
        if isinstance(k, int):
            obj = obj[k] if isinstance(obj, list) and k < len(obj) else None
        else:
            obj = obj.get(k) if isinstance(obj, dict) else None
    if not isinstance(obj, list):
        return None
    if isinstance(need.key, int):
        found = obj[need.key] if need.key < len(obj) else None
    else:
        found = next((c for c in obj if isinstance(c, dict) and c.get("name") == need.key), None)
    return found if isinstance(found, dict) else None
