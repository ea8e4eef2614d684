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

from hoopy.shellopts import (
    SAFE_INTERPRETER_ARGS,
    SHELLS,
    WRAPPERS,
    Ctx,
    Effect,
    Spec,
    arith_code_env,
    assignment,
    code_env,
    is_interpreter,
    joined_code,
    names,
    none,
    opaque,
    parse_opts,
    wrapped,
)
from hoopy.shelltools import TOOLS
from hoopy.shellwords import Arg, plain

__all__ = ["HANDLED", "SHELLS", "Ctx", "Effect", "code_env", "effect", "is_interpreter"]


def effect(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """What `prog` (normalised, args[0]) does with its arguments."""
    handler = _HANDLERS.get(prog) or (_equals if prog[:1] == "=" and prog[1:] else None)
    if handler is not None:
        return handler(prog, args, ctx)
    spec = WRAPPERS.get(prog)
    if spec is not None:
        return wrapped(prog, args, spec)
    if is_interpreter(prog):
        tail = {a.literal for a in args[1:]}
        if args[1:] and tail <= SAFE_INTERPRETER_ARGS:
            return none()
        return opaque(f"interpreter reads code: {prog}")
    return none()


def _shell(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """sh/bash/zsh…: -c CODE, a script file, or code from stdin."""
    command = stdin = False
    i = 1
    while i < len(args):
        v = args[i].literal
        if v is None:
            return opaque(f"option of {prog} is not literal: {args[i].source}")
        if v in ("--", "-"):
            i += 1
            break
        if v.startswith("--"):
            if v in ("--version", "--help"):
                return none()
            if v.startswith(("--rcfile", "--init-file")):
                return opaque(f"interpreter reads code: {prog} {v}")
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
                opaque(f"code takes its input from xargs/find: {prog} -c") if ctx.extra else none()
            )
        code = rest[0]
        if ctx.replace and ctx.replace in code.source:
            return opaque(f"code takes its input from xargs/find: {code.source}")
        return Effect(code=[code])
    if (rest or ctx.extra) and not stdin:
        shown = rest[0].shown if rest else "(its input)"
        return opaque(f"interpreter runs a script: {prog} {shown}")
    return Effect(stdin_code=True)


def _eval(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = list(args[1:])
    if words and words[0].literal == "--":
        words.pop(0)
    return joined_code(prog, words, ctx)


def _source(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    shown = args[1].shown if len(args) > 1 else ""
    return opaque(f"interpreter reads code: {prog} {shown}".rstrip())


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
    while i < len(args) and assignment(args[i], eff):
        i += 1
    o = p.opts
    if any(k in o for k in ("-e", "--edit", "-l", "--list", "-v", "--validate", "-V", "-K")):
        return eff
    rest = list(args[i:])
    shell = any(k in o for k in ("-s", "--shell", "-i", "--login"))
    if rest and shell:
        # sudo runs the shell with -c and the words backslash-escaped, all but
        # letters, digits, _, - and $: `sudo -s 'rm$IFS-rf$IFS/'` splits at run time
        values = [a.literal for a in rest]
        if any(v is None for v in values):
            eff.opaque.append(f"code is not literal: {prog} {' '.join(a.source for a in rest)}")
        else:
            code = " ".join(re.sub(r"([^A-Za-z0-9_$-])", r"\\\1", v or "") for v in values)
            eff.code.append(plain(code))
    elif rest:
        eff.runs.append(rest)
    elif shell:
        eff.opaque.append(f"interpreter reads code: {prog} runs an interactive shell")
    return eff


def _doas(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    eff = wrapped(prog, args, Spec("uC", "nsL", no_cmd="CL"))
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
            if s is None or "${" in s or "\\" in s:  # \_ splits words, \c ends the string
                raise ValueError
            parts = shlex.split(s)
            if parts and parts[0].startswith("-"):  # env reads the options in it too
                raise ValueError
            if _after_split(words, p.index) < p.index:
                # env reads the words after -S as the split command's arguments, not
                # its own options (env -S'id' -u X reboot runs `id -u X reboot`)
                raise ValueError
            words = [*words[:i], *(plain(w) for w in parts), *words[i:]]
        except ValueError:
            eff.opaque.append(f"code is not literal: env -S {split.source if split else ''}")
    if "-a" in p.opts or "--argv0" in p.opts:
        eff.opaque.append("program name is changed: env --argv0")
    while i < len(words) and assignment(words[i], eff):
        i += 1
    if i < len(words):
        eff.runs.append(words[i:])
    return eff


def _after_split(words: Sequence[Arg], end: int) -> int:
    """The index after env's -S option and its value (0 when not found)."""
    for j in range(1, end):
        w = words[j].literal or ""
        name = w.split("=", 1)[0]
        if name.startswith("--") and len(name) > 3 and "--split-string".startswith(name):
            return j + 1 if "=" in w else j + 2
        if w.startswith("-") and not w.startswith("--") and "S" in w:
            return j + 2 if w.endswith("S") else j + 1
    return 0


_UNIT_CODE = re.compile(r"(?i)(Exec|Environment|PAMName|Root(Directory|Image)|Bind|Extension)")


def _systemd_run(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """systemd-run: -p ExecStartPre=… runs a command, -E LD_PRELOAD=… loads code."""
    eff = wrapped(prog, args, WRAPPERS[prog])
    for k, a in enumerate(args[1:], 1):
        v = a.literal or a.source
        nxt = args[k + 1].literal or args[k + 1].source if k + 1 < len(args) else ""
        for short, long in (("-p", "--property"), ("-E", "--setenv")):
            value = nxt if v in (short, long) else ""
            if v.startswith(long + "="):
                value = v[len(long) + 1 :]
            elif v.startswith(short) and len(v) > 2 and not v.startswith("--"):
                value = v[2:]
            name = value.split("=", 1)[0]
            if value and (_UNIT_CODE.match(name) if short == "-p" else code_env(name)):
                eff.opaque.append(f"interpreter reads code: {prog} {v} {value}"[:120])
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
        return opaque(p.problem)
    if "-v" in p.opts or "-V" in p.opts or p.index >= len(args):
        return none()
    return Effect(runs=[list(args[p.index :])])


def _rest(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """builtin NAME ARGS, coproc CMD, nohup CMD: run the words after the program name."""
    words = list(args[1:])
    if words and words[0].literal == "--":
        words.pop(0)
    return Effect(runs=[words]) if words else none()


def _repeat(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """zsh's `repeat N CMD`."""
    return Effect(runs=[list(args[2:])]) if len(args) > 2 else none()


def _equals(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    return opaque(f"program name is changed: zsh runs the program {prog} names")


def _bang(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """`! CMD` (tree-sitter reads `time ! …` as the command `!`): assignments may
    precede the command, as after any keyword."""
    eff = none()
    i = 1
    while i < len(args) and assignment(args[i], eff):
        i += 1
    if i < len(args):
        eff.runs.append(list(args[i:]))
    return eff


def _coproc(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    return opaque(
        "unparseable: coproc (its NAME and command are read in ways hoopy does not follow)"
    )


def _busybox(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if len(args) < 2 or (args[1].literal or "").startswith("-"):
        return none()
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
                return opaque(f"option of {prog} is not literal: {args[i].source}")
            if v != "-":
                operands.append(args[i])
            i += 1
            continue
        p = parse_opts(args, i, spec, prog)
        if p.problem:
            return opaque(p.problem)
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
        return opaque(f"interpreter reads code: {prog} without a command runs a shell")
    return joined_code(prog, words, ctx)


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
        return opaque(p.problem)
    rest = list(args[p.index :])
    if not rest:
        return none()
    if "-x" in p.opts or "--exec" in p.opts:
        return Effect(runs=[rest])
    return joined_code(prog, rest, ctx)


_FLOCK = Spec(
    "wEc",
    "sxunoFev",
    ("timeout", "wait", "conflict-exit-code", "command"),
    ("shared", "exclusive", "unlock", "nonblock", "nb", "close", "no-fork", "verbose"),
)  # fmt: skip


def _flock(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, _FLOCK, prog)
    if p.problem:
        return opaque(p.problem)
    i = p.index + 1  # the lock file (or fd number); options may follow it
    q = parse_opts(args, i, _FLOCK, prog)
    if q.problem:
        return opaque(q.problem)
    p.opts.update(q.opts)
    i = max(i, q.index)
    code = p.opts.get("-c") or p.opts.get("--command")
    if code is not None:
        return Effect(code=[code])
    return Effect(runs=[list(args[i:])]) if i < len(args) else none()


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
        return opaque(p.problem)
    r = p.opts.get("-I")
    if r is not None:
        replace = r.literal or "{}"
    if "--replace" in p.opts:
        replace = (p.opts["--replace"] or plain("{}")).literal or "{}"
    rest = list(args[p.index :]) or [plain("echo")]
    slot = p.opts.get("--process-slot-var")
    if slot is not None and code_env(slot.literal or "PATH"):  # PATH=0 for the command
        return opaque(f"environment variable can run code: {slot.source}")
    return Effect(runs=[rest], ctx=Ctx(extra=True, replace=replace))


_FIND_ARG1 = names(
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


def _trap(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = list(args[1:])
    if words and words[0].literal == "--":
        words.pop(0)
    if len(words) < 2 or words[0].literal in ("-", "-p", "-l", "-P"):
        return none()
    if (words[0].literal or "").isdigit():
        return none()
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
    return opaque("alias defines a command name: hash -p") if _flagged(args, "p") else none()


def _enable(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if _flagged(args, "f"):
        return opaque("interpreter reads code: enable -f (a loadable builtin)")
    return none()


def _bind(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if _flagged(args, "xf"):
        return opaque("alias defines a command name: bind -x (a key runs a command)")
    return none()


def _complete(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if _flagged(args, "C"):
        return opaque("alias defines a command name: complete -C (completion runs a command)")
    if _flagged(args, "W") and any(c in (a.literal or a.source) for a in args[1:] for c in "$`"):
        # bash expands -W's word list when it completes: `compgen -W '$(cmd)'` runs cmd
        return opaque(f"text bash may run as code: {prog} -W")
    return none()


def _set(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """set -k (every NAME=value word, anywhere, goes to the environment: `id
    LD_PRELOAD=x`), set -o posix and shopt -s compat… change how bash reads lines."""
    words = [a.literal or "" for a in args[1:]]
    for k, v in enumerate(words):
        if prog == "set" and v[:1] in "-+" and "k" in v[1:] and not v.startswith("--"):
            return opaque("alias defines a command name: set -k")
        if v in ("-o", "+o") and k + 1 < len(words) and words[k + 1] in ("keyword", "posix"):
            return opaque(f"alias defines a command name: set -o {words[k + 1]}")
        if prog == "shopt" and v.startswith("compat"):
            return opaque(f"alias defines a command name: shopt {v}")
        if v in ("interactive_comments", "interactive-comments"):
            # off, an interactive shell reads `#$(rm x)` as a word, not a comment
            return opaque(f"alias defines a command name: {prog} … {v}")
    return none()


def _fc(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    return opaque(f"history expansion: {prog} re-runs earlier commands")


def _vars(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """read/printf -v/export/declare/getopts/wait -p/let: assigning a variable that
    makes programs run code (also as an attached option value: `printf -vPATH`)."""
    for k, a in enumerate(args[1:], 1):
        word = a.literal or a.source
        name = word.split("=", 1)[0].split("[", 1)[0]
        if code_env(name) or (prog == "let" and arith_code_env(word)):
            return opaque(f"environment variable can run code: {name}")
        if word.startswith("-") and any(code_env(name[i:]) for i in range(2, len(name))):
            return opaque(f"environment variable can run code: {name}")
        if a.literal is None and prog in ("declare", "typeset", "export", "local", "readonly"):
            return opaque(f"environment variable can run code: {a.source}")
        if prog in ("mapfile", "readarray") and a.literal == "-C" and k + 1 < len(args):
            return Effect(code=[args[k + 1]])  # a callback run every -c lines
    return none()


def _strace(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """strace -o '|cmd' (or '!cmd') pipes the trace to a shell command; -E NAME=value
    sets the traced program's environment (LD_PRELOAD=…)."""
    eff = wrapped(prog, args, WRAPPERS[prog])
    takes = "eoPsuIabESOXp"
    k = 1
    while k < len(args):
        v = args[k].literal or args[k].source
        if v == "--" or not v.startswith("-") or len(v) < 2:
            break
        found: list[tuple[str, str]] = []
        if v.startswith("--"):
            name, _, value = v.partition("=")
            if not value and k + 1 < len(args) and name in ("--output", "--env"):
                k += 1
                value = args[k].literal or args[k].source
            if len(name) > 3 and "--output".startswith(name):
                found.append(("o", value))
            elif len(name) > 3 and "--env".startswith(name):
                found.append(("E", value))
        else:
            for j, c in enumerate(v[1:], 1):
                if c in takes:
                    value = v[j + 1 :]
                    if not value and k + 1 < len(args):
                        k += 1
                        value = args[k].literal or args[k].source
                    found.append((c, value))
                    break
        for c, value in found:
            if c == "o" and value[:1] in ("|", "!"):
                eff.opaque.append(f"interpreter reads code: {prog} -o {value[:40]}")
            elif c == "E" and code_env(value.split("=", 1)[0]):
                eff.opaque.append(f"environment variable can run code: {prog} -E {value[:40]}")
        k += 1
    return eff


Handler = Callable[[str, Sequence[Arg], Ctx], Effect]
_HANDLERS: dict[str, Handler] = {
    **TOOLS,
    **{s: _shell for s in SHELLS},
    **dict.fromkeys(("eval",), _eval),
    **dict.fromkeys(("source", "."), _source),
    **dict.fromkeys(("builtin", "nohup"), _rest),
    # a login shell other than bash: zsh's precommand modifiers, fish's and/or/not
    **dict.fromkeys(("noglob", "nocorrect", "-", "and", "or", "not"), _rest),
    "repeat": _repeat,
    **dict.fromkeys(("su", "runuser"), _su),
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
            "getopts",
            "wait",
            "let",
            "unset",
        ),
        _vars,
    ),
    "sudo": _sudo,
    "doas": _doas,
    "env": _env,
    "exec": _exec,
    "command": _command,
    "busybox": _busybox,
    "!": _bang,
    "coproc": _coproc,
    "sg": _sg,
    "watch": _watch,
    "flock": _flock,
    "xargs": _xargs,
    "find": _find,
    "trap": _trap,
    "alias": _alias,
    "hash": _hash,
    "enable": _enable,
    "bind": _bind,
    "fc": _fc,
    "systemd-run": _systemd_run,
    "strace": _strace,
    "set": _set,
    "shopt": _set,
}
# Programs whose arguments hoopy reads (options, commands, code).
HANDLED = frozenset(_HANDLERS) | frozenset(WRAPPERS)
