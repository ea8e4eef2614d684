"""Attack review of the shell classifier (hoopy.shell): each line here once made the
backend run a denied program while hoopy reported only allowed ones (or nothing it
could not read).  Each must now be denied by a policy that denies reboot/rm and allows
every visible command; the look-alikes beside them must still pass.  A differential
run under real bash (tests/test_shell_bash.py's sandbox) checks that what bash runs
for these lines is seen or the line is opaque."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hoopy.policy import decide
from hoopy.protocols.ssh.channel import env_allowed
from hoopy.shell import read_argv, read_line, shell_command
from tests.test_policy_shell import AGENT, POLICY
from tests.test_shell_bash import _build, _logged, _mentions, _run

# Lines that ran a denied program (bash output confirmed in the sandbox below).
ATTACKS = [
    # tree-sitter leaves backquotes and $( in some ${…} operands as text; bash runs them
    "echo ${x:-`reboot x`}",
    'echo "${x:-`reboot`}"',
    "echo ${x:=`reboot`}",
    "echo ${x?`reboot`}",
    "x=1; echo ${x#$(reboot)}",
    "x=1; echo ${x%%`reboot`}",
    "x=${y:-`reboot`}",
    # in double quotes, '…' in a ${…} operand is no quoting
    "echo \"${x:-'$(reboot)'}\"",
    "x=1; echo \"${x:+'$(reboot)'}\"",
    # in an unquoted here-document: quotes are no quoting, continued lines are joined
    # before expansion (found by a random differential run against bash)
    "cat <<E\n\"${x:-'$(reboot -f)'}\"\nE",
    "cat <<E\nx $($'r\\\neboot' -f) y\nE",
    "cat <<E\nx \"`$'reboo\\\nt' -f`\" y\nE",
    "cat <<EOF\n\t$(reboot && ( id ))\nEOF",  # a tab first: tree-sitter reads no $(…)
    "cat <<-EOF\n\t$(reboot)\n\tEOF",
    "x='$(reboot)'; cat <<EOF\n\t${x@P}\nEOF",
    # `$\<newline>(` is `$(` to bash, in "…" too; tree-sitter read it as text
    "echo a${x:-\"$\\\n($'reboot' x)\"}b",
    'echo "a${x:=$\\\n(\\reboot)}b"',
    'echo "$(echo "$\\\n(/usr/bin/reboot)")"',
    "x=${x:=$\\\n(reboot -f)}",
    'echo x 2>${x:-"$\\\n("reboot")"}',
    'sh -c \'echo "$\\\n("reboot")"\'',
    "echo \"a$\\\n( (re''boot) )b\"",
    "for i in `echo $($'reb\\\noot' -f)`; do :; done",
    # tree-sitter drops an escaped blank after a quote or expansion, and ends a
    # redirection's word at a line continuation; bash joins both into one word
    "sh -c 'id'\\ ';reboot -f'",
    "sh -c \"id\"\\ ';reboot'",
    "bash -c $'id'\\ ';reboot'",
    "A=$HOME\\ id reboot -f",
    'A="$HOME"\\ id reboot -f',
    "</dev/n\\\null reboot x",
    "cat </dev/n\\\null reboot x",
    # bash's brace expansion reads past a `}` with no comma before it
    '"re"{\\boot},}',
    "x\\\n= reboot -f",
    "doa\\\ns= reboot -rf /",
    "echo a\\\n#$(reboot)",  # joined, the # is inside a word: no comment
    # bash removes \` \$ \\ inside `…` before reading the command; tree-sitter does not
    "echo `echo \\`reboot x\\``",
    "x=`echo \\`reboot\\``",
    "echo `eval \\`echo reboot\\``",
    # env takes any word with "=" for an assignment: hoopy took it for the program
    "env 'BASH_FUNC_ls%%=() { reboot; }' bash -c ls",
    "env 'BASH_FUNC_ls%%=() { reboot; }' sh -c ls",
    "env 'x y=1' reboot",
    # tree-sitter takes CR, VT, FF for blanks, bash for part of the word: the program
    # bash runs is `ls\rreboot`, not the `ls` hoopy reported
    "ls\rreboot x",
    "ls\x0breboot x",
    "ls -l\x0c; id",
    # env -S: \_ separates words (hoopy's shlex.split read `reboot_x`)
    "env -S 'reboot\\_x'",
    "env -S'reboot\\_-f'",
    # env -S: options in the split string are read as env's own
    "env -S'-u X' reboot",
    "env -S'-- reboot'",
    "env -S'-S reboot'",
]

# Programs that run another program named in their arguments, which hoopy did not
# know (the sandbox has no real toybox or git: these are checked on hoopy's side).
PROGRAM_ATTACKS = [
    "toybox rm -rf /",
    "coreutils rm -rf /",
    "coreutils --coreutils-prog=rm -rf /",
    "fakeroot rm -rf /",
    "setarch x86_64 rm -rf /",
    "linux64 rm -rf /",
    "valgrind rm -rf /",
    "systemd-inhibit rm -rf /",
    "ssh-agent rm -rf /",
    "dbus-launch rm -rf /",
    "xvfb-run rm -rf /",
    "run-parts /tmp/d",
    "start-stop-daemon --start --exec /usr/bin/rm -- -rf /",
    "firejail rm -rf /",
    "bwrap --bind / / rm -rf /",
    "perf stat rm -rf /",
    "entr rm -rf /",
    "chpst rm -rf /",
    "envdir d rm -rf /",
    "cpulimit -l 5 rm -rf /",
    "mpirun rm -rf /",
    "gosu root rm -rf /",
    "su-exec root rm -rf /",
    "tini -- rm -rf /",
    "dumb-init rm -rf /",
    "docker exec c rm -rf /",
    "kubectl exec p -- rm -rf /",
    "git difftool --extcmd='rm -rf /'",
    "git bisect run rm -rf /",
    "git rebase --exec 'rm -rf /' HEAD~1",
    "git rebase -x 'rm -rf /' HEAD~1",
    "git submodule foreach 'rm -rf /'",
    "git filter-branch --tree-filter 'rm -rf /'",
    "git grep -O'rm -rf' x",
    "git clone -u 'rm -rf /' r",
    "git clone --config=core.sshCommand='rm -rf /' r",
    "rg --pre rm pattern",
    "fd x -x rm",
    "fdfind -X rm",
    "apt-get -o APT::Update::Pre-Invoke::='rm -rf /' update",
    "dpkg --pre-invoke='rm -rf /' -i f.deb",
    "ansible all -m shell -a 'rm -rf /'",
    "echo '* * * * * rm -rf /' | crontab -",
    "mosh h -- rm -rf /",
    # bash 5.3 runs ${ cmd; } and ${| cmd; } (tree-sitter reads `${<newline>rm<newline>}`
    # as the variable rm)
    "echo ${\nrm -rf /\n}",
    'echo "${\nrm -rf /\n}"',
    "cat <<E\n${\nrm -rf /\n}\nE",
    "echo ${ rm -rf /; }",
    "echo ${|rm -rf /;}",
    # a login shell other than bash: zsh's =cmd and precommand modifiers, fish's or/not
    "=rm -rf /",
    "noglob rm -rf /",
    "nocorrect rm -rf /",
    "- rm -rf /",
    "repeat 1 rm -rf /",
    "false; or rm -rf /",
    "not rm -rf /",
    # a word known only at run time among the options hoopy reads: word splitting (or
    # the value) puts another command or option there
    "x='5 rm -rf /'; nice -n $x ls",
    "u='root rm -rf /'; sudo -u $u ls",
    "x='-c alias.l=!rm\\ -rf\\ / l'; git $x",
    'x=-c; y=alias.l=!reboot; git "$x" "$y" l',
    'x=--to-command=reboot; tar xf f.tar "$x"',
    'x=--expression=1e\\ reboot; sed -n p "$x" f',
    "touch 5 rm; timeout [5r]* -rf /",
    # xargs's input (or find's file name) as the program or among a program's options
    "echo rm | xargs -I{} {} -rf /",
    "echo rm | xargs -i {} -rf /",
    "echo rm | xargs -Ix xy -rf /",
    "echo rm | xargs -I{} env {} -rf /",
    "find / -name rm -exec {} -rf / \\;",
    "echo rm -rf / | xargs env",
    "echo rm -rf / | xargs nice",
    "echo --to-command=rm | xargs tar xf a.tar",
    "ssh -I /tmp/x.so h true",  # a PKCS#11 library is code ssh loads
    "ssh -o PKCS11Provider=/tmp/x.so h true",
    "ssh -oSecurityKeyProvider=/tmp/x.so h true",
    # systemd-run's unit properties and environment run code
    "systemd-run -p ExecStartPre='/bin/rm -rf /' true",
    "systemd-run --property=ExecStopPost=/bin/rm true",
    "systemd-run -E LD_PRELOAD=/tmp/x.so true",
    "echo a | xargs --process-slot-var=PATH sh -c ls",  # PATH=0: ./0/ls
    # sudo -s/-i hands the words to a shell escaped, all but letters, digits, _ - $
    "sudo -s 'rm$IFS-rf$IFS/'",
    "sudo -i 'rm$IFS-rf$IFS/'",
    "sudo --login 'x=rm;$x'",
]

# Lines that make a later program run other code, by setting a variable such as PATH
# or LD_PRELOAD in ways hoopy did not see as assignments: each must be opaque.
SETS_CODE_VARIABLES = [
    "declare -n r=PATH; r=/tmp; ls",
    "local -n r=PATH",
    "declare -n r; r=PATH; r=/tmp",
    "for PATH in /tmp; do ls; done",
    "select PATH in /tmp; do ls; done",
    "unset PATH; ls",  # bash's default PATH ends with "."
    "unset PATH; : ${PATH:=/tmp}; ls",
    ": ${BASH_ENV:=/tmp/x}; export BASH_ENV; bash -c ls",
    ": ${LD_PRELOAD=/tmp/x.so}",
    "getopts a PATH",
    'a=PATH; declare "$a=/tmp"; ls',
    "declare ${a}=/tmp",
    'export "PATH=/tmp"; ls',
    "export 'LD_PRELOAD'=/tmp/x.so; ls",
    'typeset -x "LD_PRELOAD=/x"',
    "printf -vPATH /tmp; ls",
    "read -aPATH <<< /tmp; ls",
    "((PATH=1)); ls",  # ./1/ls
    "echo $((PATH=1)); ls",
    "echo $[PATH=1]; ls",
    "let PATH=1; ls",
    "let 'PATH = 1'; ls",
    "for ((PATH=1;;)); do ls; break; done",
    "x='PATH=1'; echo $((x)); ls",
    "[[ 'PATH=1' -eq 1 ]]; ls",
    "wait -p PATH; ls",
    "sudo 'BASH_FUNC_ls%%=() { reboot; }' bash -c ls",
    "TAR_OPTIONS=--to-command=reboot tar xf a.tar",
    "RSYNC_RSH='reboot #' rsync a h:b",
    "GCONV_PATH=/tmp/x iconv -f x",
    "LUA_INIT='os.execute(\"reboot\")' lua5.4 -v",
    "export JAVA_TOOL_OPTIONS=-javaagent:/tmp/a.jar",
    # bash's hash table and aliases as arrays: `id` then runs reboot
    "BASH_CMDS[id]=/usr/bin/reboot; id",
    "BASH_CMDS=([id]=/usr/bin/reboot); id",
    "declare -A BASH_CMDS; BASH_CMDS[id]=/usr/bin/reboot; id",
    "shopt -s expand_aliases\nBASH_ALIASES[x]=reboot\nx",
    "shopt -s expand_aliases\nBASH_ALIASES=([x]=reboot)\nx",
    "read 'BASH_CMDS[id]' <<< /usr/bin/reboot; id",
    "printf -v 'BASH_CMDS[id]' /usr/bin/reboot; id",
    "export BASH_CMDS[id]=/usr/bin/reboot; id",
]

# Settings that change how bash reads the lines after them.
CHANGES_PARSING = [
    "set -k; id LD_PRELOAD=/tmp/x.so",  # -k: NAME=value anywhere goes to the environment
    "set -o keyword; id LD_PRELOAD=/tmp/x.so",
    "set -o posix",
    "shopt -s compat31",
    "POSIXLY_CORRECT=1",
    "BASH_COMPAT=3.1",
]

# Must stay fully visible (no over-reach of the fixes above).
LOOK_ALIKES = [
    "echo '$(reboot)'",
    "echo $'\\x24(reboot)'",
    'echo "\\`reboot\\`"',
    "grep 'a`b' f",
    'printf "%s" "it is \\$(x)"',
    "echo ${x:-a} $(id) `id`",
    'echo "${x:-$HOME}"',
    "cat <<'E'\n`reboot` $(reboot)\nE",
    "echo \\\\`id`",
    "echo `ls`",
    "for i in 1 2; do echo $i; done",
    "unset x y; export FOO=bar LANG=C; local x; readonly X=1",
    "declare -a arr=(1 2); declare -n ref=other; typeset -i n=5",
    "(( i++ )); [[ $x -eq 1 ]]; echo $((i+1)) $((PATH_LEN + 1)) ${#PATH} ${PATH:-/bin}",
    "echo PATH=$PATH; export PATH; grep 'PATH=' /etc/environment",
    "read -r line; printf -v out '%s' x; getopts ab opt; let i++; wait -n",
    "env A=1 ls; env -- B=2 id",
    "sudo -i ls -la; sudo -s 'ls; id'; crontab -l; git log -x; git rebase main",
    'echo "a\rb" "$x\r$y"',
    'echo ${x} ${#x} "${x:- a}" ${x:-\\ a}',
    "cat <<'E'\n${\nreboot\n}\nE",
    "echo ${x:-'$(reboot)'} \"${x:-$HOME}\" '\"${x:-$(id)}\"'",
    'git log "$b"; git log $b; git commit -m "$(date)"; sudo ls *; nice ls $x',
    'timeout 5 cat "$f"; env A=1 ls "$d"; sudo -u root ls $x',
    "echo 'a b'\\\nc \"$x\" d\\ e; x=1 ls; cat </dev/null; echo a{b,c}d {x}",
    "cat <<EOF\nhello $x \\$(no)\n\t${x}\nEOF\ncat <<'EOF'\n\t$(reboot)\nEOF",
    "set -euo pipefail; set -x; shopt -s extglob nullglob; a[1]=x; set -- a b",
    "systemd-run -p MemoryMax=1G --wait true; echo a | xargs --process-slot-var=SLOT ls",
    "echo x | xargs sudo ls; echo x | xargs -0 -n1 ls; find . -exec ls {} \\;",
    "echo a#b 'c'#d # a comment \\\nls # another",
    "coreutils ls; toybox ls; docker ps; kubectl get pods; rg -n x; fd -e py; dpkg -l",
]


def _decision(line: str) -> str:
    return decide([POLICY], AGENT, shell_command("ssh", "web-1", read_line(line))).outcome


@pytest.mark.parametrize("line", ATTACKS)
def test_attack_is_denied(line: str) -> None:
    assert _decision(line) == "deny", read_line(line)
    assert read_line(line, interactive=False).opaque or any(
        c.program == "reboot" for c in read_line(line, interactive=False).commands
    )


@pytest.mark.parametrize("line", PROGRAM_ATTACKS)
def test_program_attack_is_denied(line: str) -> None:
    assert _decision(line) == "deny", read_line(line)


@pytest.mark.parametrize("line", SETS_CODE_VARIABLES)
def test_setting_a_code_variable_is_opaque(line: str) -> None:
    reasons = read_line(line, interactive=False).opaque
    assert any(r.startswith("environment variable can run code") for r in reasons), reasons
    assert _decision(line) == "deny"


@pytest.mark.parametrize("line", CHANGES_PARSING)
def test_a_setting_that_changes_parsing_is_opaque(line: str) -> None:
    assert read_line(line, interactive=False).opaque
    assert _decision(line) == "deny"


@pytest.mark.parametrize("line", LOOK_ALIKES)
def test_look_alike_passes(line: str) -> None:
    assert _decision(line) == "allow", read_line(line)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, ...]]]:
    root: Path = tmp_path_factory.mktemp("attacks")
    lines = list(dict.fromkeys(ATTACKS + LOOK_ALIKES + ["true"]))  # the runner ends true
    _build(root, lines)
    _run(root)
    return {
        line: _logged((root / "logs" / f"{i:04d}").read_text(errors="replace"))
        for i, line in enumerate(lines)
    }


def test_bash_runs_reboot_for_the_attacks(ran: dict[str, list[tuple[str, ...]]]) -> None:
    # the attacks are real: bash does run a denied program for most of them
    hits = [line for line in ATTACKS if any(argv[0] == "reboot" for argv in ran[line])]
    assert len(hits) >= len(ATTACKS) // 2, hits


def test_what_bash_runs_is_seen_or_opaque(ran: dict[str, list[tuple[str, ...]]]) -> None:
    missed = []
    for line, runs in ran.items():
        reading = read_line(line, interactive=False)
        if reading.opaque:
            continue
        seen = [c.argv for c in reading.commands]
        missed += [(line, a) for a in runs if not any(_mentions(s, a) for s in seen)]
    assert missed == []


def test_argv_is_read_without_a_shell() -> None:
    assert read_argv(["sh", "-c", "echo ${x:-`reboot`}"]).opaque


def test_a_big5_locale_makes_bash_read_bytes_as_hoopy_does_not(tmp_path: Path) -> None:
    """Why hoopy passes only UTF-8/C locales to the backend: in BIG5, 0xa5 0x5c is one
    character, so the backslash hoopy sees escaping the quote is no backslash to bash."""
    locale = tmp_path / "zh_TW.BIG5"
    made = subprocess.run(
        ["localedef", "-i", "zh_TW", "-f", "BIG5", str(locale)], capture_output=True
    )
    # 1: warnings only.  .ci/run installs `locales` (the zh_TW source, the BIG5 charmap).
    assert made.returncode in (0, 1) and locale.exists(), made.stderr
    line = b'echo "\xa5\\" ; echo HIDDEN ; #"'.decode("utf-8", "surrogateescape")
    env = {"PATH": "/usr/bin:/bin", "LOCPATH": str(tmp_path), "LC_ALL": "zh_TW.BIG5"}
    out = subprocess.run(
        ["bash", "-c", line.encode("utf-8", "surrogateescape")], env=env, capture_output=True
    )
    assert b"HIDDEN\n" in out.stdout  # bash ran `echo HIDDEN`
    assert [c.program for c in read_line(line).commands] == ["echo"]  # hoopy: one echo
    for name, value, passed in [
        ("LC_ALL", "zh_TW.BIG5", False),
        ("LC_CTYPE", "ja_JP.SJIS", False),
        ("LANG", "zh_CN", False),  # no charset: the locale's own (GB2312)
        ("LANG", "en_US.UTF-8", True),
        ("LC_ALL", "de_DE.utf8@euro", True),
        ("LC_TIME", "C", True),
        ("LANG", "POSIX", True),
        ("TERM", "xterm", True),
        ("LD_PRELOAD", "/x.so", False),
    ]:
        assert env_allowed(name, value) is passed, (name, value)


def test_a_pager_or_editor_on_a_terminal_is_opaque() -> None:
    from hoopy.protocols.ssh.lineedit import LineReady, line_command
    from hoopy.shell import on_a_terminal

    for line in ["less f", "cat f | less", "systemctl status x", "git log", "man ls",
                 "git --no-pager commit", "systemctl --no-pager edit x", "crontab -e"]:  # fmt: skip
        assert on_a_terminal(read_line(line)).opaque, line
        assert line_command(LineReady(line), "web-1").opaque, line
    for line in ["ls", "git --no-pager log", "git -P diff", "journalctl --no-pager -u x"]:
        assert on_a_terminal(read_line(line)).opaque == (), line
    assert read_line("less f").opaque == ()  # without a terminal less only copies
