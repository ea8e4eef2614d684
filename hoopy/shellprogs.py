"""What a program does with its arguments, for hoopy.shell: which command a wrapper
runs (`sudo -u x rm` runs `rm`), which strings a program runs as shell code
(`sh -c`, `eval`, `su -c`, `ssh host cmd`, `watch`), and which programs run code hoopy
cannot see (interpreters, scripts, `source`, awk's system(), sed's `e`).

Options are read as the program's own option parser does, so that the command a
wrapper runs is found where the program would find it.  An option hoopy does not know
makes the reading opaque: guessing whether it takes a value could make hoopy look at
the wrong word.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hoopy.shellwords import Arg, awk_runs, plain, sed_runs


@dataclass(frozen=True)
class Ctx:
    """What a program's caller passes on: `extra` when it appends arguments hoopy
    cannot see (xargs), `replace` when it substitutes input into arguments ({})."""

    extra: bool = False
    replace: str | None = None


@dataclass
class Effect:
    runs: list[list[Arg]] = field(default_factory=list)  # commands it runs (argv)
    code: list[Arg] = field(default_factory=list)  # strings it runs as shell code
    stdin_code: bool = False  # a POSIX shell reading its code from stdin
    opaque: list[str] = field(default_factory=list)  # "interpreter reads code: …" …
    ctx: Ctx | None = None  # the context for the commands it runs (default: the same)


def _none() -> Effect:
    return Effect()


def _names(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _opaque(reason: str) -> Effect:
    return Effect(opaque=[reason])


# Shells whose code hoopy reads with its bash grammar (their -c syntax is POSIX sh).
SHELLS = _names("sh bash dash zsh ksh ksh93 mksh lksh pdksh ash yash rbash posh")
# Programs that read code hoopy cannot see, whatever their arguments (but --version).
INTERPRETERS = _names(
    """fish csh tcsh xonsh elvish nu pwsh powershell rc es osh ysh oil
    irb node nodejs deno bun lua luajit Rscript R wish expect jshell osascript guile
    racket julia groovy scala java jrunscript kotlin gdb lldb ed ex vi vim nvim view
    vimdiff rvim emacs sqlite3 mysql mariadb psql dc at batch make gmake parallel sem
    tmux screen m4 newgrp capsh"""
)
_VERSIONED = re.compile(r"^(python|pypy|perl|php|ruby|tclsh|lua|node)[0-9.]*$")
_SAFE_INTERPRETER_ARGS = frozenset({"--version", "--help"})
# Assignments that make a later program run code from somewhere hoopy cannot see.
_CODE_ENV = re.compile(
    r"^(LD_\w+|BASH_ENV|ENV|PROMPT_COMMAND|PS[0-4]|SHELLOPTS|BASHOPTS|BASH_LOADABLES_PATH"
    r"|BASH_FUNC_.*|PATH|HOME|XDG_CONFIG_HOME|ZDOTDIR|GIT_\w+|PAGER|MANPAGER|EDITOR|VISUAL"
    r"|SYSTEMD_PAGER|LESSOPEN|LESSCLOSE|PERL5OPT|PERL5LIB|PERLLIB|PYTHON\w+|RUBYOPT|RUBYLIB"
    r"|NODE_OPTIONS|NODE_PATH|SUDO_ASKPASS|SSH_ASKPASS|TEXTDOMAIN|TEXTDOMAINDIR)$"
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def code_env(name: str) -> bool:
    return bool(_CODE_ENV.match(name))


def is_interpreter(name: str) -> bool:
    return name in INTERPRETERS or bool(_VERSIONED.match(name))


# --- option parsing ---------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A program's options, as its getopt sees them (stopping at the first operand)."""

    short_arg: str = ""  # -u root / -uroot
    short_flag: str = ""
    long_arg: tuple[str, ...] = ()  # --user root / --user=root
    long_flag: tuple[str, ...] = ()  # also --name=value for optional values
    operands: int = 0  # operands before the command (timeout DURATION, chroot DIR)
    no_cmd: str = ""  # short options meaning it runs no command (-p pid)
    no_cmd_long: tuple[str, ...] = ()
    shell_if_empty: bool = False  # without a command it runs an interactive shell
    assigns: bool = False  # NAME=VALUE words before the command (env, sudo)
    digits: bool = False  # -5 (nice)


@dataclass
class Parsed:
    opts: dict[str, Arg | None] = field(default_factory=dict)  # "-u" / "--user" → value
    index: int = 0  # first word after the options
    problem: str = ""


def _long(name: str, spec: Spec) -> tuple[str, bool] | None:
    """A long option by its name or a unique prefix (as getopt_long): (name, takes_arg)."""
    names = (*spec.long_arg, *spec.long_flag)
    if name in names:
        return name, name in spec.long_arg
    hits = [f for f in names if f.startswith(name)] if name else []
    if len(hits) == 1:
        return hits[0], hits[0] in spec.long_arg
    return None


