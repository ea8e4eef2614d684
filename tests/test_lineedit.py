"""The PTY line editor: keystrokes in, checked lines out (hoopy/protocols/ssh/lineedit.py).

Every byte fixture is fed whole, one byte at a time and in random splits: the events
must not depend on how the network cut the stream."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.policy import Identity, Match, PolicySet, Rule, SshMatch, decide
from hoopy.protocols.ssh.lineedit import (
    Abandoned,
    Forward,
    LineEditor,
    LineReady,
    _incomplete,
    line_command,
)

LEFT, RIGHT, HOME, END, DEL = b"\x1b[D", b"\x1b[C", b"\x1b[H", b"\x1b[F", b"\x1b[3~"
UP, DOWN = b"\x1b[A", b"\x1b[B"
PASTE, UNPASTE = b"\x1b[200~", b"\x1b[201~"


def run(data: bytes, **kw: int) -> list[object]:
    """Events for `data` fed whole, byte by byte and in random chunks: all the same."""
    whole = LineEditor(**kw).feed(data)
    ed = LineEditor(**kw)
    bytewise = [ev for i in range(len(data)) for ev in ed.feed(data[i : i + 1])]
    assert bytewise == whole
    rng = random.Random(len(data))
    ed, chunked, i = LineEditor(**kw), [], 0
    while i < len(data):
        n = rng.randint(1, 7)
        chunked += ed.feed(data[i : i + n])
        i += n
    assert chunked == whole
    return whole


def lines(data: bytes, **kw: int) -> list[tuple[str, tuple[str, ...]]]:
    return [(e.text, e.uncertain) for e in run(data, **kw) if isinstance(e, LineReady)]


def one(data: bytes) -> str:
    [(text, uncertain)] = lines(data)
    assert uncertain == (), uncertain
    return text


@pytest.mark.parametrize(
    ("typed", "line"),
    [
        (b"ls -l\r", "ls -l"),
        (b"ls -l\n", "ls -l"),
        (b"rmx\x7f -rf\r", "rm -rf"),
        (b"rmx\x08 /tmp\r", "rm /tmp"),
        (b"rm -rf /\x15echo hi\r", "echo hi"),
        (b"echo rm -rf /\x17\x17\x17ok\r", "echo ok"),
        (b"echo one two   \x17three\r", "echo one three"),
        (b"cho hi" + HOME + b"e\r", "echo hi"),
        (b"echo hi" + LEFT + LEFT + b"X" + END + b"!\r", "echo Xhi!"),
        (b"echo hi" + LEFT + LEFT + b"\x0b\r", "echo "),
        (b"echo hi" + HOME + DEL + b"E\r", "Echo hi"),
        (b"ls" + LEFT + RIGHT + RIGHT + RIGHT + b" -a\r", "ls -a"),
        (b"ls\x01#\x05 x\r", "#ls x"),
        (b"abc\x02\x02\x04\r", "ac"),
        (b"echo \xc3\xa9\x7f!\r", "echo !"),  # (a non-ASCII character deleted)
        (b"ls\x1bOD\x1bOD-\x1bOF\r", "-ls"),
        (b"ls" + b"\x1b[1~" + b"x\x1b[4~y\r", "xlsy"),
        (b"ls\x1b[12;40R\x1b[I\x1b[O\x0c\r", "ls"),  # terminal reports edit nothing
        (b"\r", ""),
    ],
)
def test_editing_keys(typed: bytes, line: str) -> None:
    assert one(typed) == line


def test_non_ascii_text_is_kept_and_makes_the_line_uncertain() -> None:
    # a backend readline in a C locale reads each byte >= 0x80 as a Meta key
    for typed, line in [
        (b"echo \xc3\xa9t\xc3\xa9\r", "echo été"),
        (b"echo \xf0\x9f\x90\x8d\r", "echo 🐍"),
    ]:
        [(text, uncertain)] = lines(typed)
        assert text == line and any("non-ASCII" in u for u in uncertain), uncertain


def test_lines_come_one_per_enter_and_cr_lf_is_one_enter() -> None:
    assert lines(b"a\r\nb\n\nc\r") == [("a", ()), ("b", ()), ("", ()), ("c", ())]


def test_nothing_is_forwarded_while_a_line_is_typed() -> None:
    assert run(b"rm -rf /") == []


def test_ctrl_c_abandons_the_line_and_is_forwarded() -> None:
    evs = run(b"rm -rf /\x03ls\r")
    assert evs == [Abandoned("rm -rf /"), Forward(b"\x03"), LineReady("ls")]


def test_ctrl_d_forwards_eof_only_on_an_empty_line() -> None:
    assert run(b"\x04") == [Forward(b"\x04")]
    assert run(b"ab\x02\x04\r") == [LineReady("a")]
    assert run(b"\x1a\x1c") == [Forward(b"\x1a"), Forward(b"\x1c")]


def test_bracketed_paste_is_text_until_enter() -> None:
    # a pasted newline does not run the line: only Enter does, as in readline
    assert run(PASTE + b"echo a\rrm -rf /\n" + UNPASTE) == []
    [ev] = run(PASTE + b"echo a\r\nls" + UNPASTE + b"\r")
    assert ev == LineReady("echo a\nls")
    assert ev.wire == b"echo a\rls\r"


def test_paste_cannot_smuggle_editing_keys_to_the_backend() -> None:
    """Control bytes inside a paste are dropped (never forwarded) and make the line
    uncertain: the backend's readline would act on them."""
    [(text, why)] = lines(PASTE + b"ls\x15rm\t-rf\x1b[D /" + UNPASTE + b"\r")
    assert "\x15" not in text and "\t" not in text and "\x1b" not in text
    assert "tab in pasted text" in why and "control character U+0015" in why


