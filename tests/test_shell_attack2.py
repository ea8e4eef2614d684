"""A second attack review of the shell classifier (hoopy.shell): each line here ran a
denied program under real bash while hoopy reported only allowed ones.  Each must now
be denied by a policy that denies reboot/rm and allows every visible command
(tests/test_policy_shell.py's POLICY).  A differential run under real bash
(tests/test_shell_bash.py's sandbox) checks redirection forms next to wrappers: every
program bash runs is one hoopy saw, or the line is opaque."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hoopy.policy import decide
from hoopy.shell import on_a_terminal, read_line, shell_command
from tests.test_policy_shell import AGENT, POLICY, ssh
from tests.test_shell_bash import _build, _logged, _mentions, _run

ATTACKS = [
    # `>&-` / `<&-` take no file: tree-sitter read the next word as one, and the
    # program after a wrapper vanished (`env` alone was all hoopy saw)
    "nice >&- reboot",
    "env 2>&- reboot -f",
    "exec 3<&- reboot",
    "sudo <&- reboot",
    "command >&- reboot",
    "timeout 5 >&- reboot",
    # `{fd}>f` is a redirection that stores the descriptor in a variable: tree-sitter
    # read `{fd}` as a word, so the program after `exec` was `{fd}`
    "exec {fd}>/tmp/f reboot",
    "exec {fd}</dev/null reboot -f",
    "exec {fd}>&- reboot",
    "exec {PATH}>/dev/null; ls",  # PATH=10: `ls` is looked up in ./10
    "exec {a[$(reboot)]}>/dev/null",
    # tree-sitter read leading and trailing redirections and no command: the words
    # bash runs went into the file of `2>&1` (found by a random differential run)
    ">/dev/null 2>&1 reboot >/dev/null",
    "&>/tmp/o 2>&1 reboot >|/tmp/o -f",
    ">/dev/null 2>&1 rm -rf / >/dev/null",
    # after an escaped blank a # is inside a word; tree-sitter read a comment
    "echo \\ #$(reboot)",
    "\\ # >(reboot)",
    # `[rm]` is a glob naming the program, not a test (tree-sitter: a test command)
    "id | [rm]",
    "[reboot]",
    # bash expands compgen's -W word list: command substitution included
    "compgen -W '$(reboot)'",
    "compgen -aW '`reboot`' x",
]

# Programs that run a command named in an option or argument, which hoopy did not know
# (checked on hoopy's side: the sandbox has no real strace, sort or wget).
PROGRAM_ATTACKS = [
    "rlwrap rm -rf /",
    "strace -o '|rm -rf /' true",  # the trace is piped to a shell command
    "strace -fo'!reboot' true",
    "strace --out='|reboot' true",
    "strace -E LD_PRELOAD=/tmp/x.so ls",  # the traced program's environment
    "strace --env=LD_PRELOAD=/tmp/x.so ls",
    "sort --compress-program=reboot f",  # run on sort's temporary files
    "sort --compress=reboot f",  # getopt_long takes any unambiguous prefix
    "split --filter='rm -rf /' f",
    "split --fil='rm -rf /' f",
    "tcpdump -z reboot -G 1 -w x",  # run on each file written
    "tcpdump -nzreboot -G 1 -w x",
    "wget --use-askpass=reboot http://x",
    "wget -e use_askpass=reboot http://x",  # a wgetrc command
    "wget --use-a=reboot http://x",
    "exim -be '${run{/sbin/reboot}}'",  # string expansion test mode runs ${run…}
    "exim4 -bem /tmp/m",
    "x=--compress-program=reboot; sort $x f",
    "echo --compress-program=reboot | xargs sort",
    # interpreters and runners hoopy did not know
    "ipython -c 'import os; os.system(\"reboot\")'",
    "gnuplot -e 'system(\"reboot\")'",
    "octave --eval 'system(\"reboot\")'",
    "emacsclient -e '(shell-command \"reboot\")'",
    "erl -eval 'os:cmd(\"reboot\")'",
    "hyperfine 'reboot'",
    "npx x",
    "npm exec reboot",
    "cmake -E env reboot",
    "qemu-x86_64 /bin/rm -rf /",
    "go run x.go",
    "uv run reboot",
    "poetry run reboot",
    "bundle exec reboot",
    "conda run reboot",
    "nix-shell --run reboot",
    "scl enable x 'reboot'",
    "pip install ./x",  # a package's build runs its code
    "aria2c --on-download-complete=/tmp/x http://h",
    "yt-dlp --exec 'rm -rf /' http://h",
    "yt-dlp --exe 'rm -rf /' http://h",
    "rpm --eval '%(reboot)'",
    "rpm -E '%(reboot)'",
    "helm install x c --post-renderer /tmp/x",
    "tshark -X lua_script:x.lua",
    # programs reading commands from their input, where `!cmd` runs cmd on this host
    # (`ssh gw 'sftp h'` with `!rm -rf /` on stdin)
    "sftp h",
    "ftp",
    "lftp h",
    "telnet h 25",
]

# Look-alikes that stay allowed (they run no denied program).
HARMLESS = [
    "echo {fd} >/tmp/f",  # a blank between: a word {fd}, then a redirection
    "echo {a,b}>/tmp/f",  # brace expansion, no variable
    'echo "{fd}">/tmp/f',
    "ls >&-",
    "ls 2>&- /tmp",
    "exec {fd}>/tmp/f",
    ">/dev/null 2>&1",
    "echo \\\\ #$(reboot)",  # an escaped backslash, then a blank: a comment
    "[ -f /tmp/x ] && id",
    "[[ -f /tmp/x ]]",
    "compgen -W 'start stop' st",
    "strace -o /tmp/out -f ls",
    "strace -e trace=open ls",
    "sort -k2 -n --reverse f",
    "split -l 10 f",
    "tcpdump -i eth0 -n -w x",
    "wget -q -O - --user=x http://x",
    "exim -bp",
    "rlwrap --version",
    "pip list",
    "rpm -qa",
    "helm list -A",
    "tshark -r f",
    "yt-dlp -f best http://x",
    "ipython --version",
]

# On a terminal (`ssh -t host cmd`, PTY lines) these open an editor or a program whose
# keys run shell commands (vi's `:!`, micro's `run`, ncdu's `b`).
ON_A_TERMINAL = [
    "sudo -e /etc/hosts",
    "sudo -u root -e /etc/hosts",
    "sudo --user root --edit /etc/hosts",
    "kubectl edit deploy x",
    "hg commit",
    "svn propedit x",
    "apt edit-sources",
    "micro /etc/hosts",
    "mg /etc/hosts",
    "ncdu /",
    "w3m http://x",
]
NOT_ON_A_TERMINAL = ["sudo -u root ls -e", "kubectl get pods", "hg log", "apt list"]


@pytest.mark.parametrize("line", ATTACKS)
def test_attack_is_denied(line: str) -> None:
    decision = decide([POLICY], AGENT, ssh(line))
    assert not decision.allowed, (line, [c.argv for c in read_line(line).commands])


@pytest.mark.parametrize("line", PROGRAM_ATTACKS)
def test_program_attack_is_denied(line: str) -> None:
    decision = decide([POLICY], AGENT, ssh(line))
    assert not decision.allowed, (line, [c.argv for c in read_line(line).commands])


@pytest.mark.parametrize("line", ON_A_TERMINAL)
def test_an_editor_on_a_terminal_is_opaque(line: str) -> None:
    assert not read_line(line).opaque, line  # without a terminal it opens nothing
    assert on_a_terminal(read_line(line)).opaque, line


@pytest.mark.parametrize("line", NOT_ON_A_TERMINAL)
def test_no_editor_on_a_terminal_is_read(line: str) -> None:
    assert not on_a_terminal(read_line(line)).opaque, line


@pytest.mark.parametrize("line", HARMLESS)
def test_look_alike_is_allowed(line: str) -> None:
    decision = decide([POLICY], AGENT, ssh(line))
    assert decision.allowed, (line, decision, read_line(line))


# Redirection operators around a wrapped program, in the places bash takes them.
OPERATORS = [
    ">&-", "<&-", "2>&-", "0<&-", "3<&-", ">&2", "<&0", "2>&1", "&>/tmp/o", "&>>/tmp/o",
    ">|/tmp/o", "<>/tmp/o", "3<>/tmp/o", ">/tmp/o", "</dev/null", "<<<x", "3>&1-", "{fd}>&-",
    "{fd}>/tmp/o", "{fd}</dev/null", "{fd}>>/tmp/o", "{fd}>&2", ">&/tmp/o", "2>/tmp/o",
]  # fmt: skip
WRAPPED = ["", "nice ", "exec ", "env ", "command ", "timeout 5 ", "nohup ", "setsid "]
REDIRECTION_LINES = [
    line
    for op, w in itertools.product(OPERATORS, WRAPPED)
    for line in (f"{w}{op} reboot -f", f"{w}reboot {op} x", f"{op} {w}reboot")
]


def test_every_program_bash_runs_is_seen_or_the_line_is_opaque(tmp_path: Path) -> None:
    lines = list(dict.fromkeys(ATTACKS + HARMLESS + REDIRECTION_LINES))
    _build(tmp_path, lines)
    _run(tmp_path)
    missed = []
    for i, line in enumerate(lines):
        runs = _logged((tmp_path / "logs" / f"{i:04d}").read_text(errors="replace"))
        reading = read_line(line, interactive=False)
        if reading.opaque:
            continue
        seen = [c.argv for c in reading.commands]
        missed += [(line, argv, seen) for argv in runs if not any(_mentions(s, argv) for s in seen)]
    assert missed == [], "\n".join(map(repr, missed))


# An interactive bash with interactive_comments off reads `#$(reboot)` as a word.
@pytest.mark.parametrize("line", ["shopt -u interactive_comments", "set +o interactive-comments"])
def test_turning_comments_off_is_opaque(line: str) -> None:
    assert read_line(line, interactive=True).opaque, line


# In an interactive shell (a PTY line) `exec` with a new stdin makes bash read its next
# lines from there: code hoopy never sees.  Under `bash -c` (an exec request) it does not.
NEW_SHELL_INPUT = [
    "exec <<< 'reboot'",
    "exec <<E\nreboot\nE",
    "exec < <(echo reboot)",
    "exec 0</tmp/cmds",
    "exec <&3",
    "builtin exec </tmp/cmds",
    "command exec </tmp/cmds",
]


@pytest.mark.parametrize("line", NEW_SHELL_INPUT)
def test_exec_giving_the_shell_new_input_is_opaque_on_a_pty(line: str) -> None:
    assert read_line(line, interactive=True).opaque, line
    assert not read_line(line, interactive=False).opaque, line


@pytest.mark.parametrize("line", ["exec >/tmp/x", "exec 2>&1", "exec 3</tmp/x", "exec ls </tmp/x"])
def test_exec_with_other_redirections_stays_visible(line: str) -> None:
    assert not read_line(line, interactive=True).opaque, line


def test_the_fingerprint_tells_a_terminal_apart() -> None:
    """Sessions cache decisions by fingerprint: `less f` allowed without a terminal must
    not answer for `less f` on one (where its `!` runs what is typed)."""
    plain, on_tty = read_line("less /etc/hostname"), on_a_terminal(read_line("less /etc/hostname"))
    assert shell_command("ssh", "web-1", plain).fingerprint != (
        shell_command("ssh", "web-1", on_tty).fingerprint
    )
