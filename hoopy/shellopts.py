"""Option parsing for hoopy.shell's reading of programs (hoopy.shellprogs): the
effect of a program (what it runs), its options read as its own getopt reads them, and
the table of wrappers whose command follows their options (`nice -n 5 CMD`).

An option hoopy does not know makes the reading opaque: guessing whether it takes a
value could make hoopy look at the wrong word for the command.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hoopy.shellwords import Arg, plain


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


def none() -> Effect:
    return Effect()


def names(words: str) -> frozenset[str]:
    return frozenset(words.split())


def opaque(reason: str) -> Effect:
    return Effect(opaque=[reason])


# Shells whose code hoopy reads with its bash grammar (their -c syntax is POSIX sh).
SHELLS = names("sh bash dash zsh ksh ksh93 mksh lksh pdksh ash yash rbash posh")
# Programs that read code hoopy cannot see, whatever their arguments (but --version);
# ftp, lftp, ncftp, telnet, smbclient … read commands from their input, where `!cmd`
# runs cmd; database shells run host commands (sqlcmd's `!!`, sqlplus's `host`).
INTERPRETERS = names(
    """fish csh tcsh xonsh elvish nu pwsh powershell rc es osh ysh oil
    irb node nodejs deno bun lua luajit Rscript R wish expect jshell osascript guile
    racket julia groovy scala java jrunscript kotlin gdb lldb ed ex vi vim nvim view
    vimdiff rvim emacs sqlite3 mysql mariadb psql dc at batch make gmake parallel sem
    tmux screen m4 newgrp capsh login sulogin
    ipython ipython3 bpython bpython3 ptpython ptipython jython micropython octave octave-cli
    gnuplot maxima gp sage ghci ghc runghc runhaskell stack cabal ocaml utop sbcl clisp ecl
    csi gsi scheme mit-scheme clojure clj lein bb elixir iex mix erl escript swift raku
    rakudo perl6 emacsclient hyperfine npx bunx pnpx nodemon ts-node tsx go cargo dotnet
    cmake qemu-x86_64 qemu-aarch64 qemu-i386 qemu-arm qemu-riscv64 sensible-editor editor
    byobu dtach abduco ftp lftp ncftp telnet tnftp pftp yafc cadaver smbclient mongo mongosh
    sqlcmd sqlplus pry"""
)
_VERSIONED = re.compile(r"^(python|pypy|perl|php|ruby|tclsh|lua|node)[0-9.]*$")
SAFE_INTERPRETER_ARGS = frozenset({"--version", "--help"})
# Assignments that make a later program run code from somewhere hoopy cannot see.
_CODE_ENV_NAMES = (
    r"LD_\w+|BASH_ENV|ENV|PROMPT_COMMAND|PS[0-4]|SHELLOPTS|BASHOPTS|BASH_LOADABLES_PATH"
    r"|BASH_FUNC_\S*|PATH|HOME|XDG_CONFIG_HOME|ZDOTDIR|GIT_\w+|PAGER|MANPAGER|EDITOR|VISUAL"
    r"|SYSTEMD_PAGER|LESSOPEN|LESSCLOSE|PERL5OPT|PERL5LIB|PERLLIB|PYTHON\w+|RUBYOPT|RUBYLIB"
    r"|NODE_OPTIONS|NODE_PATH|SUDO_ASKPASS|SSH_ASKPASS|TEXTDOMAIN|TEXTDOMAINDIR"
    # bash's hash table and aliases as arrays (BASH_CMDS[ls]=/bin/rm makes `ls` run rm),
    # readline's init file, and settings that change how bash parses a line
    r"|BASH_CMDS|BASH_ALIASES|INPUTRC|POSIXLY_CORRECT|BASH_COMPAT"
    # options or modules other programs read from the environment that run or load code
    r"|GCONV_PATH|OPENSSL_CONF|OPENSSL_ENGINES|PERL5DB|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS"
    r"|JDK_JAVA_OPTIONS|LUA_INIT\w*|LUA_C?PATH\w*|TAR_OPTIONS|RSYNC_RSH|RSYNC_CONNECT_PROG"
    r"|CVS_RSH|SUDO_EDITOR|SYSTEMD_EDITOR|BROWSER|MANOPT|FCEDIT"
)
_CODE_ENV = re.compile(rf"^({_CODE_ENV_NAMES})$")
# Such a variable assigned by arithmetic (`((PATH=1))`, `let PATH++`, a value bash
# evaluates as arithmetic later: `x='PATH=1'; echo $((x))`).
_ARITH_NAMES = _CODE_ENV_NAMES.replace(r"\S*", r"\w*")
_ARITH_ASSIGN = re.compile(
    rf"(?<![\w$])(?:{_ARITH_NAMES})(?!\w)\s*(?:\[[^\]]*\])?\s*"
    rf"(?:(?:[-+*/%&|^]|<<|>>|\*\*)?=(?!=)|\+\+|--)|(?:\+\+|--)\s*(?:{_ARITH_NAMES})(?!\w)"
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def code_env(name: str) -> bool:
    return bool(_CODE_ENV.match(name))


def arith_code_env(text: str) -> str:
    """The variable that can run code which this arithmetic text assigns, or ""."""
    m = _ARITH_ASSIGN.search(text.replace("'", "").replace('"', ""))
    return m.group(0) if m else ""


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
    out.index = min(i, len(args))  # an option's missing value does not run past the end
    return out


def wrapped(prog: str, args: Sequence[Arg], spec: Spec) -> Effect:
    """A program that runs the command after its options (and operands)."""
    p = parse_opts(args, 1, spec, prog)
    eff = Effect()
    if p.problem:
        eff.opaque.append(p.problem)
    i = p.index
    if spec.assigns:
        while i < len(args) and assignment(args[i], eff):
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


def assignment(a: Arg, eff: Effect) -> bool:
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
    # env and sudo take any word with "=" for an assignment: `BASH_FUNC_ls%%=() {…}`
    # defines a function the shell they run imports, `'x y=1'` is no program name
    name = v.split("=", 1)[0]
    if code_env(name) or not _NAME.match(name):
        eff.opaque.append(f"environment variable can run code: {name}")
    return True


# --- the programs -----------------------------------------------------------------

# fmt: off
WRAPPERS: dict[str, Spec] = {
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
                 ("append", "portability", "quiet", "verbose"), assigns=True),
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
    "gosu": Spec(operands=1),
    "su-exec": Spec(operands=1),
    "tini": Spec("pe", "svwglh"),
    "dumb-init": Spec("r", "vch", ("rewrite",), ("single-child", "verbose", "version", "help")),
    "prlimit": Spec("po", "", ("pid", "output"),
                    ("noheadings", "raw", "verbose", "as", "core", "cpu", "data", "fsize",
                     "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss",
                     "rtprio", "rttime", "sigpending", "stack"),
                    no_cmd="p", no_cmd_long=("pid",)),
}
# fmt: on


def joined_code(prog: str, words: Sequence[Arg], ctx: Ctx) -> Effect:
    """Words joined_code with spaces and run as shell code (eval, ssh host cmd, watch, sg)."""
    if ctx.extra or (ctx.replace and any(ctx.replace in w.source for w in words)):
        return opaque(f"code takes its input from xargs/find: {prog}")
    values = [w.literal for w in words]
    if any(v is None for v in values):
        shown = " ".join(w.source for w in words)
        return opaque(f"code is not literal: {prog} {shown}")
    if not words:
        return none()
    return Effect(code=[plain(" ".join(v for v in values if v is not None))])