def test_pasted_end_marker_split_across_reads() -> None:
    ed = LineEditor()
    assert ed.feed(PASTE + b"ls\x1b[20") == []
    assert ed.feed(b"1~\r") == [LineReady("ls")]


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        (b"ls /et\t\r", "tab completion"),
        (UP + b"\r", "history recall (Up)"),
        (DOWN + b"\r", "history recall (Down)"),
        (b"\x1bOA\r", "history recall (Up)"),
        (b"\x10\r", "history recall (Ctrl-P)"),
        (b"\x12rm\r", "history search (Ctrl-R)"),
        (b"\x19\r", "yank (Ctrl-Y)"),
        (b"ls\x1bb\r", "Meta key (ESC b)"),
        (b"ls\x1b[1;5D\r", "modified cursor key (ESC [1;5D)"),
        (b"ls\x1b[99z\r", "escape sequence ESC [99z"),
        (b"ls \xff\r", "invalid UTF-8"),
        (b"ls \xc2\x85\r", "control character U+0085"),
        (b"echo !!\r", "history expansion (! or ^)"),
        (b"!rm\r", "history expansion (! or ^)"),
        (b'echo "it\'s !-2"\r', "history expansion (! or ^)"),
        (b"^ls^rm\r", "history expansion (! or ^)"),
    ],
)
def test_what_the_editor_cannot_follow_makes_the_line_uncertain(typed: bytes, reason: str) -> None:
    [(_, why)] = lines(typed)
    assert reason in why


@pytest.mark.parametrize("typed", [b"echo 'hi!'\r", b"[ ! -f x ]\r", b"test a != b\r", b"a=!\r"])
def test_exclamation_marks_bash_would_not_expand(typed: bytes) -> None:
    assert lines(typed)[0][1] == ()


def test_emptying_the_line_forgets_what_it_could_not_follow() -> None:
    assert lines(b"ls\t\x15ls\r") == [("ls", ())]
    assert lines(b"ls\t\x03ls\r") == [("ls", ())]
    assert lines(b"ls\tx\x02\x15\r")[0][1] == ("tab completion",)  # "x" is left


def test_stray_escape_does_not_swallow_ctrl_c() -> None:
    evs = run(b"rm -rf /\x1b\x03")
    assert Forward(b"\x03") in evs
    assert lines(b"rm\x1b[1;\x03ls\r") == [("ls", ())]


@pytest.mark.parametrize(
    ("typed", "line"),
    [
        (b"echo a \\\rb\r", "echo a \\\nb"),
        (b"echo 'a\rb'\r", "echo 'a\nb'"),
        (b'echo "a\r$(echo ")")"\r', 'echo "a\n$(echo ")")"'),
        (b"echo $'a\\'\rb'\r", "echo $'a\\'\nb'"),
        (b"ls |\rwc -l\r", "ls |\nwc -l"),
        (b"true &&\rls\r", "true &&\nls"),
        (b"false ||\rls\r", "false ||\nls"),
        (b"x=$(\rls)\r", "x=$(\nls)"),
        (b"echo `\rls`\r", "echo `\nls`"),
        (b"cat <<EOF\rrm -rf /\rEOF\r", "cat <<EOF\nrm -rf /\nEOF"),
        (b"cat <<-'E F'\rx\rE F\r", "cat <<-'E F'\nx\nE F"),
        (b"echo \\\rcat <<E\rx\rE\r", "echo \\\ncat <<E\nx\nE"),
        (b"cat <<A <<B\ra\rA\rb\rB\r", "cat <<A <<B\na\nA\nb\nB"),
        (b"x=$(cat <<EOF\r)\rEOF\r)\r", "x=$(cat <<EOF\n)\nEOF\n)"),
    ],
)
def test_continuations_join_into_one_logical_line(typed: bytes, line: str) -> None:
    assert lines(typed) == [(line, ())]


