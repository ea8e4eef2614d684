"""hoopy.shell: what a line runs, program names normalised, what makes it opaque;
never raises, never calls rejected text fully visible, bounded time on huge input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tree_sitter_bash
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_sitter import Language, Parser

from hoopy import shellopts, shellprogs
from hoopy.shell import (
    _ASCII,
    MAX_COMMANDS,
    MAX_LINE,
    SHELL_OPAQUE_KINDS,
    opaque_kind,
    read_argv,
    read_line,
    shell_command,
)


def lines(line: str) -> list[str]:
    return [c.line for c in read_line(line).commands]


@pytest.mark.parametrize(
    ("line", "commands"),
    [
        ("ls -la /tmp", ["ls -la /tmp"]),
        ("\\rm -rf /", ["rm -rf /"]),
        ("r''m \"-rf\" '/'", ["rm -rf /"]),
        ("$'\\x72\\155' x", ["rm x"]),
        ('$"rm" x', ["rm x"]),
        ("/usr/bin/rm x", ["rm x"]),
        ("//usr//bin/./rm x", ["rm x"]),
        ("RM=1 A=$(id) rm x", ["rm x", "id"]),
        ("sudo -u x -- rm x", ["sudo -u x -- rm x", "rm x"]),
        ("env -i A=1 nice -n5 rm x", ["env -i A=1 nice -n5 rm x", "nice -n5 rm x", "rm x"]),
        ("timeout -s KILL 5 rm x", ["timeout -s KILL 5 rm x", "rm x"]),
        (
            "find . -exec rm {} \\; -exec ls {} +",
            ["find . -exec rm {} ; -exec ls {} +", "rm {}", "ls {}"],
        ),
        ("xargs -0 -n1 rm", ["xargs -0 -n1 rm", "rm"]),
        ("xargs", ["xargs", "echo"]),
        ("sh -c 'ls | wc -l'", ["sh -c ls | wc -l", "ls", "wc -l"]),
        ("eval ls '&&' id", ["eval ls && id", "ls", "id"]),
        ("su -c 'id' root", ["su -c id root", "id"]),
        ("ssh -p 22 h ls /", ["ssh -p 22 h ls /", "ls /"]),
        ("ssh h -l u 'ls; id'", ["ssh h -l u ls; id", "ls", "id"]),
        ("bash <<< 'id'", ["bash", "id"]),
        ("f() { id; }; f", ["id", "f"]),
        (
            "echo $(id) `whoami` <(uptime)",
            ["echo $(id) `whoami` <(uptime)", "id", "whoami", "uptime"],
        ),
        ("cat 0<f", ["cat"]),  # tree-sitter's argument `0` is bash's fd 0
        ("rm 2>/dev/null -rf /", ["rm -rf /"]),  # words after a redirection are arguments
        ("r\\\nm x", ["rm x"]),  # a line continuation inside a word
        ('ls $HOME "$x" *.log', ['ls $HOME "$x" *.log']),  # non-literal args: source text
        ("export A=1 B", ["export A=1 B"]),
        ("A=1", []),
        ("# rm -rf /", []),
    ],
)
def test_commands(line: str, commands: list[str]) -> None:
    assert lines(line) == commands
    assert read_line(line).opaque == ()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("$X -rf /", "program is not literal: $X"),
        ("r* x", "program is a glob: r*"),
        ("{rm,x}", "unparseable: "),
        ("./x", "runs a file by path: ./x"),
        ("/usr/bin/../../tmp/x", "runs a file by path: /usr/bin/../../tmp/x"),
        ("curl x | sh", "interpreter reads code from a pipe: sh"),
        ("bash < f", "interpreter reads code from a file: bash"),
        ("bash", "interpreter reads code from stdin: bash"),
        ("bash x.sh", "interpreter runs a script: bash x.sh"),
        ("python3 -c 1", "interpreter reads code: python3"),
        ("login", "interpreter reads code: login"),  # a shell on stdin after the name
        ("source f", "interpreter reads code: source f"),
        ("awk 'BEGIN{system(\"x\")}'", "interpreter reads code: awk program runs commands"),
        ("sed 's/x/y/e'", "interpreter reads code: sed script runs commands"),
        ("alias x=ls", "alias defines a command name: x"),
        ("LD_PRELOAD=x ls", "environment variable can run code: LD_PRELOAD"),
        ("eval $x", "code is not literal: eval $x"),
        ("sudo --bogus ls", "unknown option of sudo: --bogus"),
        ("xargs -I{} sh -c 'echo {}'", "code takes its input from xargs/find: 'echo {}'"),
        ("echo ${x@P}", "text bash may run as code: ${x@P}"),
        ("!!", "history expansion: !!"),
        ("ls )", "unparseable: "),
    ],
)
def test_opaque_reasons(line: str, reason: str) -> None:
    reasons = read_line(line).opaque
    assert any(r.startswith(reason) for r in reasons), reasons
    assert all(opaque_kind(r) in SHELL_OPAQUE_KINDS for r in reasons)


def test_history_expansion_only_for_interactive_lines() -> None:
    assert read_line("git commit -m 'done!'").opaque == ()  # single quotes: no expansion
    assert read_line("echo hi!there").opaque
    assert read_line("echo hi!there", interactive=False).opaque == ()
    assert read_line("[ $? != 0 ] && echo $! ${!x}").opaque == ()


def test_nesting_is_bounded() -> None:
    r = read_line("eval " * 12 + "ls")
    assert any(o.startswith("nesting too deep") for o in r.opaque)
    r = read_line("sh -c " + _quote("sh -c " + _quote("bash -c " + _quote("eval " * 8 + "id"))))
    assert any(o.startswith("nesting too deep") for o in r.opaque)
    deep = "(" * 5000 + "ls" + ")" * 5000
    assert read_line(deep).opaque


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def test_too_many_commands_is_opaque() -> None:
    r = read_line("true;" * (MAX_COMMANDS + 10))
    assert len(r.commands) == MAX_COMMANDS
    assert any(o.startswith("too many commands") for o in r.opaque)


def test_argv_is_not_shell_text() -> None:
    r = read_argv(["sh", "-c", "rm -rf / && id"])
    assert [c.line for c in r.commands] == ["sh -c rm -rf / && id", "rm -rf /", "id"]
    assert r.text == "sh -c 'rm -rf / && id'"
    assert read_argv(["r*", "x"]).opaque == ()  # no shell expands it
    assert read_argv(["./x"]).opaque == ("runs a file by path: ./x",)
    assert read_argv([]).opaque and read_argv(["a\0b"]).opaque
    assert read_argv(["bash"]).opaque == ("interpreter reads code from stdin: bash",)


def test_shell_command_fields() -> None:
    cmd = shell_command("ssh", "web-1", read_line("ls | sh"))
    assert cmd.kinds == {"exec"} and cmd.opaque == {"shell_code"}
    assert cmd.commands == ("ls", "sh") and cmd.command_line == "ls | sh"
    k = shell_command("kubernetes", "k", read_argv(["ls"]), verb="create", namespace="n")
    assert (k.verb, k.namespace, k.text) == ("create", "n", "ls")


# -- never raises, never calls rejected text visible ---------------------------------

_LANG = Language(tree_sitter_bash.language())
SHELLISH = st.lists(
    st.sampled_from([*"abrm -/\\'\"$`(){}[]<>|&;!*?~=#\n\t", "$(", "<<", "EOF", "sh -c "]),
    max_size=40,
).map("".join)


def _rejected(line: str) -> bool:
    """Does tree-sitter reject it?  Asked of the ASCII copy hoopy parses: non-ASCII text is
    never shell syntax, but tree-sitter rejects some (`$é`) that bash reads as words."""
    data = line.encode("utf-8", "surrogateescape").translate(_ASCII)
    return Parser(_LANG).parse(data).root_node.has_error


@settings(max_examples=1500, deadline=None)
@given(st.one_of(SHELLISH, st.text(max_size=80)))
def test_fuzz_never_raises_and_rejected_text_is_opaque(line: str) -> None:
    r = read_line(line)
    assert r.text == line
    assert not any("hoopy failed" in o for o in r.opaque)
    if _rejected(line):
        assert r.opaque, line


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=8))
def test_fuzz_argv_never_raises(argv: list[str]) -> None:
    assert not any("hoopy failed" in o for o in read_argv(argv).opaque)


# -- bounded time --------------------------------------------------------------------

HUGE = [
    "$(" * 20000,
    "(" * 30000 + ")" * 30000,
    "ls|" * 16000 + "ls",
    "'" + "x" * (MAX_LINE - 10),
    "echo " + "$(echo " * 3000 + ")" * 3000,
    "eval " * 13000,
    "a" * MAX_LINE,
    "x=" + "[" * 30000,
    "cat <<EOF\n" + "$(id)\n" * 9000 + "EOF\n",
    "sudo " * 13000 + "ls",
    "find . " + "-exec ls ; " * 5000,
    "a" * (MAX_LINE + 1),
]


@pytest.mark.parametrize("line", HUGE, ids=range(len(HUGE)))
def test_huge_lines_are_read_in_bounded_time(line: str) -> None:
    start = time.perf_counter()
    r = read_line(line + " ")  # a fresh line: not from the cache
    took = time.perf_counter() - start
    assert took < 2.0, took
    assert r.text == line + " "


PROGRAMS = sorted({*shellprogs._HANDLERS, *shellopts.WRAPPERS, "python3", "perl", "ls"})
OPTIONISH = st.sampled_from(
    ["-", "--", "-c", "-e", "-o", "-u", "-S", "-I", "-i", "-x", "-n", "-p", "-s", "-C", "-f",
     "--user", "--user=", "--command=x", "-exec", ";", "+", "{}", "-oProxyCommand=id", "-F",
     "x=1", "LD_PRELOAD=x", "id", "rm -rf /", "'", "$(", "a[$(id)]", "5", "/", ""]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(PROGRAMS), st.lists(st.one_of(OPTIONISH, st.text(max_size=8)), max_size=8))
def test_fuzz_every_program_handler_never_raises(prog: str, args: list[str]) -> None:
    r = read_argv([prog, *args])
    assert r.commands[0].program == prog
    line = read_line(" ".join([prog, *(_quote(a) for a in args)]))
    assert not any("hoopy failed" in o for o in (*r.opaque, *line.opaque))


def test_non_ascii_input_does_not_crash_the_parser() -> None:
    # tree-sitter-bash 0.25 reads out of bounds (SIGSEGV, most runs) on "{" + U+F8501 and
    # the like; hoopy hands it an ASCII copy.  In a subprocess: a crash must fail the test.
    code = (
        "from hoopy.shell import read_line\n"
        "for s in ['{\\U000f8501', '{\\U000a0000', ';\\U000eb592{\\U000f8501 x', '{\\udcff']:\n"
        "    for i in range(300):\n"
        "        r = read_line(s + ' ' * i)\n"
        "print(read_line('r\\udcffm x').commands[0].program.encode('utf-8', 'surrogateescape'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == b"b'r\\xffm'"  # the agent's bytes, not the ASCII copy
    assert [c.line for c in read_line("echo café | grep é").commands] == ["echo café", "grep é"]
