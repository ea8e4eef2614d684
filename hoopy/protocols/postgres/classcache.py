"""The classifier's caches: `Classifier` is classify() keyed so that a statement seen
before (with other literals) costs microseconds, never a second classification.

Keys are exact: two texts that share one are classified alike.  The usual key is the
statement's shape (sqltree.py), which is the very tree classification reads; plain DML
has faster ones: the compiled one-pass lexer's key (sqlkey.py), else _dml_key.  In
front of them all, a cache of exact texts.
"""

from __future__ import annotations

from collections import OrderedDict

from hoopy.policy import Command
from hoopy.protocols.postgres import pgquery, sqlkey
from hoopy.protocols.postgres.classify import _classify, _fingerprint, _shape, _split
from hoopy.protocols.postgres.classwalk import Prepared
from hoopy.protocols.postgres.cmdlane import one_text, plain

# The fast key: normalize() (libpg_query, in C) costs a third of shape()'s parse and
# regular expressions.  It is exact only where the sole constants it replaces are A_Const
# nodes: a single plain DML statement (no DefElem, no subscription conninfo, which newer
# libpg_query versions also replace), whose shape then differs only in A_Const values
# (or a $n parameter where a constant was: both invisible to classification).  Anything
# else is keyed by its shape.  tests/protocols/postgres/test_bigsql.py checks both.
_DML_KEY_CHARS = 2048  # normalize() is superlinear in a target list: kept short
_PLAIN_DML_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})


def _dml_key(sql: str, connector: str) -> tuple[str, str] | None:
    if len(sql) > _DML_KEY_CHARS or "\0" in sql:
        return None
    try:
        return (pgquery.normalize(sql), connector)
    except (pgquery.ParseError, UnicodeError):
        return None


def fully_normalized(cmd: Command) -> bool:
    """Does the fingerprint's normalize() text replace every literal of the statement?
    It keeps some (ORDER BY 1, typmods as in varchar(10)); a statement with one kept has
    a fingerprint that other literals there would change, which the sqlkey key does
    not see: not keyed by it.  Which ones normalize() keeps depends on the tree and the
    literal's class only, both fixed by the key, so one check covers the whole key."""
    normalized = cmd.fingerprint.rpartition("\n-- classified ")[0]
    key = sqlkey.statement_key(normalized) if normalized else None
    return key is not None and "\x01" not in key


def _refingerprinted(cmds: tuple[Command, ...], cached: tuple[Command, ...]) -> tuple[Command, ...]:
    """Shape-keyed commands with each fingerprint made from the statement's own text:
    the shape drops every literal, normalize() keeps some (ORDER BY 1, varchar(10)),
    and a fingerprint stops at a length (FINGERPRINT_CHARS) the shape does not see."""
    out = []
    for c, old in zip(cmds, cached, strict=True):
        if c is not old:
            classified = (c.kinds, c.tables_read, c.tables_written, c.functions)
            fingerprint = _fingerprint(c.text, (*classified, c.maybe_functions, c.opaque))
            if fingerprint != c.fingerprint:
                c = c.with_text(c.text)
                c.__dict__["fingerprint"] = fingerprint
        out.append(c)
    return tuple(out)


def _plain_dml(cmds: tuple[Command, ...]) -> bool:
    return len(cmds) == 1 and not cmds[0].opaque and cmds[0].kinds <= _PLAIN_DML_KINDS


