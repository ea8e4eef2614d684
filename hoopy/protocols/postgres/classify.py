"""SQL text → protocol-neutral `Command` records, one per statement (libpg_query).

Theory of operation
-------------------
libpg_query (PostgreSQL's own grammar) parses the text; we take its JSON parse tree
(pgquery.parse_json + `json.loads`: ~5x faster than building Python node objects) and
walk it iteratively (no recursion limit to hit) collecting:

* kinds — the statement's lower-case verb, plus a specific kind for DDL
  ("create" + "create_table") and the verbs of any statement it runs: data-modifying
  CTEs, EXPLAIN ANALYZE, PREPARE, DECLARE, COPY (query), EXECUTE of a known prepared
  statement, MERGE actions, INSERT … ON CONFLICT DO UPDATE. Sub-selects add no kind: an
  INSERT … SELECT is an insert, not also a select.
* tables_read / tables_written — every RangeVar, written when it is the target of a
  modification (DML targets, DDL objects, TRUNCATE, LOCK, …). A bare name that resolves to a
  CTE in scope is not a table; CTE bodies are walked with PostgreSQL's scoping rules.
* functions — every FuncCall, anywhere in the tree, plus CALL and trigger targets.
* opaque — effects that cannot be seen statically (DO, function bodies, COPY PROGRAM / server
  files, LOAD, EXECUTE of an unknown prepared statement, built-ins that run SQL given as
  text such as query_to_xml (`dynamic_sql`), statements we do not know).

The JSON tree: a tagged node is `{"TypeName": {fields}}`; fields typed as a specific struct
(e.g. `InsertStmt.relation`, `SelectStmt.larg`) appear untagged, so an untagged dict with a
"relname" is a RangeVar and one with a "withClause" opens a CTE scope.

Classification never looks at literal constants nor at positions in the text: it walks
the tree sqltree.shape() leaves without them, which is also the key `Classifier`
(classcache.py) caches results by: exact by construction.  Results that depend on
session state (EXECUTE of a prepared statement) are never cached.  Long texts are
classified in a worker process (classworker.py), off the event loop.

Modules: this one holds the entry points (parse, split, fingerprint, one Command per
statement); classstatements.py the per-statement handlers; classwalk.py the tree walk;
classkinds.py the statement-kind tables; classeffects.py the catalogue of built-ins and
catalog views with effects no table rule sees.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from hoopy.policy import Command
from hoopy.protocols.postgres import pgquery, sqlsecrets
from hoopy.protocols.postgres.classeffects import (
    _ACTIVITY_VIEWS,
    _SETTINGS_VIEWS,
    _STATISTICS_VIEWS,
)
from hoopy.protocols.postgres.classstatements import _statement
from hoopy.protocols.postgres.classwalk import Json, Prepared, _Acc
from hoopy.protocols.postgres.sqltree import shape_of


class SqlParseError(Exception):
    """PostgreSQL's parser rejected the text (or it cannot be analysed safely).

    `position` is the 0-based character index of the error in the text, when known.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


# ---------------------------------------------------------------- entry points


def _libpg_error(e: Exception) -> SqlParseError:
    if isinstance(e, pgquery.ParseError):
        return SqlParseError(e.message, e.position)
    if isinstance(e, UnicodeError):
        return SqlParseError("statement is not valid UTF-8 text")
    if isinstance(e, RecursionError):
        return SqlParseError("statement is nested too deeply to analyse")
    return SqlParseError("statement could not be analysed")


def _check_text(sql: str) -> None:
    # libpg_query reads a C string: text after a NUL would go unseen by the classifier.
    nul = sql.find("\x00")
    if nul >= 0:
        raise SqlParseError("statement contains a NUL character", nul)


def _split(sql: str) -> tuple[str, ...]:
    try:
        return pgquery.split(sql)
    except (pgquery.ParseError, UnicodeError) as e:
        raise _libpg_error(e) from None


def _normalize(sql: str) -> str:
    try:
        return pgquery.normalize(sql)
    except (pgquery.ParseError, UnicodeError) as e:
        raise _libpg_error(e) from None