@pytest.mark.parametrize(
    "typed",
    [
        b"echo a # it's\r",
        b"echo '#' x\r",
        b"cat <<<'here string'\r",
        b"echo a\\|\r",
        b"case x in a) echo;; esac\r",
        b"echo ${x:-'}'}\r",
    ],
)
def test_complete_lines_do_not_wait(typed: bytes) -> None:
    assert len(lines(typed)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "echo  b>\\|#<<E;",  # an escaped | does not start a comment: <<E is a here-document
        "echo $'$'E\\\n#<<-E&&",  # after backslash-newline the word goes on: no comment
        "echo $ba$(#x==)",  # a comment inside $( … ) hides the )
        'echo }&&$()##>"',  # after $( … ) the word goes on: no comment, an open quote
        "echo a |# comment",
        "echo a |\n",  # a pasted trailing newline does not end the pipeline
        "echo a |&",
        "f()",
        "(echo a #)",
    ],
)
def test_what_bash_would_continue_is_held(text: str) -> None:
    assert _incomplete(text)


BASH = shutil.which("bash")
PIECES = ["'", '"', "\\", "`", "$(", "${", "$'", "(", ")", "}", "|", "&&", "||", ";", "#"]
PIECES += [" ", "a", "\n", "<<E", "<<-E", "<<<", "E", "\tE", "!", "<", ">", "&", "$", "x="]


def bash_continues(text: str) -> bool:
    """bash's own parser: does this text end before the command does?"""
    assert BASH is not None
    err = subprocess.run([BASH, "-n", "-c", text], capture_output=True, text=True).stderr
    return any(
        m in err for m in ("unexpected EOF", "unexpected end of file", "delimited by end-of-file")
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=10).map("".join))
def test_a_line_bash_would_continue_is_never_forwarded(tail: str) -> None:
    """Differential test against real bash: when the editor calls a line complete (and
    forwards it), bash must not be waiting for more, or the next line would be read in
    another context (inside a quote, a here-document) than the one hoopy checked.  The
    other way round (holding a line bash would run) is only inconvenient.  A trailing
    backslash is left out: `bash -c` reads end of input there, a terminal a newline."""
    text = "echo " + tail
    if text.rstrip("\n").endswith("\\"):
        return
    if not _incomplete(text):
        assert not bash_continues(text), text


def bash_expands_history(text: str) -> bool:
    """bash's own history expansion (as in an interactive shell, with one entry)."""
    assert BASH is not None
    script = 'set -H; history -s "echo previous"; out=$(history -p -- "$1") && [ "$out" = "$1" ]'
    return subprocess.run([BASH, "-c", script, "_", text], capture_output=True).returncode != 0


HISTORY_PIECES = ["!", "!!", "'", '"', "\\", "=", "(", ")", "^", "$", "{", "}", " ", "a", "-1"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(HISTORY_PIECES), min_size=1, max_size=8).map("".join))
def test_history_expansion_bash_would_do_makes_the_line_uncertain(text: str) -> None:
    """Differential test: a line hoopy forwards as certain must be one bash's history
    expansion leaves alone (else the backend runs text hoopy never saw)."""
    [(line, uncertain)] = lines(text.encode() + b"\r") or [("", ())]
    if "history expansion (! or ^)" not in uncertain and "\n" not in line:
        assert not bash_expands_history(line), line


@pytest.mark.parametrize("typed", [b"echo !(x)\r", b"x=!a\r"])
def test_history_expansion_spellings(typed: bytes) -> None:
    assert "history expansion (! or ^)" in lines(typed)[0][1]


def test_continuation_lines_can_be_abandoned() -> None:
    assert run(b"echo 'a\rb\x03") == [Abandoned("echo 'a\nb"), Forward(b"\x03")]


def test_wire_is_the_text_with_cr_line_ends() -> None:
    [ev] = run(b"echo 'a\rb'\r")
    assert isinstance(ev, LineReady) and ev.wire == b"echo 'a\rb'\r"


