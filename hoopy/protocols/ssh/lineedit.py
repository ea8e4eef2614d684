"""Sans-I/O line editor for interactive SSH shells (PTY sessions).

Theory of operation
-------------------
On a PTY the agent does not send command lines: it sends keystrokes, and the
backend's readline turns them into a line.  hoopy must check the line *before*
the shell sees it, so it cannot let keystrokes through one by one.  The design:

* hoopy holds the line locally and forwards nothing while it is being typed (and
  echoes nothing: the backend echoes the line once it is forwarded).
* `feed(data)` takes the agent's bytes and returns events.  When Enter completes a
  logical line the editor returns `LineReady(text, uncertain)`.  The caller checks
  `line_command(ready, connector)` (the line read by hoopy.shell, opaque when
  uncertain) and then either forwards `LineReady.wire` (the text, each physical line
  ended by CR) or refuses it (nothing reached the backend, so there is nothing to
  undo, no Ctrl-U to send; the agent is shown the reason).
* The backend only ever receives the reconstructed text, never the raw
  keystrokes, so the editing keys hoopy understands (backspace, DEL, Ctrl-U,
  Ctrl-W, Ctrl-K, Ctrl-A/E/B/F, cursor keys, Home/End, Delete, bracketed paste)
  cannot make the backend run something other than what was checked.
* Keys whose effect depends on state hoopy does not have (Tab completion, history
  recall with Up/Down/Ctrl-P/Ctrl-N, Ctrl-R/Ctrl-S search, Meta keys, unknown escape
  sequences, Ctrl-Y yank, Ctrl-T) are dropped and make the line *uncertain*: the
  text is still exactly what will be forwarded, but it may not be what the agent
  meant.  So are lines using interactive bash's history expansion (`!!`, `!rm`,
  `^a^b`), which the backend would replace with text hoopy never saw: callers must
  treat an uncertain line as opaque (refused unless a rule allows opaque lines).
* A logical line continues over Enter while it is incomplete the way a shell sees
  it: an open quote, a trailing backslash, a trailing `|`, `&&` or `||`, an open
  `(`/`$(`/backtick, or a here-document whose delimiter line has not come yet.  The
  whole logical line (physical lines joined by "\\n") is checked once.  Compound
  commands spread over lines (`for …; do` ⏎) are not joined: the first physical
  line alone does not parse, so the shell classifier makes it opaque (refused).
* Ctrl-C abandons the line and is forwarded (it interrupts a running program);
  Ctrl-D on an empty line, Ctrl-Z and Ctrl-\\ are forwarded as `Forward` events too:
  none of them can make a shell run a command.

There is deliberately no pass-through mode for full-screen programs (vim, less,
top): a pass-through would let any keystroke reach a shell unchecked, and hoopy
cannot tell from the byte stream whether a shell or an editor is reading.  Such
programs do not work through a hoopy PTY; neither do prompts read by programs
(`[Y/n]`, passwords): what the agent types there is checked as a command line.

Memory is bounded: a logical line is capped at `max_line` characters (longer
input is dropped and the line marked uncertain) and escape sequences at 64 bytes.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass, replace

from hoopy.policy import Command

MAX_LINE = 16384
MAX_ESCAPE = 64

PASTE_END = b"\x1b[201~"


@dataclass(frozen=True)
class LineReady:
    """Enter completed a logical line (physical lines joined by "\\n")."""

    text: str
    uncertain: tuple[str, ...] = ()

    @property
    def wire(self) -> bytes:
        """What to send the backend's shell when the line is allowed."""
        return self.text.replace("\n", "\r").encode() + b"\r"


@dataclass(frozen=True)
class Forward:
    """Bytes to send the backend now (signals and EOF, never text)."""

    data: bytes


@dataclass(frozen=True)
class Abandoned:
    """Ctrl-C dropped the line being typed (nothing of it reached the backend)."""

    text: str


Event = LineReady | Forward | Abandoned


def line_command(ready: LineReady, connector: str) -> Command:
    """The policy Command for a line typed on a PTY: read as an interactive shell reads
    it (hoopy.shell), and opaque when the editor could not follow how it was typed."""
    from hoopy.shell import on_a_terminal, read_line, shell_command

    reading = on_a_terminal(read_line(ready.text, interactive=True))
    why: list[str] = []
    if ready.uncertain:
        why.append(
            "unparseable: typed with keys hoopy cannot follow: " + ", ".join(ready.uncertain)
        )
    if any(_rebinds_keys(c.argv) for c in reading.commands):
        # `bind '"q":"rm -rf ~\n"'`: from then on the backend's readline turns the line
        # "q" into another one, which hoopy would never see
        why.append("alias defines a command name: bind changes what typed keys do")
    if why:
        reading = replace(reading, opaque=(*reading.opaque, *why))
    return shell_command("ssh", connector, reading, kinds={"shell"})