def _shape(sql: str) -> tuple[str, bool]:
    """The literal-free tree classification reads (see sqltree.py): also the cache key;
    and whether it is plain (sqltree.shape_of)."""
    _check_text(sql)
    try:
        return shape_of(sql)
    except (pgquery.ParseError, UnicodeError, RecursionError, MemoryError) as e:
        raise _libpg_error(e) from None


def _parse(sql: str, tree: str | None = None) -> tuple[list[Json], tuple[str, ...]]:
    """Statement nodes and their source texts; raises SqlParseError, never returns half."""
    if tree is None:
        tree = _shape(sql)[0]
    try:
        stmts = [s["stmt"] for s in json.loads(tree).get("stmts", [])]
    except (RecursionError, ValueError) as e:
        raise _libpg_error(e) from None
    texts = _split(sql)
    if len(texts) != len(stmts):
        raise SqlParseError("statement boundaries could not be determined")
    return stmts, texts


def _command(node: Json, text: str, connector: str, prepared: Prepared | None) -> _Built:
    acc = _Acc(prepared)
    try:
        _statement(acc, node)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        # A tree shape this module did not expect: refuse rather than guess.
        raise SqlParseError(f"statement could not be analysed ({type(e).__name__})") from None
    if not acc.written.isdisjoint(_SETTINGS_VIEWS):
        acc.functions.add("set_config")  # what an UPDATE of pg_settings runs
    if not acc.read.isdisjoint(_STATISTICS_VIEWS):
        # Planner statistics hold other tables' values (most common values, histogram
        # bounds), for whichever table a WHERE picks: a read no table rule can see.
        acc.kinds.add("read_statistics")
        acc.opaque.add("read_statistics")
    if not acc.read.isdisjoint(_ACTIVITY_VIEWS):
        acc.kinds.add("read_activity")
        acc.opaque.add("read_activity")
    kinds, written = frozenset(acc.kinds), frozenset(acc.written)
    read, functions = frozenset(acc.read - acc.written), frozenset(acc.functions)
    maybe, opaque = frozenset(acc.maybe_functions - acc.functions), frozenset(acc.opaque)
    cmd = Command(
        protocol="postgres",
        connector=connector,
        text=text,
        kinds=kinds,
        tables_read=read,
        tables_written=written,
        functions=functions,
        maybe_functions=maybe,
        opaque=opaque,
        fingerprint=_fingerprint(text, (kinds, read, written, functions, maybe, opaque)),
    )
    return _Built(cmd, acc.cacheable)


# Statements longer than this get no fingerprint (decisions and approvals are then keyed
# by their exact text): normalize() is superlinear in a long target list.
FINGERPRINT_CHARS = 16384


def _fingerprint(text: str, classified: tuple[frozenset[str], ...]) -> str:
    """The literal-free text approvers see (normalize()), plus a digest of the
    classification, so that two statements with one fingerprint are always classified
    alike (sessions cache decisions by it, approvals are reused by it), whatever
    normalize() chooses to replace."""
    if len(text) > FINGERPRINT_CHARS:
        return ""
    digest = hashlib.blake2b(repr([sorted(f) for f in classified]).encode(), digest_size=16)
    # normalize() keeps some literals (OPTIONS of CREATE SERVER): never a password
    return f"{sqlsecrets.redact(_normalize(text))}\n-- classified {digest.hexdigest()}"


@dataclass(frozen=True)
class _Built:
    command: Command
    cacheable: bool


def _classify(
    sql: str, connector: str, prepared: Prepared | None, tree: str | None = None
) -> tuple[tuple[Command, ...], bool]:
    """The Commands of `sql` and whether they may be cached (none runs session state);
    `tree`: its shape, when already computed."""
    stmts, texts = _parse(sql, tree)
    built = [_command(n, t, connector, prepared) for n, t in zip(stmts, texts, strict=True)]
    return tuple(b.command for b in built), all(b.cacheable for b in built)


def classify(sql: str, connector: str, prepared: Prepared | None = None) -> tuple[Command, ...]:
    """One Command per statement of `sql`; () for empty or comment-only text.

    `prepared` maps prepared-statement names (SQL PREPARE and protocol-level Parse share
    one namespace) to their classification, to resolve EXECUTE.
    """
    return _classify(sql, connector, prepared)[0]