def test_line_length_is_capped() -> None:
    [(text, why)] = lines(b"x" * 100 + b"\r", max_line=10)
    assert text == "x" * 10 and why == ("line longer than 10 characters",)
    [(text, why)] = lines(PASTE + b"y" * 200 + UNPASTE + b"\r", max_line=10)
    assert len(text) <= 10 and why
    # an endless open quote stops at the cap instead of growing
    # (the backend saw none of it, so the lines after it start afresh)
    (text, why), *rest = lines(b"echo '" + b"a\r" * 50, max_line=20)
    assert len(text) <= 20 and "incomplete line (open quote or here-document)" in why
    assert rest[-1] == ("a", ())


def test_unterminated_paste_holds_bounded_memory() -> None:
    ed = LineEditor(max_line=100)
    for _ in range(100):
        ed.feed(PASTE[:0] + b"z" * 1000 if _ else PASTE)
    assert ed._paste is not None and len(ed._paste) <= 4 * 100 + 6 + 1000
    assert ed.feed(UNPASTE + b"\r")[0].uncertain  # type: ignore[union-attr]


def test_overlong_escape_sequence_is_dropped() -> None:
    [(text, why)] = lines(b"ls\x1b[" + b"1;" * 100 + b"D\r")
    assert "malformed escape sequence" in why and text.startswith("ls")


# Hostile input: any bytes, any split -------------------------------------------------

CONTROLS = [b"\r", b"\n", b"\x7f", b"\x15", b"\x17", b"\x03", b"\x04", b"\t", b"\x1b"]
SHELL = [b"[", b"'", b'"', b"\\", b"<<EOF", b"EOF", b"$(", b")", b"!"]
keys = st.sampled_from([*CONTROLS, *SHELL, LEFT, UP, HOME, DEL, PASTE, UNPASTE])
streams = st.lists(st.one_of(st.binary(max_size=20), keys), max_size=60).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(streams, st.lists(st.integers(1, 9), max_size=40))
def test_any_bytes_never_raise_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    whole = LineEditor(max_line=64).feed(data)
    ed, got, i = LineEditor(max_line=64), [], 0
    for n in [*cuts, len(data)]:
        got += ed.feed(data[i : i + n])
        i += n
    assert got == whole
    assert len(ed.pending) <= 64 + 1
    assert ed._esc is None or len(ed._esc) <= 65
    for ev in whole:
        if isinstance(ev, LineReady):
            assert len(ev.text) <= 64
            # only printable text and line ends reach the backend's readline
            assert all(c == "\r" or (c >= " " and c != "\x7f") for c in ev.wire.decode())
            assert not any(0x80 <= ord(c) <= 0x9F for c in ev.text)
        elif isinstance(ev, Forward):
            assert ev.data in (b"\x03", b"\x04", b"\x1a", b"\x1c")


# What the backend's shell does with what hoopy forwards ------------------------------


