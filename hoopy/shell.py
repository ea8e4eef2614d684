"""Shell command lines read as the simple commands they would run: the one classifier
for SSH (exec commands, the lines typed in a PTY) and Kubernetes (pods/exec argv).

Theory of operation: tree-sitter-bash parses the line; every simple command it would
run is collected (pipelines and lists, command and process substitutions, subshells,
groups, if/while/for/case bodies, function bodies, here-documents, redirections), and
so is every string the line hands to a shell as code (`sh -c`, `eval`, `su -c`,
`ssh host cmd`, `watch`, `trap`, a here-document fed to `bash`), parsed the same way to
a bounded depth.  Program names are normalised: quoting undone, `/usr/bin/rm` is `rm`,
assignments dropped, and wrappers (`sudo -u x`, `env -i`, `timeout 5`, `xargs -0`,
`find -exec` …) reported together with the command they run.  What hoopy cannot see
makes the reading *opaque*: a program name known only when the line runs, an
interpreter fed code from a file, a pipe or an option, a file run by path, an alias, a
line the parser rejects.  The policy refuses opaque lines unless a rule says
`opaque: true` (policy._shell_matches).

Bounded: more than MAX_LINE bytes of code, MAX_COMMANDS commands, code nested more than
MAX_DEPTH levels or syntax deeper than MAX_TREE_DEPTH make a reading opaque.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from hoopy.policy import Command
from hoopy.shellopts import arith_code_env, names
from hoopy.shellprogs import HANDLED, SHELLS, Ctx, Effect, code_env, effect
from hoopy.shellsyntax import (
    _ARITH_NODES,
    _ASSIGNMENT,
    _ESCAPED_IN_BACKQUOTES,
    _JOINS_NEXT,
    _ODD_BLANKS,
    _REDIRECTS,
    _SPLIT_EXPANSION,
    _TEXT_LEAVES,
    _UNREAD_CODE,
    _UNREAD_SUBST,
    _assigned,
    _backquoted,
    _blank_between_words,
    _first_error,
    _heredoc,
    _in_double_quotes,
    _shown,
    _unquoted,
)
from hoopy.shelltools import OPENS_EDITOR, sudo_edits
from hoopy.shellwords import (
    Arg,
    decode,
    history_expansion,
    joined,
    plain,
    raw,
    set_source,
    splits,
    subscript_code,
    text,
)

MAX_LINE = 64 * 1024  # bytes of shell code read, all nesting levels together
MAX_COMMANDS = 1000
MAX_DEPTH = 8  # sh -c 'sh -c "…"' levels
MAX_TREE_DEPTH = 200  # syntax nesting ((((…)))) within one level
MAX_WRAPPERS = 64  # sudo nice timeout … in one command

_LANG = Language(tree_sitter_bash.language())
# `{name}>f`, `{a[i]}<&-`: a redirection whose file descriptor bash stores in a variable
_NAMED_FD = re.compile(r"\{([A-Za-z_][^\s{},]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_local = threading.local()


@dataclass(frozen=True)
class SimpleCommand:
    argv: tuple[str, ...]  # normalised: argv[0] is the bare program name

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else ""

    @property
    def line(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class ShellReading:
    text: str
    commands: tuple[SimpleCommand, ...]  # every simple command the line would run
    opaque: tuple[str, ...]  # why parts cannot be seen; () = fully visible


def read_line(line: str, interactive: bool = True) -> ShellReading:
    """A shell command line (an SSH exec command, a line typed in a PTY).

    `interactive`: an interactive bash rewrites `!!`, `!rm`, `^a^b` (history expansion)
    before it parses a line, so such lines are opaque.  SSH exec commands, which a
    non-interactive shell runs, may pass False."""
    if len(line) <= _CACHED_LINE:  # agents repeat short lines; long ones would fill memory
        return _cached_line(line, interactive)
    return _read_line(line, interactive)


_CACHED_LINE = 2048


@lru_cache(maxsize=4096)
def _cached_line(line: str, interactive: bool) -> ShellReading:
    return _read_line(line, interactive)


def _read_line(line: str, interactive: bool) -> ShellReading:
    try:
        return _read_line_unsafe(line, interactive)
    except Exception as e:  # a bug here must refuse the line, never let it through
        return ShellReading(
            line, (), (f"unparseable: hoopy failed to read it ({type(e).__name__})",)
        )


def _read_line_unsafe(line: str, interactive: bool) -> ShellReading:
    if len(line) > MAX_LINE:
        return ShellReading(line, (), (f"line is too long: {len(line)} characters",))
    r = _Reader()
    r.interactive = interactive
    if interactive:
        hist = history_expansion(line)
        if hist:
            r.opaque(f"history expansion: {hist}")
    if "\0" in line:
        r.opaque("unparseable: a NUL character")
    r.parse(line, 0, _INHERIT)
    return ShellReading(line, tuple(r.commands), tuple(r.reasons))


def read_argv(argv: Sequence[str]) -> ShellReading:
    """An argv run without a shell (kubectl exec -- …): argv[0] is the program."""
    if not argv:
        return ShellReading("", (), ("unparseable: an empty command",))
    shown = shlex.join(argv)
    if sum(len(a) + 1 for a in argv) > MAX_LINE:
        return ShellReading(shown, (), (f"line is too long: {len(shown)} characters",))
    r = _Reader()
    if any("\0" in a for a in argv):
        r.opaque("unparseable: a NUL character")
    try:
        r.run([plain(a) for a in argv], _INHERIT, 0, Ctx(), 0)
    except Exception as e:  # a bug here must refuse the command, never let it through
        r.opaque(f"unparseable: hoopy failed to read it ({type(e).__name__})")
    return ShellReading(shown, tuple(r.commands), tuple(r.reasons))


# Programs that, on a terminal, run shell commands typed at them (a pager's or mail
# client's `!`, nano's ^T) or open an editor (which has its own `:!`).  Without a
# terminal they do not: an exec command with a PTY (`ssh -t host less f`) is opaque
# when it runs one.
TERMINAL_ESCAPES = names(
    """less more most pg man journalctl systemctl git nano pico mc ftp lftp tftp telnet
    mail mailx s-nail mutt sudoedit crontab visudo vipw vigr edquota virsh ncftp aptitude
    tig ranger nnn vifm joe jmacs jstar jpico jed mg micro ne kak hx helix zile jove nvi vile
    elvis w3m lynx links elinks ncdu iftop kubectl oc hg svn apt"""
)


def on_a_terminal(reading: ShellReading) -> ShellReading:
    """A reading for a command run with a PTY: opaque when a program in it takes
    commands typed at the terminal (TERMINAL_ESCAPES)."""
    hits = sorted(
        {c.program for c in reading.commands if c.program in TERMINAL_ESCAPES and _pages(c)}
        | {"sudo -e" for c in reading.commands if c.program == "sudo" and sudo_edits(c.argv)}
    )
    if not hits:
        return reading
    why = f"interpreter reads code: {', '.join(hits)} on a terminal runs commands typed at it"
    return ShellReading(reading.text, reading.commands, (*reading.opaque, why))


_NO_PAGER = {
    "git": ("--no-pager", "-P"),
    "systemctl": ("--no-pager",),
    "journalctl": ("--no-pager",),
}
# git subcommands that open no editor (git commit, rebase, tag -a … do)
_GIT_READS = names(
    "log show diff status branch blame grep ls-files rev-parse describe shortlog reflog"
)


def _pages(c: SimpleCommand) -> bool:
    """Does this command take keys typed on the terminal (not `git --no-pager log`)?"""
    if c.program in OPENS_EDITOR:
        return bool(set(OPENS_EDITOR[c.program]) & set(c.argv[1:]))
    off = _NO_PAGER.get(c.program, ())
    if not off or not set(off) & set(c.argv[1:]):
        return True
    if c.program == "git":
        sub = next((a for a in c.argv[1:] if not a.startswith("-")), "")
        return sub not in _GIT_READS
    return "edit" in c.argv[1:]


# Opaque reasons by their first words: the opaque kind the policy sees.
_KINDS = {
    "unparseable": "shell_unparseable",
    "line is too long": "shell_unparseable",
    "too many commands": "shell_unparseable",
    "nesting too deep": "shell_unparseable",
    "program is not literal": "shell_dynamic",
    "program is a glob": "shell_dynamic",
    "program name is changed": "shell_dynamic",
    "option of": "shell_dynamic",
    "unknown option of": "shell_dynamic",
    "code is not literal": "shell_dynamic",
    "code takes its input": "shell_dynamic",
    "find expression is not literal": "shell_dynamic",
    "interpreter": "shell_code",
    "runs a file by path": "shell_code",
    "environment variable can run code": "shell_code",
    "text bash may run as code": "shell_code",
    "alias defines a command name": "shell_alias",
    "history expansion": "shell_alias",
}
SHELL_OPAQUE_KINDS = frozenset(_KINDS.values())


def opaque_kind(reason: str) -> str:
    for prefix, kind in _KINDS.items():
        if reason.startswith(prefix):
            return kind
    return "shell_code"


def shell_command(protocol: str, connector: str, reading: ShellReading, **fields: Any) -> Command:
    """The policy Command for a shell reading: kinds {"exec"}, `commands` the normalised
    simple commands, `opaque` the kinds of what hoopy cannot see.  Other Command fields
    (verb, resource, namespace, name, text …) pass through."""
    kinds = frozenset({"exec"}) | frozenset(fields.pop("kinds", ()))
    text_ = fields.pop("text", reading.text)
    line = fields.pop("command_line", reading.text)
    # the opaque reasons too: the same text is opaque on a terminal and not without one
    # (`less f`), and sessions cache decisions by fingerprint
    key = repr(
        (protocol, connector, reading.text, reading.opaque, sorted(kinds), sorted(fields.items()))
    )
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16)
    fingerprint = fields.pop("fingerprint", "") or "sh:" + digest.hexdigest()
    return Command(
        protocol,
        connector,
        text_,
        kinds=kinds,
        opaque=frozenset(opaque_kind(r) for r in reading.opaque),
        fingerprint=fingerprint,
        command_line=line,
        commands=tuple(dict.fromkeys(c.line for c in reading.commands)),
        **fields,
    )


# --- reading ----------------------------------------------------------------------

# Where a command's stdin comes from: inherit (the session's), pipe, file, or text (a
# here-document or here-string, with its value when literal).
Stdin = tuple[str, Arg | None]
_INHERIT: Stdin = ("inherit", None)
_PIPE: Stdin = ("pipe", None)
_FILE: Stdin = ("file", None)
_STDIN_SOURCE = {"inherit": "stdin", "pipe": "a pipe", "file": "a file", "text": "a here-document"}

# Directories whose programs go by their bare name; a program run from any other path
# is a file hoopy cannot see (./rm, /tmp/ls, ~/bin/x, /usr/bin/../../tmp/x).
SYSTEM_DIRS = frozenset(
    {"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"}
)
_SLASHES = re.compile(r"/+")


def program_name(arg: Arg) -> tuple[str, str]:
    """The bare program name, and why it cannot be trusted ("" when it can)."""
    if arg.value is None:
        return arg.source, f"program is not literal: {arg.source}"
    if arg.expands:
        return arg.source, f"program is a glob: {arg.source}"
    v = arg.value
    if "/" not in v:
        return v, ""
    folder, _, base = v.rpartition("/")
    parts = [p for p in _SLASHES.split(folder) if p not in ("", ".")]
    canonical = "/" + "/".join(parts)
    if not v.startswith("/") or ".." in parts or canonical not in SYSTEM_DIRS or not base:
        return base, f"runs a file by path: {v}"
    return base, ""


def _parser() -> Parser:
    p: Parser | None = getattr(_local, "parser", None)
    if p is None:
        p = _local.parser = Parser(_LANG)
    return p


# Unquoted, bash reads these as syntax, never as a program name.
_RESERVED = frozenset(
    [
        "if",
        "then",
        "else",
        "elif",
        "fi",
        "case",
        "esac",
        "for",
        "select",
        "while",
        "until",
        "do",
        "done",
        "in",
        "function",
        "{",
        "}",
        "!",
        "[[",
        "]]",
    ]
)
_ASCII = bytes(range(128)) + b"x" * 128
_BARE_NEWLINE = re.compile(rb"(?<!\\)\n")
Kids = list[tuple[Node, "Stdin"]]


class _Reader:
    def __init__(self) -> None:
        self.commands: list[SimpleCommand] = []
        self.reasons: list[str] = []
        self.budget = MAX_LINE
        self.full = False
        self.src = b""  # the code being walked
        self.interactive = False  # a line an interactive shell reads (a PTY's)
        self.new_stdin = False  # the simple command being run redirects its stdin

    def opaque(self, reason: str) -> None:
        reason = reason if len(reason) <= 200 else reason[:197] + "…"
        if reason not in self.reasons and len(self.reasons) < 32:
            self.reasons.append(reason)

    def parse(self, code: str, depth: int, stdin: Stdin) -> None:
        if depth > MAX_DEPTH:
            self.opaque(f"nesting too deep: more than {MAX_DEPTH} levels of code in code")
            return
        data = code.encode("utf-8", "surrogateescape")
        self.budget -= len(data)
        if self.budget < 0:
            self.opaque(f"line is too long: more than {MAX_LINE} bytes of code")
            return
        # tree-sitter-bash can crash on some non-ASCII input ("{" then U+F8501): it is
        # given a copy with each byte >= 0x80 made "x" (never shell syntax, same offsets)
        tree = _parser().parse(data.translate(_ASCII))
        outer, self.src = self.src, data
        outer_source = set_source(data)
        try:
            root = tree.root_node
            if root.has_error:
                self.opaque("unparseable: " + _first_error(root))
            if _SPLIT_EXPANSION.search(data):
                # bash joins `$\<newline>(` into `$(` wherever it is (in "…" too); in
                # strings tree-sitter reads the pieces apart, as text
                self.opaque("unparseable: a line continuation after $, < or >")
            if _ODD_BLANKS.search(data) and _blank_between_words(root, data):
                self.opaque(
                    "unparseable: a carriage return, vertical tab or form feed between words"
                )
            self.walk(root, depth, stdin)
        finally:
            self.src = outer
            set_source(outer_source)

    def walk(self, root: Node, depth: int, stdin: Stdin) -> None:
        stack: list[tuple[Node, Stdin, int]] = [(root, stdin, 0)]
        while stack and not self.full:
            node, sin, level = stack.pop()
            if level > MAX_TREE_DEPTH:
                self.opaque(f"nesting too deep: more than {MAX_TREE_DEPTH} levels of syntax")
                continue
            t = node.type
            kids: Kids
            if t == "command":
                kids = self.command(node, sin, depth)
            elif t == "redirected_statement":
                self.check_gaps(node.children)
                for r in node.children:
                    if r.type == "file_redirect":
                        self.check_gaps(r.children, joined=True)
                kids = self.redirected(node, sin, depth)
            elif t == "pipeline":
                kids = []
                first = True
                for c in node.children:
                    kids.append((c, sin if first else _PIPE))
                    first = first and not c.is_named
            elif t in ("command_substitution", "process_substitution"):
                if t == "command_substitution" and _ESCAPED_IN_BACKQUOTES.search(text(node)):
                    # bash removes these backslashes before it reads the command
                    # (`echo \`rm x\``); tree-sitter reads them as literal text
                    self.opaque("unparseable: an escaped \\, `, $ or newline inside `…`")
                inner = _PIPE if text(node).startswith(">(") else _INHERIT
                kids = [(c, inner) for c in node.named_children]
            elif t in ("declaration_command", "unset_command"):
                words = [c for c in node.children if c.type != "comment"]
                self.emit(SimpleCommand(tuple(_shown(c) for c in words)))
                self.declaration(words)
                kids = [(c, sin) for c in node.named_children]
            else:
                if t == "test_command" and not re.match(rb"\[\[?[ \t]", raw(node)):
                    # `[rm]` is no test to bash but a glob naming the program
                    self.opaque(f"program is a glob: {text(node)[:60]}")
                if t == "variable_assignment":
                    self.assignment(node)
                elif t == "heredoc_body":
                    self.heredoc_body(node, depth)
                elif t == "heredoc_end":
                    self.heredoc_end(node)
                elif t == "comment" and _inside_a_word(self.src, node.start_byte):
                    # `a\<newline>#$(rm)`, `echo \ #$(rm)`: after a line continuation
                    # or an escaped blank the # is inside a word, no comment: bash runs
                    # what tree-sitter took for one
                    self.opaque("unparseable: a # inside a word (after a \\)")
                elif t in ("raw_string", "string", "ansi_c_string"):
                    self.check_text(decode(node))  # [[ -v 'a[$(x)]' ]], case patterns …
                elif t == "expansion" and "@P" in text(node):
                    self.opaque(f"text bash may run as code: {text(node)}")
                elif t == "expansion" and _UNREAD_CODE.match(text(node)):
                    self.unread_code(node)  # bash 5.3's ${ cmd; } and ${| cmd; }
                elif t == "variable_name" and _assigned(node) and code_env(text(node)):
                    self.opaque(f"environment variable can run code: {text(node)}")
                elif t in _ARITH_NODES and arith_code_env(text(node)):
                    self.opaque(f"environment variable can run code: {arith_code_env(text(node))}")
                if not node.named_child_count and (
                    t not in _TEXT_LEAVES or (t == "raw_string" and _in_double_quotes(node))
                ):
                    # ('…' in "${x:-'…'}" is no quoting: bash runs a $(…) inside it)
                    self.unread_code(node)
                kids = [(c, sin) for c in node.named_children]
            stack.extend((c, s, level + 1) for c, s in reversed(kids))

    def emit(self, cmd: SimpleCommand) -> None:
        if len(self.commands) >= MAX_COMMANDS:
            self.opaque(f"too many commands: more than {MAX_COMMANDS}")
            self.full = True
            return
        self.commands.append(cmd)

    def assignment(self, node: Node) -> None:
        name = node.child_by_field_name("name")
        if name is not None and name.type == "subscript":  # BASH_CMDS[ls]=/bin/rm
            name = name.child_by_field_name("name") or name.named_child(0)
        if name is not None and name.type == "variable_name" and code_env(text(name)):
            self.opaque(f"environment variable can run code: {text(name)}")
        value = node.child_by_field_name("value")
        if value is not None:
            self.check_text(decode(value))
            literal = decode(value).literal
            if literal is not None and arith_code_env(literal):  # x='PATH=1'; $((x))
                self.opaque(f"environment variable can run code: {arith_code_env(literal)}")

    def declaration(self, words: list[Node]) -> None:
        """declare/export/local/readonly/typeset/unset: the names they set, as bash reads
        them after quote removal (`export "PATH=/tmp"`); a name known only at run time
        (`declare "$n=x"`) or a nameref (`declare -n r=PATH; r=/tmp`) could be any."""
        nameref = False
        for w in words[1:]:
            if w.type == "variable_assignment":
                value = w.child_by_field_name("value")
                target = decode(value).literal if value is not None else ""
                if nameref and (target is None or code_env(target.split("[", 1)[0])):
                    self.opaque(f"environment variable can run code: nameref {text(w)}")
                continue
            if w.type == "variable_name":
                if nameref:
                    self.opaque(f"environment variable can run code: nameref {text(w)}")
                continue  # unset NAME: the walk checks it (_assigned)
            v = decode(w).literal
            if v is None:
                self.opaque(f"environment variable can run code: {text(w)[:40]}")
            elif v[:1] in "-+" and "=" not in v:
                nameref = nameref or (v[:1] == "-" and "n" in v)
            else:
                name = re.split(r"[+\[=]", v, maxsplit=1)[0]
                if code_env(name) or (nameref and "=" not in v):
                    self.opaque(f"environment variable can run code: {name}")

    def heredoc_body(self, node: Node, depth: int) -> None:
        body = text(node)
        self.check_text(plain(body))
        if not _unquoted(node.parent):
            return
        texts = [text(c) for c in node.children if c.type == "heredoc_content"]
        unread = texts if node.named_child_count else [body]
        if any(_UNREAD_SUBST.search(t) or "@P" in t for t in unread):
            # tree-sitter reads no substitution in a body that starts with a tab
            self.opaque("unparseable: code in a here-document tree-sitter does not read")
        if "\\\n" in body and ("$" in body or "`" in body):
            # bash joins continued lines before it expands the body
            self.opaque("unparseable: a line continuation in a here-document")
        if "`" in body:  # tree-sitter leaves `…` in a here-document as text; bash runs it
            for code in _backquoted(body):
                if code is None:
                    self.opaque("unparseable: an unterminated ` in a here-document")
                else:
                    self.parse(code, depth + 1, _INHERIT)

    def heredoc_end(self, node: Node) -> None:
        """tree-sitter ends a here-document at a line that only starts with the word
        (`EOF \\`); bash needs the word alone on its line, else it reads on."""
        src = self.src
        start = src.rfind(b"\n", 0, node.start_byte) + 1
        end = src.find(b"\n", node.end_byte)
        line = src[start : len(src) if end < 0 else end]
        redirect = node.parent
        kids = redirect.children if redirect is not None else []
        op = kids[0].type if kids else "<<"
        delim = next((c for c in kids if c.type == "heredoc_start"), None)
        word = re.sub(rb"[\"'\\\\]", b"", raw(delim)) if delim is not None else None
        if (line.lstrip(b"\t") if op == "<<-" else line) != word:
            self.opaque("unparseable: a here-document's end word is not alone on its line")

    def unread_code(self, node: Node) -> None:
        """tree-sitter leaves some substitutions as plain text (`${x:-`rm`}`,
        `${x#$(rm)}`); bash runs them.  An unescaped ` or $( in a leaf is one."""
        if _UNREAD_CODE.search(text(node).replace("\\\n", "")):  # "$\<newline>(…)"
            self.opaque(f"unparseable: code tree-sitter does not read: {text(node)[:40]}")

    def check_text(self, arg: Arg) -> None:
        if arg.value is not None and subscript_code(arg.value):
            self.opaque(f"text bash may run as code: {arg.source[:60]}")

    def redirected(self, node: Node, sin: Stdin, depth: int) -> Kids:
        body = node.child_by_field_name("body")
        redirects = [c for c in node.children if c.type in _REDIRECTS]
        stdin, extra = _redirects(redirects, sin)
        kids: Kids = [(c, sin) for r in redirects for c in r.named_children]
        if body is None:
            if extra:
                # `>/dev/null 2>&1 rm x >/dev/null`: tree-sitter read no command, only
                # redirections whose files include the words bash runs as one
                self.opaque("unparseable: a command tree-sitter read as redirections")
                args = self.join_continued(sorted(extra, key=lambda n: n.start_byte))
                self.run(args, stdin, depth, Ctx(), 0, shell=True)
            return kids
        if body.type == "command":
            kids += self.command(body, sin, depth, redirects)
        else:
            if extra:
                self.opaque("unparseable: words after a redirection of a compound command")
            kids.append((body, stdin))
        return kids

    def command(self, node: Node, sin: Stdin, depth: int, outer: Sequence[Node] = ()) -> Kids:
        """One simple command: its words, its redirections (`outer`: those tree-sitter
        put around it) and assignments."""
        kids: Kids = []
        name: Node | None = None
        words: list[Node] = []
        redirects: list[Node] = []
        self.check_gaps(node.children)
        for i, c in enumerate(node.children):
            if c.type == "file_redirect":
                self.check_gaps(c.children, joined=True)
            field = node.field_name_for_child(i)
            if field == "name":
                name = c
                words.append(c)
            elif field == "argument":
                words.append(c)
            elif c.type in _REDIRECTS:
                redirects.append(c)
            elif c.is_named:
                kids.append((c, _INHERIT))
        # tree-sitter reads `cat 0<f` as the argument 0 and `<f`; bash, as fd 0
        end = outer[0].start_byte if outer else -1
        if words and words[-1].end_byte == end and text(words[-1]).isdigit():
            words.pop()
        kids += [(c, _INHERIT) for r in redirects for c in r.named_children]
        # the last redirection of stdin wins, wherever tree-sitter put it
        every = sorted([*redirects, *outer], key=lambda n: n.start_byte)
        stdin, more = _redirects(every, sin)
        words = sorted([*words, *more], key=lambda n: n.start_byte)
        words = self.named_fds(words, every)
        kids += [(w, _INHERIT) for w in words if w.named_child_count]
        if name is None:
            return kids
        for w in words:
            parts = w.named_children if w.type == "concatenation" else [w]
            if any(p.type == "word" and _BARE_NEWLINE.search(raw(p)) for p in parts):
                # tree-sitter ran a redirection's words on to the next line
                self.opaque("unparseable: a word runs over the end of a line")
        args = self.join_continued(words)
        for a in args:
            self.check_text(a)
        self.new_stdin = stdin is not sin
        self.run(args, stdin, depth, Ctx(), 0, shell=True)
        return kids

    def named_fds(self, words: list[Node], redirects: Sequence[Node]) -> list[Node]:
        """`{fd}>f` is one redirection to bash that assigns the variable fd, and no
        word; tree-sitter reads a word `{fd}` (`exec {fd}>f rm` ran rm, reported as a
        program named `{fd}`).  The variable may be one that runs code (`{PATH}>f`),
        and `{a[$(cmd)]}>f` evaluates its subscript."""
        starts = {r.start_byte for r in redirects}
        kept = []
        for w in words:
            m = _NAMED_FD.fullmatch(text(w)) if w.end_byte in starts else None
            if m is None:
                kept.append(w)
            elif not _IDENTIFIER.fullmatch(m.group(1)):
                self.opaque(f"text bash may run as code: {text(w)[:60]} names a variable")
            elif code_env(m.group(1)):
                self.opaque(f"environment variable can run code: {m.group(1)}")
        return kept

    def check_gaps(self, parts: Sequence[Node], joined: bool = False) -> None:
        """What tree-sitter skips between a command's parts must be blanks.  It drops
        an escaped blank after a quote or expansion (`sh -c 'id'\\ ';rm x'` is one
        word to bash), and ends a redirection's word or an assignment at a line
        continuation (`</dev/n\\<newline>ull rm x`: bash reads `</dev/null`)."""
        for prev, nxt in pairwise(parts):
            raw = self.src[prev.end_byte : nxt.start_byte]
            gap = raw.replace(b"\\\n", b"")
            if b"\\" in gap or (not gap and (prev.type in _JOINS_NEXT or (joined and raw))):
                self.opaque("unparseable: words bash joins that tree-sitter reads apart")
                return

    def join_continued(self, words: list[Node]) -> list[Arg]:
        """Words as bash sees them.  tree-sitter splits some words bash reads as one:
        `"re"\\ot` (a backslash after a quote) and `r\\<newline>m` (a continuation,
        which bash removes before reading words).  Nodes with nothing but continuations
        between them are one word."""
        args: list[Arg] = []
        prev_end = -1
        for w in words:
            a = decode(w)
            gap = self.src[prev_end : w.start_byte] if args else b" "
            if not gap.replace(b"\\\n", b""):
                args[-1] = joined(args[-1], a, gap.decode("utf-8", "surrogateescape"))
            else:
                args.append(a)
            prev_end = w.end_byte
        return args

    def run(
        self, args: list[Arg], stdin: Stdin, depth: int, ctx: Ctx, level: int, shell: bool = False
    ) -> None:
        """A command and whatever it runs in turn (wrappers, code strings).  `shell`:
        the words are shell words, where a reserved word is syntax."""
        for _ in range(MAX_WRAPPERS):
            if not args or self.full:
                return
            if shell and args[0].source in _RESERVED and args[0].source != "!":
                # tree-sitter reads `! for …; do …; done` and `time if …` as commands
                # named for, do, if …: its reading of the line is not bash's
                self.opaque(f"unparseable: the reserved word {args[0].source!r} as a command")
            prog, problem = program_name(args[0])
            if problem:
                self.opaque(problem)
            if shell and _ASSIGNMENT.match(args[0].value or ""):
                # `x\<newline>= rm x`: an assignment to bash, a program to tree-sitter
                self.opaque(f"unparseable: {args[0].source[:30]} may be an assignment")
            self.emit(SimpleCommand((prog, *(a.shown for a in args[1:]))))
            if ctx.replace and ctx.replace in args[0].source:
                # xargs -I{} {} x / find -exec {} x: the input names the program
                self.opaque(f"program is not literal: {args[0].source} from xargs/find")
            eff = effect(prog, args, ctx)
            if not eff.opaque and prog in HANDLED and prog not in SHELLS:
                if len(args) > 1 and prog != "git":
                    self.split_words(prog, args, eff)
                self.input_words(prog, args, eff, ctx)
            for reason in eff.opaque:
                self.opaque(reason)
            for code in eff.code:
                value = code.literal
                if value is None:
                    self.opaque(f"code is not literal: {prog} {code.source}")
                else:
                    self.parse(value, depth + 1, stdin)
            if eff.stdin_code:
                self.stdin_code(prog, stdin, depth)
            if prog == "exec" and not eff.runs and self.interactive and self.new_stdin:
                # `exec <<< 'rm -rf /'`, `exec </tmp/f`: an interactive shell then reads
                # its next lines from there, not from the terminal hoopy checks
                self.opaque(f"interpreter reads code from {_STDIN_SOURCE[stdin[0]]}: exec")
            ctx = eff.ctx or ctx
            for more in eff.runs[:-1]:
                if level >= MAX_TREE_DEPTH:
                    self.opaque("nesting too deep: commands within commands")
                    return
                self.run(more, stdin, depth, ctx, level + 1, shell)
            args = eff.runs[-1] if eff.runs else []
        if args:
            self.opaque(f"nesting too deep: more than {MAX_WRAPPERS} wrappers")

    def split_words(self, prog: str, args: list[Arg], eff: Effect) -> None:
        """A program whose options hoopy reads (a wrapper, tar, sed …) given a word known
        only at run time: `tar xf f "$x"` with x=--to-command=…, or one that becomes
        zero or several words (`x='5 reboot'; nice -n $x ls` runs reboot).  hoopy's
        reading of its options could be wrong.  Words of the command a wrapper runs
        are read at the next level (git checks its own: _git)."""
        firsts = {id(run[0]) for run in eff.runs if run}
        cut = next((k for k, a in enumerate(args) if id(a) in firsts), len(args))
        for a in args[1:cut]:
            if splits(a) or a.value is None:
                eff.opaque.append(f"option of {prog} is not literal: {a.source}")
                return

    def input_words(self, prog: str, args: list[Arg], eff: Effect, ctx: Ctx) -> None:
        """Under xargs, words from its input are appended (and put for -I's {}).  A
        wrapper with its command given passes them to the command; any other program
        hoopy reads gets them among its options: `echo rm x | xargs env` runs rm,
        `xargs tar xf a.tar` with input --to-command=… runs that."""
        if ctx.extra and not eff.runs and not eff.opaque:
            eff.opaque.append(f"option of {prog} is not literal: its arguments from xargs")
            return
        if ctx.replace and not eff.opaque:
            firsts = {id(run[0]) for run in eff.runs if run}
            cut = next((k for k, a in enumerate(args) if id(a) in firsts), len(args))
            if any(ctx.replace in a.source for a in args[1:cut]):
                eff.opaque.append(f"option of {prog} is not literal: {ctx.replace} from xargs/find")

    def stdin_code(self, prog: str, stdin: Stdin, depth: int) -> None:
        """A shell reading its code from stdin: a literal here-document is read."""
        kind, here = stdin
        value = here.literal if here is not None else None
        if kind == "text" and value is not None:
            self.parse(value, depth + 1, _FILE)
        else:
            self.opaque(f"interpreter reads code from {_STDIN_SOURCE[kind]}: {prog}")


def _inside_a_word(src: bytes, start: int) -> bool:
    """Is the `#` at `start` inside a word to bash (not a comment)?  It starts a
    comment only after an unescaped blank, newline or operator character."""
    if start == 0:
        return False
    before = src[start - 1 : start]
    if before not in (b" ", b"\t", b"\n"):
        return before not in (b";", b"&", b"|", b"(", b")", b"<", b">")
    k = start - 1
    while k > 0 and src[k - 1 : k] == b"\\":
        k -= 1
    return (start - 1 - k) % 2 == 1  # an odd run of backslashes escapes the blank


def _fields(r: Node, name: str) -> list[Node]:
    return [c for i, c in enumerate(r.children) if r.field_name_for_child(i) == name]


def _redirects(redirects: Sequence[Node], sin: Stdin) -> tuple[Stdin, list[Node]]:
    """The stdin these redirections give a command, and the words tree-sitter put in a
    redirection that bash passes to the command (`rm 2>/dev/null -rf /`)."""
    extra: list[Node] = []
    for r in redirects:
        if r.type == "file_redirect":
            op = next((c.type for c in r.children if not c.is_named), "")
            # `>&-` / `<&-` close a descriptor and take no file: tree-sitter still
            # reads the next word as one (`nice >&- rm -rf /` ran rm, seen as `nice`)
            extra += _fields(r, "destination")[0 if op in (">&-", "<&-") else 1 :]
            fd = r.child_by_field_name("descriptor")
            if op in ("<", "<&", "<>", "<&-") and (fd is None or text(fd) == "0"):
                sin = _FILE
        elif r.type == "herestring_redirect":
            word = next((c for c in r.children if c.is_named), None)
            sin = ("text", decode(word) if word is not None else None)
        elif r.type == "heredoc_redirect":
            extra += _fields(r, "argument")
            sin = ("text", _heredoc(r))
    return sin, extra