# `bind` options that only list bindings; anything else may change what keys type.
_BIND_LISTING = frozenset({"-l", "-p", "-P", "-s", "-S", "-v", "-V", "-X"})


def _rebinds_keys(argv: tuple[str, ...]) -> bool:
    return bool(argv) and argv[0] == "bind" and not set(argv[1:]) <= _BIND_LISTING


# readline's bindings that need state hoopy does not have: dropped, line uncertain.
_UNCERTAIN_KEYS = {
    "\t": "tab completion",
    "\x10": "history recall (Ctrl-P)",
    "\x0e": "history recall (Ctrl-N)",
    "\x12": "history search (Ctrl-R)",
    "\x13": "history search (Ctrl-S)",
    "\x19": "yank (Ctrl-Y)",
    "\x14": "transpose (Ctrl-T)",
    "\x16": "quoted insert (Ctrl-V)",
    "\x0f": "operate-and-get-next (Ctrl-O)",
    "\x18": "Ctrl-X prefix key",
    "\x07": "abort (Ctrl-G)",
}
_FORWARDED = {"\x1a": b"\x1a", "\x1c": b"\x1c"}  # Ctrl-Z, Ctrl-\: signals only
# CSI / SS3 sequences: final byte (and parameters) -> editing action.
_CSI_ACTIONS = {
    ("", "D"): "left",
    ("", "C"): "right",
    ("", "H"): "home",
    ("", "F"): "end",
    ("1", "~"): "home",
    ("7", "~"): "home",
    ("4", "~"): "end",
    ("8", "~"): "end",
    ("3", "~"): "delete",
    ("2", "~"): "ignore",  # Insert: readline's overwrite-mode toggle is unbound
}
_SS3_ACTIONS = {"D": "left", "C": "right", "H": "home", "F": "end"}
_CSI_HISTORY = {"A": "history recall (Up)", "B": "history recall (Down)"}
# Reports a terminal sends on its own (cursor position, focus): they edit nothing.
_CSI_REPORTS = frozenset("RIO")