class InteractiveBash:
    """A real interactive bash on a PTY, as the backend's shell would be."""

    MARK = "__HOOPY_PS1__"

    def __init__(self, folder: str) -> None:
        import os
        import pty

        assert BASH is not None
        self.master, slave = pty.openpty()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PS1": self.MARK, "PS2": "",
               "HOME": folder, "TERM": "dumb", "INPUTRC": "/dev/null",
               "HISTFILE": "/dev/null"}  # fmt: skip
        self.proc = subprocess.Popen(
            [BASH, "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave, stderr=slave,
            cwd=folder, env=env, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.seen = ""
        self.wait_prompt(1)

    def wait_prompt(self, count: int) -> None:
        import os
        import select

        while self.seen.count(self.MARK) < count:
            ready, _, _ = select.select([self.master], [], [], 10)
            assert ready, f"bash did not prompt: {self.seen[-300:]!r}"
            self.seen += os.read(self.master, 65536).decode(errors="replace")

    def run_all(self, wires: list[bytes]) -> None:
        """Type each line, then `exit`; bash reads them in order and ends."""
        import os
        import select

        os.write(self.master, b"".join(wires) + b"exit\r")
        while self.proc.poll() is None:
            ready, _, _ = select.select([self.master], [], [], 10)
            assert ready or self.proc.poll() is not None, self.seen[-300:]
            try:
                self.seen += os.read(self.master, 65536).decode(errors="replace")
            except OSError:  # the PTY closed with bash
                break
        assert self.proc.wait(10) == 0

    def close(self) -> None:
        import os

        self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_bash_runs_exactly_the_lines_checked(tmp_path: Path) -> None:
    """Keystrokes through the editor, the allowed lines' `wire` into a real interactive
    bash: what bash runs is what the editor reported (here-documents, quotes, pastes)."""
    typed = (
        b"echo bad\x17good > a\r"
        b"cat <<EOF > b\rhello\r  $HOME-less\rEOF\r"
        b"printf '%s' 'x\ry' > c\r"
        + PASTE + b"echo 1 > d\necho 2 >> d" + UNPASTE + b"\r"
        + b"echo one |\rtr o 0 > e\r"
        + b"rm -rf a\x03"  # abandoned: never reaches bash
        + b"ls\t\r"  # uncertain: the caller refuses it
    )  # fmt: skip
    events = run(typed)
    ready = [e for e in events if isinstance(e, LineReady)]
    assert [e.text for e in ready][:5] == [
        "echo good > a",
        "cat <<EOF > b\nhello\n  $HOME-less\nEOF",
        "printf '%s' 'x\ny' > c",
        "echo 1 > d\necho 2 >> d",
        "echo one |\ntr o 0 > e",
    ]
    bash = InteractiveBash(str(tmp_path))
    try:
        bash.run_all([ev.wire for ev in ready if not ev.uncertain])
    finally:
        bash.close()
    assert (tmp_path / "a").read_text() == "good\n"
    assert (tmp_path / "b").read_text() == f"hello\n  {tmp_path}-less\n"
    assert (tmp_path / "c").read_text() == "x\ny"
    assert (tmp_path / "d").read_text() == "1\n2\n"
    assert (tmp_path / "e").read_text() == "0ne\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d", "e"]


# The Command a PTY line becomes --------------------------------------------------------


def test_line_command_reads_the_line_and_keeps_what_the_editor_could_not_follow() -> None:
    who = Identity("agent-7", frozenset({"agents"}))
    allow_ls = PolicySet("p", (Rule("ls", "allow", Match(ssh=SshMatch(commands=("ls *",)))),))
    allow_opaque = PolicySet(
        "p", (Rule("any", "allow", Match(ssh=SshMatch(commands=("*",), opaque=True))),)
    )
    [plain] = run(b"ls -l /tmp\r")
    [tabbed] = run(b"ls -l /t\tmp\r")
    assert isinstance(plain, LineReady) and isinstance(tabbed, LineReady)
    assert tabbed.text == plain.text  # same text, but hoopy cannot vouch for it
    cmd = line_command(plain, "web-1")
    assert cmd.protocol == "ssh" and cmd.connector == "web-1" and cmd.commands == ("ls -l /tmp",)
    assert not cmd.opaque and decide((allow_ls,), who, cmd).allowed
    cmd = line_command(tabbed, "web-1")
    assert cmd.opaque == {"shell_unparseable"}
    denied = decide((allow_ls,), who, cmd)
    assert not denied.allowed and "shell_unparseable" in denied.reason
    assert decide((allow_opaque,), who, cmd).allowed
    [hist] = run(b"sudo !!\r")
    assert isinstance(hist, LineReady) and line_command(hist, "web-1").opaque


@pytest.mark.parametrize(
    ("typed", "opaque"),
    [
        (b'bind \'"q":"rm -rf ~\\n"\'\r', True),  # a macro: typing q would run rm
        (b'bind -m vi \'"q":"x"\'\r', True),
        (b"echo a; bind -f /tmp/inputrc\r", True),
        (b"bind -p\r", False),
        (b"bind -l -v\r", False),
    ],
)
def test_key_bindings_make_a_pty_line_opaque(typed: bytes, opaque: bool) -> None:
    [ready] = run(typed)
    assert isinstance(ready, LineReady)
    assert bool(line_command(ready, "web-1").opaque) is opaque


def test_a_readline_macro_really_rewrites_later_lines(tmp_path: Path) -> None:
    """Why `bind` is opaque on a PTY: after it, the checked line `q` runs another
    command in a real interactive bash."""
    events = run(b'bind \'"q":"echo pwned > p\\n"\'\rq\r')
    ready = [e for e in events if isinstance(e, LineReady)]
    assert [e.text for e in ready] == ['bind \'"q":"echo pwned > p\\n"\'', "q"]
    assert line_command(ready[0], "web-1").opaque  # so it is refused unless opaque is allowed
    bash = InteractiveBash(str(tmp_path))
    try:
        bash.run_all([e.wire for e in ready])
    finally:
        bash.close()
    assert (tmp_path / "p").read_text() == "pwned\n"