class Classifier:
    """`classify()` with an LRU cache keyed by the statement's shape (its literal-free
    parse tree, see sqltree.py: exact, since it is what classification reads) and the
    connector, and in front of it a cache of exact texts seen more than once (drivers
    re-send the same Parse text every time: that skips parsing)."""

    def __init__(self, max_entries: int = 10000, max_key_chars: int = 65536) -> None:
        self.max_entries = max_entries
        self.max_key_chars = max_key_chars  # huge texts are classified, not cached
        self._cache: OrderedDict[tuple[str, str], tuple[str, tuple[Command, ...]]] = OrderedDict()
        self._exact: dict[tuple[str, str], tuple[Command, ...]] = {}
        # normalize() text → (text, commands), for plain DML only: see _dml_key
        self._dml: dict[tuple[str, str], tuple[str, tuple[Command, ...]]] = {}
        # sqlkey.statement_key text → (text, commands), for plain DML only, as _dml: a
        # key costs a fraction of normalize() compiled, more interpreted (then unused)
        self._keyed: dict[tuple[str, str], tuple[str, tuple[Command, ...]]] = {}
        self.use_key = sqlkey.COMPILED
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def exact(self, sql: str, connector: str) -> tuple[Command, ...] | None:
        """The classification of this very text, if it is cached."""
        hit = self._exact.get((sql, connector))
        if hit is not None:
            self.hits += 1
        return hit

    def remember(
        self, sql: str, connector: str, cmds: tuple[Command, ...], cacheable: bool
    ) -> None:
        """Cache a classification made elsewhere (a worker) by its exact text."""
        if cacheable and self.max_entries > 0 and len(sql) <= self.max_key_chars:
            self._remember_exact(sql, connector, cmds)

    def _remember_exact(self, sql: str, connector: str, cmds: tuple[Command, ...]) -> None:
        if len(self._exact) >= self.max_entries:
            self._exact.clear()
        self._exact[(sql, connector)] = cmds

    def classify(
        self, sql: str, connector: str, prepared: Prepared | None = None
    ) -> tuple[Command, ...]:
        exact = self._exact.get((sql, connector))
        if exact is not None:
            self.hits += 1
            return exact
        lexed = sqlkey.statement_key(sql) if self.use_key else None
        if lexed is not None:
            cmds = self._hit(sql, connector, self._keyed.get((lexed, connector)))
            if cmds is not None:
                return cmds
        dml = _dml_key(sql, connector)
        if dml is not None:
            cmds = self._hit(sql, connector, self._dml.get(dml))
            if cmds is not None:
                self._keep(lexed, connector, sql, cmds)
                return cmds
        tree, plain = _shape(sql)
        key = (tree, connector)
        entry = self._cache.get(key)
        if entry is not None:
            cmds = self._retext(sql, *entry)
            if cmds is not None and cmds is not entry[1]:
                cmds = _refingerprinted(cmds, entry[1])
            if cmds is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                if cmds is entry[1]:  # the same text again: next time, skip parsing
                    self._remember_exact(sql, connector, cmds)
                if plain:
                    self._keep(lexed, connector, sql, cmds)
                return cmds
        self.misses += 1
        cmds, cacheable = _classify(sql, connector, prepared, tree)
        if cacheable and plain:
            self._keep(lexed, connector, sql, cmds)
        if dml is not None and cacheable and plain and _plain_dml(cmds):
            if len(self._dml) >= self.max_entries:
                self._dml.clear()
            self._dml[dml] = (sql, cmds)
        if cacheable and self.max_entries > 0 and len(tree) <= self.max_key_chars:
            self._cache[key] = (sql, cmds)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return cmds

    def keyed(self, sql: str, connector: str) -> tuple[tuple[Command, ...], str] | None:
        """What `classify()` answers from its caches for `sql`, when that is one statement
        the cached-statement lane may take (cmdlane.plain): the cached commands and the
        statement's own text (their text when it is the same); None for anything else
        (classify() then).  A dict lookup for a text seen before, a compiled key and a
        lookup for one seen with other literals: no Command copy (see cmdlane.py).  The
        caller counts the hit (`hits`) once it takes the lane."""
        exact = self._exact.get((sql, connector))
        if exact is not None:
            if len(exact) != 1 or not plain(exact[0]):
                return None
            return exact, exact[0].text
        if self.use_key:
            lexed = sqlkey.statement_key(sql)
            found = None if lexed is None else self._keyed.get((lexed, connector))
        else:
            dml = _dml_key(sql, connector)
            found = None if dml is None else self._dml.get(dml)
        if found is None:
            return None
        cached_sql, cmds = found
        if len(cmds) != 1 or not plain(cmds[0]):
            return None
        text = cmds[0].text if sql == cached_sql else one_text(sql)
        if text is None:
            return None
        if text == cmds[0].text:  # the same statement again: next time, a dict lookup
            self._remember_exact(sql, connector, cmds)
        return cmds, text

    def _hit(
        self, sql: str, connector: str, found: tuple[str, tuple[Command, ...]] | None
    ) -> tuple[Command, ...] | None:
        """A plain-DML cache entry's commands for `sql` (None: no entry, or it does not
        fit this text), counted as a hit."""
        if found is None:
            return None
        cmds = self._retext(sql, *found)
        if cmds is not None:
            self.hits += 1
            if cmds is found[1]:  # the same text again: next time, a dict lookup
                self._remember_exact(sql, connector, cmds)
        return cmds

    def _keep(self, lexed: str | None, connector: str, sql: str, cmds: tuple[Command, ...]) -> None:
        """Cache `cmds`, the classification of `sql` (cacheable, its tree `plain`: see
        _dml_key), by its sqlkey key if it has one and they are one plain DML statement."""
        if lexed is None or not _plain_dml(cmds) or self.max_entries <= 0:
            return
        if not fully_normalized(cmds[0]):
            return
        if len(self._keyed) >= self.max_entries:
            self._keyed.clear()
        self._keyed[(lexed, connector)] = (sql, cmds)

    @staticmethod
    def _retext(sql: str, cached_sql: str, cmds: tuple[Command, ...]) -> tuple[Command, ...] | None:
        """The cached result with each statement's text taken from `sql` itself."""
        if sql == cached_sql:
            return cmds
        if len(cmds) == 1:
            # one statement and at most a final terminator: the text is the message's
            text = sql.strip()
            semi = text.find(";")
            if semi < 0 or semi == len(text) - 1:
                text = text.rstrip(";").rstrip()
                return cmds if cmds[0].text == text else (cmds[0].with_text(text),)
        texts = _split(sql)
        if len(texts) != len(cmds):
            return None
        return tuple(c if c.text == t else c.with_text(t) for c, t in zip(cmds, texts, strict=True))