def parse_opts(args: Sequence[Arg], start: int, spec: Spec, prog: str) -> Parsed:
    out = Parsed(index=start)
    i = start
    while i < len(args):
        v = args[i].literal
        if v is None:
            out.problem = f"option of {prog} is not literal: {args[i].source}"
            break
        if v == "--":
            i += 1
            break
        if not v.startswith("-") or v == "-":
            break
        if spec.digits and v.lstrip("-").isdigit():
            i += 1
            continue
        if v.startswith("--"):
            name, eq, val = v[2:].partition("=")
            hit = _long(name, spec)
            if hit is None:
                out.problem = f"unknown option of {prog}: {v}"
                break
            full, takes = hit
            if takes and not eq:
                i += 1
                out.opts["--" + full] = args[i] if i < len(args) else None
            else:
                out.opts["--" + full] = plain(val) if eq else None
            i += 1
            continue
        j = 1
        while j < len(v):
            ch = v[j]
            if ch in spec.short_arg:
                rest = v[j + 1 :]
                if rest:
                    out.opts["-" + ch] = plain(rest)
                else:
                    i += 1
                    out.opts["-" + ch] = args[i] if i < len(args) else None
                break
            if ch not in spec.short_flag:
                out.problem = f"unknown option of {prog}: -{ch}"
                out.index = i
                return out
            out.opts["-" + ch] = None
            j += 1
        i += 1
    out.index = i
    return out


def _wrapped(prog: str, args: Sequence[Arg], spec: Spec) -> Effect:
    """A program that runs the command after its options (and operands)."""
    p = parse_opts(args, 1, spec, prog)
    eff = Effect()
    if p.problem:
        eff.opaque.append(p.problem)
    i = p.index
    if spec.assigns:
        while i < len(args) and _assignment(args[i], eff):
            i += 1
    if any("-" + c in p.opts for c in spec.no_cmd) or any(
        "--" + o in p.opts for o in spec.no_cmd_long
    ):
        return eff
    i += spec.operands
    rest = list(args[i:])
    if rest:
        eff.runs.append(rest)
    elif spec.shell_if_empty:
        eff.opaque.append(f"interpreter reads code: {prog} without a command runs a shell")
    return eff


def _assignment(a: Arg, eff: Effect) -> bool:
    """NAME=VALUE before a command (env, sudo): True when it is one."""
    v = a.literal
    if v is None:
        head = a.source.split("$", 1)[0].split("`", 1)[0]
        if "=" in head and _NAME.match(head.split("=", 1)[0]):
            name = head.split("=", 1)[0]
            if code_env(name):
                eff.opaque.append(f"environment variable can run code: {name}")
            return True  # NAME=$x: an assignment whose value is unknown
        return False
    if "=" not in v:
        return False
    name = v.split("=", 1)[0]
    if not _NAME.match(name):
        return False
    if code_env(name):
        eff.opaque.append(f"environment variable can run code: {name}")
    return True


# --- the programs -----------------------------------------------------------------

