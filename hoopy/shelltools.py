"""Programs whose options or arguments run other commands (for hoopy.shellprogs):
ssh's remote command and ProxyCommand, rsync -e, tar --to-command, awk's system(),
sed's `e`, git's configured commands, nc -e, socat exec:, script -c, ip netns exec."""

from __future__ import annotations

import re
from collections.abc import Sequence

from hoopy.shellopts import Ctx, Effect, Spec, joined_code, names, none, opaque, parse_opts
from hoopy.shellwords import Arg, awk_runs, plain, sed_runs

_SSH = Spec("BbcDEeFIiJLlmOopQRSWwP", "46AaCfGgKkMNnqsTtVvXxYy")
_SSH_LIBRARY_OPTS = ("pkcs11provider", "securitykeyprovider")
_SSH_CODE_OPTS = ("proxycommand", "localcommand", "knownhostscommand", "remotecommand")


def _ssh(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    p = parse_opts(args, 1, _SSH, prog)
    eff = Effect()
    if p.problem:
        return opaque(p.problem)
    i = p.index + 1  # the host; OpenSSH reads options after it too
    if i < len(args):
        q = parse_opts(args, i, _SSH, prog)
        if q.problem:
            return opaque(q.problem)
        p.opts.update(q.opts)
        i = q.index
    _ssh_options(prog, args, eff)
    if p.index >= len(args) or any(k in p.opts for k in ("-N", "-W", "-s", "-O", "-G", "-V")):
        return eff
    rest = list(args[i:])
    if not rest:
        eff.opaque.append(f"interpreter reads code: {prog} without a command runs a remote shell")
        return eff
    remote = joined_code(prog, rest, ctx)
    eff.code.extend(remote.code)
    eff.opaque.extend(remote.opaque)
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
            elif key.lower() in _SSH_LIBRARY_OPTS:
                eff.opaque.append(f"interpreter reads code: {prog} -o {key} (loads a library)")
        elif prog == "ssh" and v.startswith("-I"):
            eff.opaque.append(f"interpreter reads code: {prog} -I (loads a PKCS#11 library)")
        elif v.startswith("-F"):
            eff.opaque.append(f"interpreter reads code: {prog} -F (an ssh config file)")
        elif prog in ("scp", "sftp") and v[:2] in ("-S", "-D"):
            eff.opaque.append(f"interpreter reads code: {prog} {v[:2]} (a program to run)")


def _scp(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    eff = Effect()
    _ssh_options(prog, args, eff)
    if prog == "sftp" and any((a.literal or a.source).startswith("-b") for a in args[1:]):
        eff.opaque.append("interpreter reads code: sftp -b (a batch file may hold !commands)")
    elif prog == "sftp":
        # without -b it reads its commands from stdin (the agent's, or a pipe), and `!cmd`
        # runs cmd on this host
        eff.opaque.append("interpreter reads code: sftp reads !commands from its input")
    return eff


def _man(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """man -P PAGER / --pager=PAGER runs the pager through a shell; -H a browser."""
    for k, a in enumerate(args[1:], 1):
        v = a.literal or a.source
        if v in ("-P", "--pager") and k + 1 < len(args):
            return Effect(code=[args[k + 1]])
        if v.startswith("--pager="):
            return Effect(code=[plain(v[len("--pager=") :])])
        if v.startswith("-P") and len(v) > 2:
            return Effect(code=[plain(v[2:])])
        if v.startswith(("-H", "--html")):
            return opaque(f"interpreter reads code: {prog} {v} (runs a browser)")
    return none()


def _zip(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    for a in args[1:]:
        v = a.literal or a.source
        if v in ("-TT", "--unzip-command") or v.startswith("--unzip-command="):
            return opaque(f"interpreter reads code: {prog} {v}")
    return none()


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
            return opaque(f"interpreter reads code: {prog} {v}")
    return none()


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
        return opaque(p.problem)
    o = p.opts
    if any(k in o for k in ("-f", "--file", "-i", "--include", "-l", "--load", "-E", "--exec")):
        return opaque(f"interpreter reads code: {prog} -f (a program file)")
    programs = [a for k, a in o.items() if k in ("-e", "--source") and a is not None]
    if not programs and p.index < len(args):
        programs.append(args[p.index])
    for text in programs:
        v = text.literal
        if v is None:
            return opaque(f"code is not literal: {prog} {text.source}")
        if awk_runs(v) and "--sandbox" not in o:
            return opaque(f"interpreter reads code: {prog} program runs commands")
    return none()


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
        return opaque(p.problem)
    o = p.opts
    if "-f" in o or "--file" in o:
        return opaque(f"interpreter reads code: {prog} -f (a script file)")
    if "--sandbox" in o:
        return none()
    scripts = [args[k + 1] for k in range(1, min(p.index, len(args) - 1))]
    scripts = [
        s for k, s in enumerate(scripts, 1) if (args[k].literal or "") in ("-e", "--expression")
    ]
    scripts += [a for k, a in o.items() if k in ("-e", "--expression") and a is not None]
    if not scripts and p.index < len(args):
        scripts.append(args[p.index])
    for s in scripts:
        if s.literal is None:
            return opaque(f"code is not literal: {prog} {s.source}")
        if sed_runs(s.literal):
            return opaque(f"interpreter reads code: {prog} script runs commands")
    return none()


_GIT_CODE = re.compile(
    r"^(alias\..*|core\.(sshcommand|pager|editor|fsmonitor|hookspath|gitproxy|askpass|"
    r"worktree)|.*\.(command|cmd|helper|textconv|program|tool|path)|pager\..*|"
    r"sequence\.editor|diff\.external|credential\..*|filter\..*|gpg\..*|"
    r"uploadpack\.packobjectshook|include\..*|includeif\..*|protocol\..*|ssh\.variant)$",
    re.IGNORECASE,
)


# git subcommands whose options (or arguments) are commands git runs.
_GIT_SUB_RUNS: dict[str, frozenset[str]] = {
    "bisect": frozenset({"run"}),
    "rebase": frozenset({"-x", "--exec"}),
    "submodule": frozenset({"foreach"}),
    "filter-branch": frozenset({"--tree-filter", "--index-filter", "--env-filter",
                                "--msg-filter", "--commit-filter", "--tag-name-filter",
                                "--parent-filter", "--subdirectory-filter"}),
    "difftool": frozenset({"-x", "--extcmd", "-t", "--tool"}),
    "mergetool": frozenset({"-t", "--tool"}),
    "grep": frozenset({"-O", "--open-files-in-pager"}),
    "clone": frozenset({"-u", "--upload-pack", "--config", "--template"}),
    "fetch": frozenset({"--upload-pack"}),
    "pull": frozenset({"--upload-pack"}),
    "push": frozenset({"--receive-pack", "--exec"}),
    "archive": frozenset({"--exec"}),
    "ls-remote": frozenset({"--upload-pack"}),
    "send-email": frozenset({"--smtp-server", "--to-cmd", "--cc-cmd", "--sendmail-cmd",
                             "--header-cmd"}),
}  # fmt: skip


def _git(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = [a.literal for a in args[1:]]
    sub = ""  # the subcommand, once seen
    for k, v in enumerate(words):
        if v is None or (not sub and any(c in args[k + 1].source for c in "$`*?[{~")):
            # a word known only at run time (`git "$x" …` with x=-c…, or $x split into
            # several) among git's own options, or a subcommand's that run commands
            if not sub or sub in _GIT_SUB_RUNS or sub == "config":
                return opaque(f"option of {prog} is not literal: {args[k + 1].source}")
            continue
        if not sub and not v.startswith("-") and (k == 0 or words[k - 1] not in ("-C", "-c")):
            sub = v
        if v.startswith(("--exec-path", "--config-env", "--upload-pack", "--receive-pack")):
            return opaque(f"interpreter reads code: {prog} {v}")
        if v == "-c" and k + 1 < len(words):
            key = (words[k + 1] or "").split("=", 1)[0]
            if words[k + 1] is None or _GIT_CODE.match(key):
                return opaque(f"interpreter reads code: {prog} -c {key}")
        if v in _GIT_SUB_RUNS and any(w in _GIT_SUB_RUNS[v] or (w or "")[:2] in
                                     _GIT_SUB_RUNS[v] or (w or "").split("=", 1)[0] in
                                     _GIT_SUB_RUNS[v] for w in words[k + 1 :]):  # fmt: skip
            return opaque(f"interpreter reads code: {prog} {v} runs a command")
        if v == "config":
            keys = [w for w in words[k + 1 :] if w and not w.startswith("-")]
            if keys and _GIT_CODE.match(keys[0]) and len(keys) > 1:
                return opaque(f"interpreter reads code: {prog} config {keys[0]}")
            break
    return none()


def _nc(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    for a in args[1:]:
        v = a.literal or a.source
        if v.startswith(("--exec", "--sh-exec", "--lua-exec")) or (
            v.startswith("-") and not v.startswith("--") and ("e" in v or "c" in v)
        ):
            return opaque(f"interpreter reads code: {prog} {v}")
    return none()


def _socat(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    for a in args[1:]:
        v = (a.literal or a.source).lower()
        if "exec:" in v or "system:" in v:
            return opaque(f"interpreter reads code: {prog} {a.shown}")
    return none()


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
        return opaque(p.problem)
    code = p.opts.get("-c") or p.opts.get("--command")
    if code is not None:
        return Effect(code=[code])
    return opaque(f"interpreter reads code: {prog} without -c runs a shell")


def _ip(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    words = [a.literal for a in args]
    for k in range(1, len(words) - 2):
        if words[k] in ("netns", "vrf") and words[k + 1] == "exec":
            return Effect(runs=[list(args[k + 3 :])]) if k + 3 < len(args) else none()
    return none()


def _multicall(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """toybox / coreutils (a multi-call binary): `coreutils rm x`, `toybox rm x`,
    `coreutils --coreutils-prog=rm x` run rm."""
    first = args[1].literal if len(args) > 1 else ""
    if first is None:
        return opaque(f"program is not literal: {prog} {args[1].source}")
    if first.startswith("--coreutils-prog="):
        return Effect(runs=[[plain(first.split("=", 1)[1]), *args[2:]]])
    if first.startswith("-"):
        if first in ("--help", "--version", "--list", "--long"):
            return none()
        return opaque(f"unknown option of {prog}: {first}")
    return Effect(runs=[list(args[1:])]) if first else none()


# Programs that run a command they are given in ways hoopy does not follow (their own
# option languages, sandboxes, schedulers, remote hosts, directories of scripts).
RUNNERS = names(
    """run-parts start-stop-daemon firejail bwrap proot schroot systemd-nspawn machinectl
    flatpak-spawn toolbox distrobox distrobox-enter lxc-attach lxc-execute perf entr
    watchexec chpst envdir envuidgid setuidgid softlimit setlock pgrphack cpulimit trickle
    mpirun mpiexec orterun srun salloc sbatch qsub pdsh clush pssh parallel-ssh mosh rsh
    rlogin rexec daemonize valgrind ssh-agent dbus-launch xvfb-run systemd-inhibit fakeroot
    fakechroot fakeroot-ng setarch linux32 linux64 uname26 i386 x86_64 aarch64 arm64 ppc64
    s390x tsocks ansible-console rush rlwrap pipx poetry pipenv conda mamba micromamba uv uvx
    bundle bundler rbenv pyenv nodenv asdf mise rtx direnv nix-shell nix guix npm yarn pnpm
    rake scl run-one run0"""
)


def _runner(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    if args[1:] and {a.literal for a in args[1:]} <= {"--version", "--help", "-h", "-V"}:
        return none()
    return opaque(f"interpreter reads code: {prog} runs a command hoopy does not follow")


def _words_opaque(prog: str, args: Sequence[Arg], words: frozenset[str]) -> Effect:
    """Opaque when an argument (or the `--opt` of `--opt=value`) is one of `words`."""
    for a in args[1:]:
        v = a.literal
        if v is None:
            return opaque(f"option of {prog} is not literal: {a.source}")
        if v in words or v.split("=", 1)[0] in words or v[:2] in words:
            return opaque(f"interpreter reads code: {prog} {v[:40]}")
    return none()


_CONTAINER_RUNS = frozenset({"exec", "run", "create", "compose", "debug", "attach", "cp"})
_CONTAINER_RUNS_K = frozenset({"exec", "run", "debug", "attach", "cp", "plugin", "alpha"})
_TOOL_RUNS = {
    "rg": frozenset({"--pre"}),
    "fd": frozenset({"-x", "-X", "--exec", "--exec-batch"}),
    "apt": frozenset({"-o", "-c", "--option", "--config-file"}),
    "dpkg": frozenset({"--pre-invoke", "--post-invoke", "--status-logger"}),
    "ansible": frozenset({"-a", "-m", "--args", "--module-name"}),
}


def _tool_runs(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    key = {"fdfind": "fd", "apt-get": "apt", "aptitude": "apt", "apt-cache": "apt"}.get(prog, prog)
    if key in ("docker", "podman", "nerdctl", "crictl", "ctr"):
        return _words_opaque(prog, args, _CONTAINER_RUNS)
    if key in ("kubectl", "oc"):
        return _words_opaque(prog, args, _CONTAINER_RUNS_K)
    return _words_opaque(prog, args, _TOOL_RUNS[key])


# getopt_long programs with an option that runs a command: (short letters, long names).
# A long option counts by any prefix (getopt_long takes `--compress=x`), a letter in any
# short cluster (`-nzcmd`).
_GETOPT_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sort": ("", ("--compress-program",)),  # runs it on its temporary files
    "split": ("", ("--filter",)),  # each part through $SHELL -c
    "tcpdump": ("z", ("--compress",)),  # -z: runs it on each file written (-C / -G)
    "wget": ("e", ("--execute", "--use-askpass", "--config")),  # -e use_askpass=cmd
    "exim": ("", ()),
    "aria2c": ("", tuple(f"--on-{e}" for e in ("download-complete", "download-start",
                                               "download-error", "download-stop",
                                               "download-pause", "bt-download-complete"))),
    "yt-dlp": ("", ("--exec", "--exec-before-download")),  # optparse takes prefixes too
    "youtube-dl": ("", ("--exec",)),
    "rpm": ("ED", ("--eval", "--define", "--macros")),  # %(cmd) in a macro runs cmd
    "helm": ("", ("--post-renderer",)),
    "tshark": ("X", ()),  # -X lua_script:f
    "pip": ("", ()),
    "telnetd": ("l", ("--login",)),  # -l PROG: what each connection runs (a shell)
}  # fmt: skip
_PIP_RUNS = frozenset({"install", "download", "wheel"})  # a package's build runs its code


def _getopt_runs(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    key = {"exim4": "exim", "pip3": "pip", "utelnetd": "telnetd", "in.telnetd": "telnetd"}.get(
        prog, prog
    )
    if key == "pip":
        return _words_opaque(prog, args, _PIP_RUNS)
    letters, longs = _GETOPT_RUNS[key]
    for a in args[1:]:
        v = a.literal or a.source
        if v == "--":
            break
        name = v.split("=", 1)[0]
        if key == "exim":  # -be/-bem expand ${run{cmd}}; -C reads another configuration
            hit = name in ("-be", "-bem", "-C") or name.startswith("-C")
        elif name.startswith("--"):
            hit = len(name) > 3 and any(long.startswith(name) for long in longs)
        else:
            hit = name.startswith("-") and any(c in name[1:] for c in letters)
        if hit:
            return opaque(f"interpreter reads code: {prog} {v[:40]}")
    return none()


def _crontab(prog: str, args: Sequence[Arg], ctx: Ctx) -> Effect:
    """crontab FILE / - installs commands cron runs later; -l and -r do not."""
    if any(a.literal in ("-l", "-r") for a in args[1:]):
        return none()
    return opaque(f"interpreter reads code: {prog} installs a schedule of commands")


TOOLS = {
    **dict.fromkeys(("coreutils", "toybox"), _multicall),
    **dict.fromkeys(RUNNERS, _runner),
    **dict.fromkeys(
        (
            "rg",
            "fd",
            "fdfind",
            "apt",
            "apt-get",
            "aptitude",
            "apt-cache",
            "dpkg",
            "ansible",
            "docker",
            "podman",
            "nerdctl",
            "crictl",
            "ctr",
            "kubectl",
            "oc",
        ),
        _tool_runs,
    ),
    "crontab": _crontab,
    **dict.fromkeys(
        (*_GETOPT_RUNS, "exim4", "pip3", "utelnetd", "in.telnetd"),
        _getopt_runs,
    ),
    **dict.fromkeys(("scp", "sftp"), _scp),
    **dict.fromkeys(("awk", "gawk", "mawk", "nawk"), _awk),
    **dict.fromkeys(("sed", "gsed"), _sed),
    **dict.fromkeys(("nc", "ncat", "netcat"), _nc),
    "ssh": _ssh,
    "rsync": _rsync,
    "tar": _tar,
    "git": _git,
    "socat": _socat,
    "script": _script,
    "ip": _ip,
    "man": _man,
    "zip": _zip,
}


# --- on a terminal (hoopy.shell.on_a_terminal) ----------------------------------------

# Programs on the list only for subcommands that open an editor or a pager.
OPENS_EDITOR = {
    "kubectl": ("edit",),
    "oc": ("edit",),
    "hg": ("commit", "ci", "histedit", "amend", "crecord", "record", "shelve", "tag"),
    "svn": ("commit", "ci", "propedit", "pe", "pedit"),
    "apt": ("edit-sources",),
}


def sudo_edits(argv: Sequence[str]) -> bool:
    """`sudo -e f` / `sudo --edit f` is sudoedit: it opens an editor."""
    words = iter(argv[1:])
    for a in words:
        if a == "--" or not a.startswith("-") or a == "-":
            return False
        if a.startswith("--"):
            if a == "--edit":
                return True
            if "=" not in a and a[2:] in _SUDO_LONG_VALUES:
                next(words, None)
            continue
        for j, ch in enumerate(a[1:], 1):
            if ch == "e":
                return True
            if ch in "CDghpRrtTUu":  # takes a value: the rest, or the next word
                if j == len(a) - 1:
                    next(words, None)
                break
    return False


_SUDO_LONG_VALUES = names(
    "close-from chdir group host prompt chroot role type command-timeout other-user user"
)