class LineEditor:
    """Reconstructs the lines an agent types on a PTY; see the module docstring."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._utf8_pending = False  # the decoder holds part of a character
        self._done: list[str] = []  # physical lines of a logical line still open
        self._done_len = 0
        self._buf: list[str] = []  # the physical line being edited
        self._cur = 0
        self._uncertain: dict[str, None] = {}
        self._esc: bytearray | None = None  # an escape sequence being read
        self._paste: bytearray | None = None  # bytes inside a bracketed paste
        self._after_cr = False
        self._events: list[Event] = []

    # -- input --------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        """Take the agent's bytes; return the events they complete."""
        for b in data:
            self._byte(b)
        events, self._events = self._events, []
        return events

    @property
    def pending(self) -> str:
        """The logical line typed so far (for diagnostics; never forwarded)."""
        return "\n".join([*self._done, "".join(self._buf)])

    def _byte(self, b: int) -> None:
        if self._paste is not None:
            self._paste_byte(b)
        elif self._esc is not None:
            self._esc_byte(b)
        elif b == 0x1B:
            self._flush_decoder()
            self._esc = bytearray()
        elif b < 0x20 or b == 0x7F:
            self._flush_decoder()
            self._control(chr(b))
        else:
            self._after_cr = False
            if b < 0x80 and not self._utf8_pending:  # printable ASCII: no decoder needed
                self._insert_printable(chr(b))
                return
            for ch in self._decoder.decode(bytes([b])):
                self._insert(ch)
            self._utf8_pending = bool(self._decoder.getstate()[0])

    def _flush_decoder(self) -> None:
        if self._utf8_pending:
            for ch in self._decoder.decode(b"", final=True):  # a cut-off UTF-8 sequence
                self._insert(ch)
            self._decoder.reset()
            self._utf8_pending = False

    # -- control keys -------------------------------------------------------

    def _control(self, ch: str) -> None:
        after_cr, self._after_cr = self._after_cr, False
        if ch == "\n" and after_cr:
            return  # CR LF is one Enter
        if ch in "\r\n":
            self._after_cr = ch == "\r"
            self._enter()
        elif ch in ("\x7f", "\x08"):
            self._backspace()
        elif ch == "\x15":  # Ctrl-U: unix-line-discard
            del self._buf[: self._cur]
            self._cur = 0
            self._maybe_clear()
        elif ch == "\x17":  # Ctrl-W: unix-word-rubout
            self._rubout_word()
        elif ch == "\x0b":  # Ctrl-K: kill to end of line
            del self._buf[self._cur :]
            self._maybe_clear()
        elif ch == "\x01":
            self._cur = 0
        elif ch == "\x05":
            self._cur = len(self._buf)
        elif ch == "\x02":
            self._cur = max(0, self._cur - 1)
        elif ch == "\x06":
            self._cur = min(len(self._buf), self._cur + 1)
        elif ch == "\x03":
            self._interrupt()
        elif ch == "\x04":
            self._eof()
        elif ch in _FORWARDED:
            self._events.append(Forward(_FORWARDED[ch]))
        elif ch == "\x0c":
            pass  # Ctrl-L clears the screen: nothing to edit
        else:
            self._mark(_UNCERTAIN_KEYS.get(ch, f"control key 0x{ord(ch):02x}"))

    def _backspace(self) -> None:
        if self._cur > 0:
            self._cur -= 1
            del self._buf[self._cur]

    def _rubout_word(self) -> None:
        i = self._cur
        while i > 0 and self._buf[i - 1].isspace():
            i -= 1
        while i > 0 and not self._buf[i - 1].isspace():
            i -= 1
        del self._buf[i : self._cur]
        self._cur = i

    def _interrupt(self) -> None:
        abandoned = self.pending
        self._reset()
        self._events.append(Abandoned(abandoned))
        self._events.append(Forward(b"\x03"))

    def _eof(self) -> None:
        if not self._buf and not self._done:
            self._uncertain.clear()
            self._events.append(Forward(b"\x04"))
        elif self._cur < len(self._buf):  # readline: delete-char
            del self._buf[self._cur]

    def _maybe_clear(self) -> None:
        """A line emptied entirely has nothing left that hoopy could not follow."""
        if not self._buf and not self._done:
            self._uncertain.clear()

    def _mark(self, reason: str) -> None:
        self._uncertain[reason] = None

    def _reset(self) -> None:
        self._done, self._done_len = [], 0
        self._buf, self._cur = [], 0
        self._uncertain = {}

    # -- text ---------------------------------------------------------------

    def _insert(self, ch: str) -> None:
        if ch == "\ufffd":
            self._mark("invalid UTF-8")
        elif ch != "\n" and unicodedata.category(ch) == "Cc":
            self._mark(f"control character U+{ord(ch):04X}")
            return
        self._insert_printable(ch)

    def _insert_printable(self, ch: str) -> None:
        if self._done_len + len(self._buf) >= self.max_line:
            self._mark(f"line longer than {self.max_line} characters")
            return
        self._buf.insert(self._cur, ch)
        self._cur += 1

    def _enter(self) -> None:
        physical = "".join(self._buf)
        text = "\n".join([*self._done, physical])
        incomplete = _incomplete(text)
        if incomplete and self._done_len + len(physical) + 1 < self.max_line:
            self._done.append(physical)
            self._done_len += len(physical) + 1
            self._buf, self._cur = [], 0
            return
        if incomplete:
            self._mark("incomplete line (open quote or here-document)")
        if _history_expansion(text):
            self._mark("history expansion (! or ^)")
        if not text.isascii():
            # in a C/POSIX locale (the backend's default, or LANG=C) readline reads each
            # byte >= 0x80 as a Meta key: "®" (C2 AE) is M-b M-. (yank-last-arg), which
            # inserts the last word of an earlier line hoopy never sees in this one
            self._mark("non-ASCII character (a Meta key to readline in a C locale)")
        self._events.append(LineReady(text, tuple(self._uncertain)))
        self._reset()

    # -- escape sequences ---------------------------------------------------

    def _esc_byte(self, b: int) -> None:
        seq = self._esc
        assert seq is not None
        seq.append(b)
        if len(seq) == 1:
            if b in (0x5B, 0x4F):  # '[' CSI, 'O' SS3
                return
            self._esc = None
            if b < 0x20 and b != 0x1B:  # a control key after a stray ESC still counts
                self._mark("Meta key")
                self._control(chr(b))
            elif b == 0x1B:  # ESC ESC: readline would complete; start over
                self._mark("Meta key (ESC ESC)")
                self._esc = bytearray()
            else:
                self._mark(f"Meta key (ESC {_show(b)})")
            return
        if seq[0] == 0x4F:  # SS3: one final byte
            self._esc = None
            action = _SS3_ACTIONS.get(chr(b))
            if action:
                self._edit(action)
            else:
                self._mark(_CSI_HISTORY.get(chr(b), f"escape sequence ESC O {_show(b)}"))
            return
        if 0x40 <= b <= 0x7E:  # CSI final byte
            self._esc = None
            self._csi(seq[1:-1].decode("latin-1"), chr(b))
        elif not 0x20 <= b <= 0x3F or len(seq) > MAX_ESCAPE:
            self._esc = None
            self._mark("malformed escape sequence")
            if b < 0x20:  # ECMA-48: a C0 control inside a sequence is still executed
                self._byte(b)

    def _csi(self, params: str, final: str) -> None:
        if params == "200" and final == "~":  # bracketed paste starts
            self._paste = bytearray()
            return
        action = _CSI_ACTIONS.get((params, final))
        if action is None and final in "CDHF" and params.startswith("1;"):
            self._mark(f"modified cursor key (ESC [{params}{final})")  # Ctrl/Alt-arrow
        elif action is not None:
            self._edit(action)
        elif final in _CSI_HISTORY and not params:
            self._mark(_CSI_HISTORY[final])
        elif final not in _CSI_REPORTS:
            self._mark(f"escape sequence ESC [{params}{final}")

    def _edit(self, action: str) -> None:
        if action == "left":
            self._cur = max(0, self._cur - 1)
        elif action == "right":
            self._cur = min(len(self._buf), self._cur + 1)
        elif action == "home":
            self._cur = 0
        elif action == "end":
            self._cur = len(self._buf)
        elif action == "delete" and self._cur < len(self._buf):
            del self._buf[self._cur]

    # -- bracketed paste ----------------------------------------------------

    def _paste_byte(self, b: int) -> None:
        """Inside ESC[200~ … ESC[201~ every byte is text; the text is inserted when
        the end marker comes.  Held bytes are capped like the line."""
        paste = self._paste
        assert paste is not None
        paste.append(b)
        if paste.endswith(PASTE_END):
            self._paste = None
            self._insert_paste(bytes(paste[: -len(PASTE_END)]))
        elif len(paste) > 4 * self.max_line + len(PASTE_END):
            keep = paste[-len(PASTE_END) :]  # the end marker may be arriving
            self._mark(f"line longer than {self.max_line} characters")
            self._paste = bytearray(keep)

    def _insert_paste(self, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        for ch in text:
            if ch == "\t":
                self._mark("tab in pasted text")  # the backend would complete it
            else:
                self._insert(ch)


def _show(b: int) -> str:
    return chr(b) if 0x21 <= b <= 0x7E else f"0x{b:02x}"


# -- how a shell sees the text ------------------------------------------------


def _incomplete(text: str) -> bool:
    """Would an interactive shell ask for more (PS2) after this text?

    A small lexer (`_Lexer`): quotes (', ", $'…', backticks), $( … ), ${ … } and ( … )
    nesting, backslash escapes, comments (a `#` starting a word), here-documents, and a
    trailing |, |&, && or ||.  Where it is unsure it says "incomplete": holding a line
    longer is safe, forwarding one the shell would continue is not (what follows would
    be read in another context than the one checked).  Cross-checked against bash in
    tests/test_lineedit.py."""
    lexer = _Lexer()
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if lexer.line(line):  # backslash-newline: the line goes on
            if i >= len(lines):
                return True
            continue
        while lexer.heredocs:  # bodies follow the line, even inside $( … )
            word, strip = lexer.heredocs.pop(0)
            while i < len(lines) and (lines[i].lstrip("\t") if strip else lines[i]) != word:
                i += 1
            if i >= len(lines):
                return True
            i += 1
            lexer.boundary = True
    if lexer.stack or lexer.tail.endswith(("|", "&&", "|&")):
        return True
    last = next((line for line in reversed(lines) if line.strip()), "")
    return re.search(r"\(\s*\)\s*\Z", last) is not None  # `f ()`: the body comes next


_METACHARS = frozenset(" \t|&;()<>")
_SPECIAL = frozenset(" \t|&;()<>'\"`$\\#{}")  # what the lexer looks at; the rest are words
_WORD_RUN = re.compile(r"[^ \t|&;()<>'\"`$\\#{}]+")


class _Lexer:
    def __init__(self) -> None:
        self.stack: list[str] = []
        self.heredocs: list[tuple[str, bool]] = []  # (delimiter, strip tabs) awaiting a body
        self.boundary = True  # the next character starts a word
        self.tail = ""  # the last few significant top-level characters ("x": escaped)

    def line(self, line: str) -> bool:
        """Lex one physical line; True when it ends in a backslash that continues it."""
        j, n = 0, len(line)
        while j < n:
            c = line[j]
            top = self.stack[-1] if self.stack else ""
            if top == "'":
                if c == "'":
                    self.stack.pop()
            elif c == "\\":
                if j + 1 >= n:
                    return True  # the next line continues this word
                j += 1
                self._significant("x")
            elif top == "$'":
                if c == "'":
                    self.stack.pop()
            elif top == '"':
                if c == '"':
                    self.stack.pop()
                elif c == "`":
                    self.stack.append("`")
                elif line.startswith("$(", j) or line.startswith("${", j):
                    self.stack.append(line[j : j + 2])
                    j += 1
            elif top == "`" and c == "`":
                self.stack.pop()
                self._significant("x")
            elif c == "#" and self.boundary and top != "${":
                break  # a comment, to the end of the line
            elif c not in _SPECIAL:  # a run of word characters: one step
                end = _WORD_RUN.match(line, j).end()  # type: ignore[union-attr]
                self._significant(line[end - 1])
                j = end
                continue
            else:  # top level, $( … ), ( … ), ${ … } or a backtick body
                j = self._code(line, j, top)
            j += 1
        self.boundary = True  # a newline ends a word
        return False

    def _significant(self, c: str) -> None:
        if not self.stack:
            self.tail = (self.tail + c)[-3:]
        self.boundary = c in _METACHARS

    def _code(self, line: str, j: int, top: str) -> int:
        c = line[j]
        if c in " \t":
            self.boundary = True
            return j
        self._significant(c)
        if c in "'\"`":
            self.stack.append(c)
        elif line.startswith("$'", j) or line.startswith("$(", j) or line.startswith("${", j):
            self.stack.append(line[j : j + 2])
            self.boundary = line[j + 1] == "("  # a command starts inside $( … )
            return j + 1
        elif c == "(":
            self.stack.append("(")
        elif c == ")" and top == "(":
            self.stack.pop()
            self._significant(c)
        elif (c == ")" and top == "$(") or (c == "}" and top == "${"):
            self.stack.pop()
            self._significant("x")  # the word goes on after $( … ) and ${ … }
        elif line.startswith("<<<", j):  # a here-string, not a here-document
            self._significant("<")
            return j + 2
        elif line.startswith("<<", j):
            return _heredoc(line, j, self.heredocs)
        return j


def _heredoc(line: str, j: int, heredocs: list[tuple[str, bool]]) -> int:
    """`<<WORD` / `<<-WORD` (WORD possibly quoted): its body follows the line."""
    k = j + 2
    strip = line.startswith("-", k)
    k += strip
    while k < len(line) and line[k] in " \t":
        k += 1
    word: list[str] = []
    quote = ""
    while k < len(line):
        ch = line[k]
        if quote:
            if ch == quote:
                quote = ""
            else:
                word.append(ch)
        elif ch in "'\"":
            quote = ch
        elif ch == "\\" and k + 1 < len(line):
            k += 1
            word.append(line[k])
        elif ch in " \t;|&<>()":
            break
        else:
            word.append(ch)
        k += 1
    if word:
        heredocs.append(("".join(word), strip))
    return k - 1


def _history_expansion(text: str) -> bool:
    """Could interactive bash expand history in this text?  `!` followed by anything
    but a blank or `=` outside single quotes (double quotes do not stop it; `!(` is
    expanded unless extglob is on), or `^` starting a line.  Errs towards yes: the line
    is then only uncertain.  Cross-checked against bash's `history -p` in the tests."""
    state = ""  # "", "'" or '"'
    j = 0
    while j < len(text):
        c = text[j]
        if state == "'":
            state = "" if c == "'" else state
        elif c == "\\":
            j += 1
        elif c in "'\"" and (state == "" or c == state):
            state = c if state == "" else ""
        elif c == "!" and text[j + 1 : j + 2] not in ("", " ", "\t", "\n", "="):
            return True
        j += 1
    return any(line.startswith("^") for line in text.split("\n"))