# fmt: off
_SPECS: dict[str, Spec] = {
    "nohup": Spec(long_flag=("help", "version")),
    "nice": Spec("n", "", ("adjustment",), digits=True),
    "timeout": Spec("sk", "vfp", ("signal", "kill-after"),
                    ("preserve-status", "foreground", "verbose"), operands=1),
    "stdbuf": Spec("ioe", "", ("input", "output", "error")),
    "setsid": Spec("", "cfw", (), ("ctty", "fork", "wait")),
    "chroot": Spec("", "", ("userspec", "groups"), ("skip-chdir",), operands=1,
                   shell_if_empty=True),
    "ionice": Spec("cnpPu", "t", ("class", "classdata", "pid", "pgid", "uid"), ("ignore",),
                   no_cmd="pPu", no_cmd_long=("pid", "pgid", "uid")),
    "time": Spec("fo", "apqvV", ("format", "output"),
                 ("append", "portability", "quiet", "verbose")),
    "unbuffer": Spec("", "p"),
    "taskset": Spec("", "acp", (), ("all-tasks", "cpu-list", "pid"), operands=1, no_cmd="p",
                    no_cmd_long=("pid",)),
    "chrt": Spec("TPD", "bdfiorRaemv", ("sched-runtime", "sched-period", "sched-deadline"),
                 ("batch", "deadline", "fifo", "idle", "other", "rr", "reset-on-fork",
                  "all-tasks", "max", "pid", "verbose", "ext"),
                 operands=1, no_cmd="mp", no_cmd_long=("max", "pid")),
    "numactl": Spec("ipmNCP", "alsHSb", ("interleave", "preferred", "membind", "cpunodebind",
                                         "physcpubind", "preferred-many", "balancing"),
                    ("all", "localalloc", "show", "hardware"), no_cmd="sH",
                    no_cmd_long=("show", "hardware")),
    "nsenter": Spec("tSGrwmuinpUCTF", "aZ", ("target", "setuid", "setgid", "root", "wd",
                                             "mount", "uts", "ipc", "net", "pid", "user",
                                             "cgroup", "time", "env"),
                    ("all", "preserve-credentials", "no-fork", "follow-context"),
                    shell_if_empty=True),
    "unshare": Spec("RwSG", "muinpUCTfrc", ("root", "wd", "setuid", "setgid", "propagation",
                                            "setgroups", "map-user", "map-group", "map-users",
                                            "map-groups", "mount", "uts", "ipc", "net", "pid",
                                            "user", "cgroup", "time", "mount-proc",
                                            "kill-child", "load-interp", "monotonic",
                                            "boottime"),
                    ("fork", "map-root-user", "map-current-user", "keep-caps", "map-auto"),
                    shell_if_empty=True),
    "strace": Spec("eoPsuIabESOXp", "cCdDfFhikqrtTvVwxyzZ", no_cmd="p"),
    "ltrace": Spec("eoPsuIabESOXpnlAL", "cCdDfFhikqrtTvVwxyzZ", no_cmd="p"),
    "pkexec": Spec("", "", ("user",), ("disable-internal-agent", "keep-cwd"),
                   shell_if_empty=True),
    "doas": Spec("uC", "nL", no_cmd="CL"),
    "sshpass": Spec("pfdP", "ev"),
    "cgexec": Spec("g", "", (), ("sticky",)),
    "faketime": Spec("fmp", "", (), ("exclude-monitor", "date-prog"), operands=1),
    "dbus-run-session": Spec("", "", ("config-file", "dbus-daemon"), ()),
    "eatmydata": Spec(),
    "nocache": Spec("n", ""),
    "torsocks": Spec("uapPi", "dq", (), ("shell",)),
    "torify": Spec(),
    "proxychains": Spec("f", "q"),
    "proxychains4": Spec("f", "q"),
    "catchsegv": Spec(),
    "chronic": Spec("", "ev"),
    "ifne": Spec("", "n"),
    "lckdo": Spec("W", "qw", operands=1),
    "setpriv": Spec("", "d", ("reuid", "regid", "ruid", "rgid", "euid", "egid", "groups",
                              "inh-caps", "ambient-caps", "bounding-set", "securebits",
                              "pdeathsig", "selinux-label", "apparmor-profile",
                              "landlock-access", "landlock-rule", "seccomp-filter"),
                    ("init-groups", "clear-groups", "keep-groups", "reset-env", "nnp",
                     "no-new-privs", "dump"), no_cmd="d", no_cmd_long=("dump",)),
    "runcon": Spec("turl", "c", ("user", "role", "type", "range"), ("compute",)),
    "aa-exec": Spec("pn", "idv", ("profile", "namespace"), ("immediate", "debug", "verbose")),
    "systemd-run": Spec("upEHMC", "rtPqGdS", ("unit", "property", "setenv", "host", "machine",
                                            "capsule", "description", "slice", "uid", "gid",
                                            "nice", "working-directory", "on-active",
                                            "on-boot", "on-startup", "on-unit-active",
                                            "on-unit-inactive", "on-calendar", "on-timezone-change",
                                            "on-clock-change", "timer-property", "path-property",
                                            "socket-property", "service-type", "expand-environment",
                                            "json"),
                        ("scope", "remain-after-exit", "send-sighup", "pty", "pipe", "quiet",
                         "collect", "user", "system", "no-ask-password", "no-block", "wait",
                         "same-dir", "shell", "slice-inherit", "ignore-failure", "background"),
                        shell_if_empty=True),
    "prlimit": Spec("po", "", ("pid", "output"),
                    ("noheadings", "raw", "verbose", "as", "core", "cpu", "data", "fsize",
                     "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
                     "rtprio", "rttime", "sigpending", "stack"),
                    no_cmd="p", no_cmd_long=("pid",)),
}
# fmt: on


