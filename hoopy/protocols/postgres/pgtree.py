"""libpg_query's parse tree, as postgast (BSD-2-Clause) hands it over — pure.

postgast parses into libpg_query's protobuf messages and wraps them in typed nodes
named as PostgreSQL's (SelectStmt, RangeVar, A_Expr … with its field names, snake_case).
lineage.py, sinks.py and textsettings.py walk that tree; this module holds what they
share: the parse (guarded against NULs and deep nesting), the enums, and the walks.

What the tree says differently from a Python AST (pglast's, before), which the walkers
must keep in mind:

* an unset string is "" and an unset list [] (never None); only an unset node is None;
* protobuf enums start with an UNDEFINED = 0, so their numbers are C's plus one:
  compare with the constants below (pg_query_pb2's), never with numbers;
* a NIL inside a list is left out by the wrappers (a FROM function's missing column
  definitions, `SELECT DISTINCT`'s empty distinctClause);
* a zero Integer is an empty message (`ival` reads 0);
* every attribute access builds a new wrapper: never compare nodes by identity.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import postgast
from google.protobuf.message import Message
from postgast import nodes as ast
from postgast.nodes import AstNode

# The generated protobuf module, through the package: its .pyi does not parse under mypy
# (pyproject.toml has mypy skip postgast).
pb2: Any = postgast.pg_query_pb2
A_Expr_Kind = pb2.A_Expr_Kind
SetOperation = pb2.SetOperation
SubLinkType = pb2.SubLinkType
VariableSetKind = pb2.VariableSetKind


def _allow_deep_trees() -> None:
    """Let protobuf decode libpg_query's trees however deep the parser made them.

    upb refuses messages nested deeper than 100 by default, and each level of an
    expression is two (a Node and its content): `a || b || …` of 50 terms, a UNION of 50
    SELECTs would not decode, so their lineage would be unknown (masked whole, writes
    refused).  The parser's own limits stay (a text past them fails to parse).  Process
    wide, and only protobuf from libpg_query is decoded in hoopy.  Should the switch
    move in a later protobuf, deep statements fail closed as said above."""
    try:
        from google._upb import _message  # the default (upb) backend

        _message.SetAllowOversizeProtos(True)
    except Exception:  # another backend: its default limit stays
        pass


_allow_deep_trees()


# libpg_query's protobuf writer and upb's decoder recurse in C once per nesting level, and
# a left-deep chain (`1+1+1…`, two characters a level) nests as deep as the text is long:
# ~22000 levels overflow an 8 MiB stack (the process dies).  A text longer than
# _LONG_TEXT (at most 2048 levels: well under 1 MiB) is parsed on a thread of its own
# with a _DEEP_STACK stack, where upb's own limit (65535 levels) comes first and fails
# cleanly.
_LONG_TEXT = 4096
_DEEP_STACK = 256 << 20
_deep: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): not across a fork
_deep_lock = threading.Lock()


def _deep_parser() -> ThreadPoolExecutor:
    global _deep
    with _deep_lock:
        if _deep is None or _deep[0] != os.getpid():
            old = threading.stack_size(_DEEP_STACK)
            try:
                pool = ThreadPoolExecutor(1, thread_name_prefix="hoopy-sqlparse")
                pool.submit(int).result()  # its one thread starts now, with that stack
            finally:
                threading.stack_size(old)
            _deep = (os.getpid(), pool)
        return _deep[1]


def parse_tree(sql: str) -> Any:
    """libpg_query's parse of `sql`: a protobuf ParseResult (raises postgast.PgQueryError,
    or protobuf's DecodeError for a tree protobuf will not decode)."""
    if "\0" in sql:
        # libpg_query reads a C string: what follows a NUL would go unseen (the
        # classifier refuses such texts; never analyse a prefix of one here either)
        raise ValueError("a NUL character in SQL text")
    if len(sql) <= _LONG_TEXT:
        return postgast.parse(sql)
    return _deep_parser().submit(postgast.parse, sql).result()


def parse_statements(sql: str) -> list[AstNode]:
    """The statements of `sql` as postgast's typed wrappers (raises as parse_tree)."""
    return [postgast.wrap(raw.stmt) for raw in parse_tree(sql).stmts]


def message(node: AstNode) -> Message:
    return node._pb  # the wrapped protobuf message (postgast.AstNode keeps it there)


def child_messages(msg: Message) -> Iterator[Message]:
    """The messages directly under `msg`: every set message field, lists in order."""
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue  # a scalar (string, number, enum)
        if isinstance(value, Message):
            yield value
        else:
            yield from value


def children(node: AstNode) -> Iterator[AstNode]:
    """The nodes directly under `node` (a NIL in a list comes as an empty AstNode)."""
    for msg in child_messages(message(node)):
        yield postgast.wrap(msg)


def walk(root: AstNode | Iterable[AstNode]) -> Iterator[AstNode]:
    """Every AST node under `root` (itself included), iteratively (no recursion limit to
    hit).  Not what is inside an A_Const: its String is a value, never a name."""
    stack: list[Message] = [message(n) for n in ([root] if isinstance(root, AstNode) else root)]
    while stack:
        node = postgast.wrap(stack.pop())
        yield node
        if not isinstance(node, ast.A_Const):
            stack.extend(child_messages(message(node)))
