"""Where tree-sitter-bash's reading of a line differs from bash's, for hoopy.shell:
the node types and text patterns the reader treats specially, and helpers over the
syntax tree (here-documents, assignments, blanks tree-sitter skips)."""

from __future__ import annotations

import re

from tree_sitter import Node

from hoopy.shellwords import Arg, decode, plain, text

_REDIRECTS = frozenset({"file_redirect", "heredoc_redirect", "herestring_redirect"})
# Leaves whose text bash never runs, or which are read elsewhere (here-documents).
_TEXT_LEAVES = frozenset(
    {"raw_string", "ansi_c_string", "comment", "heredoc_content", "heredoc_start",
     "heredoc_end", "heredoc_body", "`", "$(", "$((", "$[", "<(", ">("}
)  # fmt: skip
# An unescaped backquote, $( or $[ (an even number of backslashes before it).
# (bash 5.3 runs `${ cmd; }` and `${| cmd; }`: a blank or | after the brace)
_UNREAD_CODE = re.compile(r"(?<!\\)(?:\\\\)*(?:`|\$\(|\$\[|\$\{[ \t\n|])")
_UNREAD_SUBST = re.compile(r"(?<!\\)(?:\\\\)*(?:\$\(|\$\[|\$\{[ \t\n|])")  # (` is read)
_ESCAPED_IN_BACKQUOTES = re.compile(r"^`.*\\[\\`$\n]", re.DOTALL)


# Nodes bash evaluates as arithmetic or whose operands it may (`[[ x -eq y ]]`).
_ARITH_NODES = frozenset(
    {"arithmetic_expansion", "compound_statement", "c_style_for_statement", "test_command",
     "subscript"}
)  # fmt: skip
_ASSIGN_OPS = frozenset(
    {"=", ":=", "+=", "-=", "*=", "/=", "%=", "**=", "<<=", ">>=", "&=", "^=", "|=", "++", "--"}
)


def _assigned(node: Node) -> bool:
    """Does bash assign the variable this name stands for (`for NAME in`, `unset NAME`,
    `${NAME:=x}`, `((NAME+=1))`, `((++NAME))`)?"""
    parent = node.parent
    if parent is None:
        return False
    if parent.type in ("for_statement", "unset_command"):
        return True
    after, before = node.next_sibling, node.prev_sibling
    return (after is not None and after.type in _ASSIGN_OPS) or (
        before is not None and before.type in ("++", "--")
    )


def _in_double_quotes(node: Node) -> bool:
    """In "…" or a here-document's body, where quotes in ${…} are no quoting."""
    parent = node.parent
    while parent is not None:
        if parent.type in ("string", "heredoc_body"):
            return True
        parent = parent.parent
    return False


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[.*\])?\+?=")
_JOINS_NEXT = frozenset({"variable_assignment", *_REDIRECTS})
_ODD_BLANKS = re.compile(rb"[\r\v\f]|(?<=\\)\t")  # (and an escaped tab)
_SPLIT_EXPANSION = re.compile(rb"[$<>]\\\n")


def _blank_between_words(root: Node, data: bytes) -> bool:
    """tree-sitter takes CR, VT and FF for blanks; bash takes them for part of a word
    (`ls\rrm x` runs a program named `ls\rrm`).  Is one outside every word?"""
    for m in _ODD_BLANKS.finditer(data):
        node = root.descendant_for_byte_range(m.start(), m.end())
        if node is None or not node.is_named:
            return True
        if node.named_child_count and node.type not in ("string", "heredoc_body"):
            return True
    return False


def _heredoc(r: Node) -> Arg | None:
    start = next((c for c in r.children if c.type == "heredoc_start"), None)
    body = next((c for c in r.children if c.type == "heredoc_body"), None)
    if start is None or body is None:
        return plain("")
    raw = text(body)
    if any(q in text(start) for q in "'\"\\"):
        return plain(raw)
    if any(c.is_named and c.type != "heredoc_content" for c in body.children):
        return Arg(None, raw)
    # one pass, left to right, as bash does: `\\<newline>` is a backslash and a newline
    return Arg(_HEREDOC_ESCAPE.sub(lambda m: m[1].strip("\n"), raw), raw)


_HEREDOC_ESCAPE = re.compile(r"\\([\n$`\\])")


def _unquoted(redirect: Node | None) -> bool:
    """Is this here-document's delimiter unquoted (so its body is expanded)?"""
    start = (
        next((c for c in redirect.children if c.type == "heredoc_start"), None)
        if redirect
        else None
    )
    return start is not None and not any(q in text(start) for q in "'\"\\")


def _backquoted(body: str) -> list[str | None]:
    """The commands of `…` in an unquoted here-document body, unescaped as bash does
    (\\\\, \\` and \\$ lose their backslash); None for one never closed."""
    out: list[str | None] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if c != "`":
            i += 1
            continue
        code: list[str] = []
        i += 1
        while i < n and body[i] != "`":
            if body[i] == "\\" and i + 1 < n:
                nxt = body[i + 1]
                code.append(nxt if nxt in "\\`$" else "\\" + nxt)
                i += 2
                continue
            code.append(body[i])
            i += 1
        out.append("".join(code) if i < n else None)
        i += 1
    return out


def _shown(n: Node) -> str:
    a = decode(n)
    return a.shown if a.value is not None else text(n)


def _first_error(root: Node) -> str:
    stack = [root]
    while stack:
        n = stack.pop()
        if n.is_error or n.is_missing:
            what = "missing " + n.type if n.is_missing else "unexpected " + repr(text(n)[:30])
            return f"{what} at byte {n.start_byte}"
        stack.extend(reversed([c for c in n.children if c.has_error or c.is_missing]))
    return "syntax error"