def effect(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """What `prog` (normalised, args[0]) does with its arguments."""
    handler = _HANDLERS.get(prog)
    if handler is not None:
        return handler(prog, args, ctx)
    spec = _SPECS.get(prog)
    if spec is not None:
        return _wrapped(prog, args, spec)
    if is_interpreter(prog):
        tail = {a.literal for a in args[1:]}
        if args[1:] and tail <= _SAFE_INTERPRETER_ARGS:
            return _none()
        return _opaque(f"interpreter reads code: {prog}")
    return _none()


def _shell(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """sh/bash/zsh…: -c CODE, a script file, or code from stdin."""
    command = stdin = False
    i = 1
    while i < len(args):
        v = args[i].literal
        if v is None:
            return _opaque(f"option of {prog} is not literal: {args[i].source}")
        if v in ("--", "-"):
            i += 1
            break
        if v.startswith("--"):
            if v in ("--version", "--help"):
                return _none()
            if v.startswith(("--rcfile", "--init-file")):
                return _opaque(f"interpreter reads code: {prog} {v}")
            i += 1
            continue
        if v[:1] not in "-+" or len(v) == 1:
            break
        for ch in v[1:]:
            if ch == "c":
                command = True
            elif ch == "s":
                stdin = True
            elif ch in "oO":
                i += 1
        i += 1
    rest = args[i:]
    if command:
        if not rest:
            return (
                _opaque(f"code takes its input from xargs/find: {prog} -c")
                if ctx.extra
                else _none()
            )
        code = rest[0]
        if ctx.replace and ctx.replace in code.source:
            return _opaque(f"code takes its input from xargs/find: {code.source}")
        return Effect(code=[code])
    if (rest or ctx.extra) and not stdin:
        shown = rest[0].shown if rest else "(its input)"
        return _opaque(f"interpreter runs a script: {prog} {shown}")
    return Effect(stdin_code=True)


def _joined(prog: str, words: Sequence[Arg], ctx: Ctx) -> Effect:
    """Words joined with spaces and run as shell code (eval, ssh host cmd, watch, sg)."""
    if ctx.extra or (ctx.replace and any(ctx.replace in w.source for w in words)):
        return _opaque(f"code takes its input from xargs/find: {prog}")
    values = [w.literal for w in words]
    if any(v is None for v in values):
        shown = " ".join(w.source for w in words)
        return _opaque(f"code is not literal: {prog} {shown}")
    if not words:
        return _none()
    return Effect(code=[plain(" ".join(v for v in values if v is not None))])


def _eval(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = list(args[1:])
    if words and words[0].literal == "--":
        words.pop(0)
    return _joined(prog, words, ctx)


def _source(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    shown = args[1].shown if len(args) > 1 else ""
    return _opaque(f"interpreter reads code: {prog} {shown}".rstrip())


_SUDO = Spec(
    "ugphCDrtUTRa",
    "AbEeHiKklnPSsVvNB",
    ("user", "group", "host", "prompt", "close-from", "chdir", "role", "type", "other-user",
     "command-timeout", "chroot", "auth-type", "login-class"),
    ("askpass", "background", "preserve-env", "edit", "set-home", "login", "remove-timestamp",
     "reset-timestamp", "list", "non-interactive", "preserve-groups", "stdin", "shell",
     "version", "validate", "no-update", "bell", "help"),
)  # fmt: skip


def _sudo(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, _SUDO, prog)
    eff = Effect()
    if p.problem:
        eff.opaque.append(p.problem)
    i = p.index
    while i < len(args) and _assignment(args[i], eff):
        i += 1
    o = p.opts
    if any(k in o for k in ("-e", "--edit", "-l", "--list", "-v", "--validate", "-V", "-K")):
        return eff
    rest = list(args[i:])
    if rest:
        eff.runs.append(rest)
    elif any(k in o for k in ("-s", "--shell", "-i", "--login")):
        eff.opaque.append(f"interpreter reads code: {prog} runs an interactive shell")
    return eff


def _doas(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    eff = _wrapped(prog, args, Spec("uC", "nsL", no_cmd="CL"))
    p = parse_opts(args, 1, Spec("uC", "nsL"), prog)
    if "-s" in p.opts and not eff.runs:
        eff.opaque.append(f"interpreter reads code: {prog} -s runs a shell")
    return eff


_ENV = Spec(
    "uCSa",
    "i0v",
    ("unset", "chdir", "split-string", "argv0"),
    ("ignore-environment", "null", "debug", "block-signal", "default-signal", "ignore-signal",
     "list-signal-handling"),
)  # fmt: skip


def _env(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = list(args)
    if len(words) > 1 and words[1].literal == "-":
        words.pop(1)
    p = parse_opts(words, 1, _ENV, prog)
    eff = Effect()
    if p.problem:
        eff.opaque.append(p.problem)
    i = p.index
    if "-S" in p.opts or "--split-string" in p.opts:
        split = p.opts.get("-S") or p.opts.get("--split-string")
        s = split.literal if split is not None else None
        try:
            if s is None or "${" in s or "\\c" in s:
                raise ValueError
            words = [*words[:i], *(plain(w) for w in shlex.split(s)), *words[i:]]
        except ValueError:
            eff.opaque.append(f"code is not literal: env -S {split.source if split else ''}")
    if "-a" in p.opts or "--argv0" in p.opts:
        eff.opaque.append("program name is changed: env --argv0")
    while i < len(words) and _assignment(words[i], eff):
        i += 1
    if i < len(words):
        eff.runs.append(words[i:])
    return eff


def _exec(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, Spec("a", "cl"), prog)
    eff = Effect(opaque=[p.problem] if p.problem else [])
    if "-a" in p.opts:
        eff.opaque.append("program name is changed: exec -a")
    if p.index < len(args):
        eff.runs.append(list(args[p.index :]))
    return eff


def _command(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, Spec("", "pvV"), prog)
    if p.problem:
        return _opaque(p.problem)
    if "-v" in p.opts or "-V" in p.opts or p.index >= len(args):
        return _none()
    return Effect(runs=[list(args[p.index :])])


def _rest(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """builtin NAME ARGS, coproc CMD, nohup CMD: run the words after the program name."""
    words = list(args[1:])
    if words and words[0].literal == "--":
        words.pop(0)
    return Effect(runs=[words]) if words else _none()


def _busybox(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if len(args) < 2 or (args[1].literal or "").startswith("-"):
        return _none()
    return Effect(runs=[list(args[1:])])


_SU = Spec(
    "cgGswC",
    "flmpP",
    ("command", "session-command", "group", "supp-group", "shell", "whitelist-environment"),
    ("fast", "login", "preserve-environment", "pty"),
)  # fmt: skip
_RUNUSER = Spec("cgGswCu", "flmpP", (*_SU.long_arg, "user"), _SU.long_flag)


def _su(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """su/runuser [opts] [-] [user [shell args]]: options anywhere (GNU getopt)."""
    eff = Effect()
    operands: list[Arg] = []
    opts: dict[str, Arg | None] = {}
    spec = _SU if prog == "su" else _RUNUSER
    i = 1
    while i < len(args):
        v = args[i].literal
        if v == "--":
            operands.extend(args[i + 1 :])
            break
        if v == "-" or v is None or not v.startswith("-"):
            if v is None and not operands:
                return _opaque(f"option of {prog} is not literal: {args[i].source}")
            if v != "-":
                operands.append(args[i])
            i += 1
            continue
        p = parse_opts(args, i, spec, prog)
        if p.problem:
            return _opaque(p.problem)
        opts.update(p.opts)
        i = max(p.index, i + 1)
        if p.index > 0 and args[p.index - 1].literal == "--":
            operands.extend(args[p.index :])
            break
    if prog == "runuser" and ("-u" in opts or "--user" in opts):
        if operands:
            eff.runs.append(operands)
        return eff
    shell = opts.get("-s") or opts.get("--shell")
    code = opts.get("-c") or opts.get("--command") or opts.get("--session-command")
    code = code or opts.get("-C")
    if shell is not None and (shell.literal or "").rsplit("/", 1)[-1] not in SHELLS:
        eff.opaque.append(f"interpreter reads code: {prog} --shell {shell.shown}")
    elif code is not None:
        if ctx.replace and ctx.replace in code.source:
            eff.opaque.append(f"code takes its input from xargs/find: {code.source}")
        else:
            eff.code.append(code)
    elif len(operands) > 1 or ctx.extra:
        eff.opaque.append(f"interpreter runs a script: {prog}")
    else:
        eff.opaque.append(f"interpreter reads code: {prog} without -c runs a shell")
    return eff


def _sg(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = list(args[2:])
    if words and words[0].literal == "-c":
        words.pop(0)
    if not words:
        return _opaque(f"interpreter reads code: {prog} without a command runs a shell")
    return _joined(prog, words, ctx)


_WATCH = Spec(
    "nqs",
    "bcCdegprtwxf",
    ("interval", "equexit", "shotsdir"),
    ("beep", "color", "no-color", "errexit", "chgexit", "precise", "no-rerun", "no-title",
     "no-wrap", "exec", "differences", "follow", "help", "version"),
)  # fmt: skip


def _watch(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    # -d takes an optional value only when attached (-d=permanent / --differences=…)
    words = [plain("-d") if (a.literal or "").startswith("-d=") else a for a in args]
    p = parse_opts(words, 1, _WATCH, prog)
    if p.problem:
        return _opaque(p.problem)
    rest = list(args[p.index :])
    if not rest:
        return _none()
    if "-x" in p.opts or "--exec" in p.opts:
        return Effect(runs=[rest])
    return _joined(prog, rest, ctx)


_FLOCK = Spec(
    "wEc",
    "sxunoFev",
    ("timeout", "wait", "conflict-exit-code", "command"),
    ("shared", "exclusive", "unlock", "nonblock", "nb", "close", "no-fork", "verbose"),
)  # fmt: skip


def _flock(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, _FLOCK, prog)
    if p.problem:
        return _opaque(p.problem)
    i = p.index + 1  # the lock file (or fd number); options may follow it
    q = parse_opts(args, i, _FLOCK, prog)
    if q.problem:
        return _opaque(q.problem)
    p.opts.update(q.opts)
    i = max(i, q.index)
    code = p.opts.get("-c") or p.opts.get("--command")
    if code is not None:
        return Effect(code=[code])
    return Effect(runs=[list(args[i:])]) if i < len(args) else _none()


_XARGS = Spec(
    "aEILnPsd",
    "0oprtx",
    ("arg-file", "delimiter", "max-args", "max-procs", "max-chars", "process-slot-var"),
    ("null", "interactive", "no-run-if-empty", "open-tty", "show-limits", "verbose", "exit",
     "replace", "eof", "max-lines", "help", "version"),
)  # fmt: skip


def _xargs(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    # -i[R], -e[EOF], -l[N]: optional values, attached only
    words = list(args)
    replace: str | None = None
    for k, a in enumerate(words[1:], 1):
        v = a.literal or ""
        if v[:2] in ("-i", "-e", "-l"):
            if v.startswith("-i"):
                replace = v[2:] or "{}"
            words[k] = plain("-r")  # a harmless flag in its place
        elif not v.startswith("-"):
            break
    p = parse_opts(words, 1, _XARGS, prog)
    if p.problem:
        return _opaque(p.problem)
    r = p.opts.get("-I")
    if r is not None:
        replace = r.literal or "{}"
    if "--replace" in p.opts:
        replace = (p.opts["--replace"] or plain("{}")).literal or "{}"
    rest = list(args[p.index :]) or [plain("echo")]
    return Effect(runs=[rest], ctx=Ctx(extra=True, replace=replace))


_FIND_ARG1 = _names(
    """-name -iname -path -ipath -wholename -iwholename -regex -iregex -lname -ilname -type
    -xtype -user -group -uid -gid -perm -size -mtime -mmin -atime -amin -ctime -cmin -used
    -newer -anewer -cnewer -samefile -inum -links -maxdepth -mindepth -printf -fprint -fls
    -fprint0 -context -fstype -files0-from -regextype -D -O"""
)
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})


def _find(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    eff = Effect(ctx=Ctx(replace="{}"))
    i = 1
    n = len(args)
    while i < n:
        v = args[i].literal
        if v is None:
            eff.opaque.append(f"find expression is not literal: {args[i].source}")
            return eff
        if v in _FIND_EXEC:
            j = i + 1
            while j < n and args[j].literal not in (";", "+"):
                j += 1
            if j > i + 1:
                eff.runs.append(list(args[i + 1 : j]))
            i = j + 1
            continue
        if v == "-fprintf":
            i += 3
            continue
        i += 2 if v in _FIND_ARG1 else 1
    return eff


_SSH = Spec("BbcDEeFIiJLlmOopQRSWwP", "46AaCfGgKkMNnqsTtVvXxYy")
_SSH_CODE_OPTS = ("proxycommand", "localcommand", "knownhostscommand", "remotecommand")


def _ssh(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, _SSH, prog)
    eff = Effect()
    if p.problem:
        return _opaque(p.problem)
    i = p.index + 1  # the host; OpenSSH reads options after it too
    if i < len(args):
        q = parse_opts(args, i, _SSH, prog)
        if q.problem:
            return _opaque(q.problem)
        p.opts.update(q.opts)
        i = q.index
    _ssh_options(prog, args, eff)
    if p.index >= len(args) or any(k in p.opts for k in ("-N", "-W", "-s", "-O", "-G", "-V")):
        return eff
    rest = list(args[i:])
    if not rest:
        eff.opaque.append(f"interpreter reads code: {prog} without a command runs a remote shell")
        return eff
    joined = _joined(prog, rest, ctx)
    eff.code.extend(joined.code)
    eff.opaque.extend(joined.opaque)
    return eff


def _ssh_options(prog: str, args: Sequence[Arg], eff: Effect) -> None:
    """-o ProxyCommand=… runs a local command; -F FILE may hold one; -S in scp/sftp
    names the ssh program to run."""
    for k, a in enumerate(args[1:], 1):
        v = a.literal
        if v is None:
            continue
        if v.startswith("-o"):
            nxt = args[k + 1].literal if k + 1 < len(args) else ""
            opt = v[2:] if len(v) > 2 else (nxt or "")
            key = re.split(r"[=\s]", opt, maxsplit=1)[0]
            if key.lower() in _SSH_CODE_OPTS:
                eff.code.append(plain(opt[len(key) :].lstrip("= \t")))
        elif v.startswith("-F"):
            eff.opaque.append(f"interpreter reads code: {prog} -F (an ssh config file)")
        elif prog in ("scp", "sftp") and v[:2] in ("-S", "-D"):
            eff.opaque.append(f"interpreter reads code: {prog} {v[:2]} (a program to run)")


def _scp(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    eff = Effect()
    _ssh_options(prog, args, eff)
    return eff


def _rsync(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    eff = Effect()
    for k, a in enumerate(args[1:], 1):
        v = a.literal or ""
        for opt in ("--rsh=", "--rsync-path="):
            if v.startswith(opt):
                eff.code.append(plain(v[len(opt) :]))
        if v in ("-e", "--rsh", "--rsync-path") and k + 1 < len(args):
            eff.code.append(args[k + 1])
        elif v.startswith("-e") and len(v) > 2:
            eff.code.append(plain(v[2:]))
    return eff


_TAR_CODE = ("--to-command", "--checkpoint-action", "--use-compress-program", "--rsh-command",
             "--info-script", "--new-volume-script")  # fmt: skip


def _tar(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    for k, a in enumerate(args[1:], 1):
        v = a.literal or a.source
        cluster = v[1:] if v.startswith("-") and not v.startswith("--") else ""
        if k == 1 and not v.startswith("-"):
            cluster = v  # old style: tar xIf prog file
        if v.startswith(_TAR_CODE) or "I" in cluster or "F" in cluster:
            return _opaque(f"interpreter reads code: {prog} {v}")
    return _none()


_AWK = Spec(
    "fvFeilE",
    "bcCdDghkLMnNOpPrsStVWy",
    ("file", "assign", "field-separator", "source", "include", "load", "exec"),
    ("posix", "re-interval", "traditional", "lint", "sandbox", "characters-as-bytes", "bignum",
     "csv", "optimize", "no-optimize", "pretty-print", "dump-variables", "debug", "profile",
     "gen-pot", "help", "version", "use-lc-numeric", "non-decimal-data"),
)  # fmt: skip


def _awk(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, _AWK, prog)
    if p.problem:
        return _opaque(p.problem)
    o = p.opts
    if any(k in o for k in ("-f", "--file", "-i", "--include", "-l", "--load", "-E", "--exec")):
        return _opaque(f"interpreter reads code: {prog} -f (a program file)")
    programs = [a for k, a in o.items() if k in ("-e", "--source") and a is not None]
    if not programs and p.index < len(args):
        programs.append(args[p.index])
    for text in programs:
        v = text.literal
        if v is None:
            return _opaque(f"code is not literal: {prog} {text.source}")
        if awk_runs(v) and "--sandbox" not in o:
            return _opaque(f"interpreter reads code: {prog} program runs commands")
    return _none()


_SED = Spec(
    "efl",
    "nrEuzsb",
    ("expression", "file", "line-length"),
    ("quiet", "silent", "regexp-extended", "in-place", "unbuffered", "null-data", "posix",
     "sandbox", "debug", "follow-symlinks", "binary", "separate", "help", "version"),
)  # fmt: skip


def _sed(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    # -i[SUFFIX] takes an optional attached value
    words = [plain("-n") if (a.literal or "").startswith("-i") else a for a in args]
    p = parse_opts(words, 1, _SED, prog)
    if p.problem:
        return _opaque(p.problem)
    o = p.opts
    if "-f" in o or "--file" in o:
        return _opaque(f"interpreter reads code: {prog} -f (a script file)")
    if "--sandbox" in o:
        return _none()
    scripts = [args[k + 1] for k in range(1, min(p.index, len(args) - 1))]
    scripts = [
        s for k, s in enumerate(scripts, 1) if (args[k].literal or "") in ("-e", "--expression")
    ]
    scripts += [a for k, a in o.items() if k in ("-e", "--expression") and a is not None]
    if not scripts and p.index < len(args):
        scripts.append(args[p.index])
    for s in scripts:
        if s.literal is None:
            return _opaque(f"code is not literal: {prog} {s.source}")
        if sed_runs(s.literal):
            return _opaque(f"interpreter reads code: {prog} script runs commands")
    return _none()


_GIT_CODE = re.compile(
    r"^(alias\..*|core\.(sshcommand|pager|editor|fsmonitor|hookspath|gitproxy|askpass|"
    r"worktree)|.*\.(command|cmd|helper|textconv|program|tool|path)|pager\..*|"
    r"sequence\.editor|diff\.external|credential\..*|filter\..*|gpg\..*|"
    r"uploadpack\.packobjectshook|include\..*|includeif\..*|protocol\..*|ssh\.variant)$",
    re.IGNORECASE,
)


def _git(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = [a.literal for a in args[1:]]
    for k, v in enumerate(words):
        if v is None:
            continue
        if v.startswith(("--exec-path", "--config-env")):
            return _opaque(f"interpreter reads code: {prog} {v}")
        if v == "-c" and k + 1 < len(words):
            key = (words[k + 1] or "").split("=", 1)[0]
            if words[k + 1] is None or _GIT_CODE.match(key):
                return _opaque(f"interpreter reads code: {prog} -c {key}")
        if v == "config":
            keys = [w for w in words[k + 1 :] if w and not w.startswith("-")]
            if keys and _GIT_CODE.match(keys[0]) and len(keys) > 1:
                return _opaque(f"interpreter reads code: {prog} config {keys[0]}")
            break
    return _none()


def _nc(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    for a in args[1:]:
        v = a.literal or a.source
        if v.startswith(("--exec", "--sh-exec", "--lua-exec")) or (
            v.startswith("-") and not v.startswith("--") and ("e" in v or "c" in v)
        ):
            return _opaque(f"interpreter reads code: {prog} {v}")
    return _none()


def _socat(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    for a in args[1:]:
        v = (a.literal or a.source).lower()
        if "exec:" in v or "system:" in v:
            return _opaque(f"interpreter reads code: {prog} {a.shown}")
    return _none()


_SCRIPT = Spec(
    "cETIOBmo",
    "aefqt",
    ("command", "echo", "log-timing", "log-in", "log-out", "log-io", "logging-format",
     "output-limit"),
    ("append", "return", "flush", "force", "quiet", "timing"),
)  # fmt: skip


def _script(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = [plain("-q") if (a.literal or "").startswith("-t") else a for a in args]
    p = parse_opts(words, 1, _SCRIPT, prog)
    if p.problem:
        return _opaque(p.problem)
    code = p.opts.get("-c") or p.opts.get("--command")
    if code is not None:
        return Effect(code=[code])
    return _opaque(f"interpreter reads code: {prog} without -c runs a shell")


def _ip(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = [a.literal for a in args]
    for k in range(1, len(words) - 2):
        if words[k] in ("netns", "vrf") and words[k + 1] == "exec":
            return Effect(runs=[list(args[k + 3 :])]) if k + 3 < len(args) else _none()
    return _none()


def _trap(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = list(args[1:])
    if words and words[0].literal == "--":
        words.pop(0)
    if len(words) < 2 or words[0].literal in ("-", "-p", "-l", "-P"):
        return _none()
    if (words[0].literal or "").isdigit():
        return _none()
    return Effect(code=[words[0]])


def _alias(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    eff = Effect()
    for a in args[1:]:
        v = a.literal
        if v is None:
            eff.opaque.append(f"alias defines a command name: {a.source}")
        elif "=" in v:
            eff.code.append(plain(v.split("=", 1)[1]))
            eff.opaque.append(f"alias defines a command name: {v.split('=', 1)[0]}")
    return eff


def _flagged(args: Sequence[Arg], letters: str) -> bool:
    """Does any short option cluster hold one of these letters?"""
    for a in args[1:]:
        v = a.literal or a.source
        if v.startswith("-") and not v.startswith("--") and any(c in v[1:] for c in letters):
            return True
    return False


def _hash(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    return _opaque("alias defines a command name: hash -p") if _flagged(args, "p") else _none()


def _enable(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if _flagged(args, "f"):
        return _opaque("interpreter reads code: enable -f (a loadable builtin)")
    return _none()


def _bind(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if _flagged(args, "xf"):
        return _opaque("alias defines a command name: bind -x (a key runs a command)")
    return _none()


def _complete(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if _flagged(args, "C"):
        return _opaque("alias defines a command name: complete -C (completion runs a command)")
    return _none()


def _fc(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    return _opaque(f"history expansion: {prog} re-runs earlier commands")


def _vars(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """read/printf -v/export/declare: assigning a variable that makes programs run code."""
    for a in args[1:]:
        name = (a.literal or a.source).split("=", 1)[0]
        if code_env(name):
            return _opaque(f"environment variable can run code: {name}")
    return _none()


Handler = Callable[[str, Sequence[Arg], Ctx], Effect]
_HANDLERS: dict[str, Handler] = {
    **{s: _shell for s in SHELLS},
    **dict.fromkeys(("eval",), _eval),
    **dict.fromkeys(("source", "."), _source),
    **dict.fromkeys(("builtin", "coproc", "nohup"), _rest),
    **dict.fromkeys(("su", "runuser"), _su),
    **dict.fromkeys(("scp", "sftp"), _scp),
    **dict.fromkeys(("awk", "gawk", "mawk", "nawk"), _awk),
    **dict.fromkeys(("sed", "gsed"), _sed),
    **dict.fromkeys(("nc", "ncat", "netcat"), _nc),
    **dict.fromkeys(("complete", "compgen"), _complete),
    **dict.fromkeys(
        (
            "read",
            "printf",
            "mapfile",
            "readarray",
            "export",
            "declare",
            "typeset",
            "local",
            "readonly",
        ),
        _vars,
    ),
    "sudo": _sudo,
    "doas": _doas,
    "env": _env,
    "exec": _exec,
    "command": _command,
    "busybox": _busybox,
    "sg": _sg,
    "watch": _watch,
    "flock": _flock,
    "xargs": _xargs,
    "find": _find,
    "ssh": _ssh,
    "rsync": _rsync,
    "tar": _tar,
    "git": _git,
    "socat": _socat,
    "script": _script,
    "ip": _ip,
    "trap": _trap,
    "alias": _alias,
    "hash": _hash,
    "enable": _enable,
    "bind": _bind,
    "fc": _fc,
}
