"""The data model of column lineage (lineage.py): sources and lineages, the catalog
interface it reads relations through, and name resolution's scopes — the FROM items
visible at a point of a query, with the column lookups on them.

Separate from the expression walk so the types other modules share (catalog.py's
`Relation`, maskplan's `QualName` and `Source`) live apart from the analyser.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

Source = tuple[str, str]
ColumnLineage = frozenset[Source] | None
QualName = tuple[str | None, str]

EMPTY: frozenset[Source] = frozenset()


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    kind: str  # pg_class.relkind
    columns: tuple[str, ...]
    view_sql: str | None = None
    # Parents by inheritance or partitioning ("schema.table"): a partition's rows are its
    # parent's, so a rule naming the parent covers them.
    ancestors: tuple[str, ...] = ()

    def sources(self, column: str) -> frozenset[Source]:
        return frozenset((t, column) for t in (f"{self.schema}.{self.name}", *self.ancestors))


class Catalog(Protocol):
    def relation(self, name: QualName) -> Relation | None: ...

    def function_is_builtin(self, name: QualName) -> bool: ...

    def type_is_builtin(self, name: QualName) -> bool: ...

    def operator_is_builtin(self, name: QualName) -> bool: ...


class _Unknown(Exception):
    """The output shape itself cannot be determined."""


Col = tuple[str, ColumnLineage]  # output column: name, lineage


@dataclass
class _Item:
    """One FROM item as seen by name resolution."""

    name: str | None  # alias or relation name; None for an unaliased join
    columns: list[Col] | None  # None: unknown shape
    fallback: ColumnLineage = None  # lineage of any column when the shape is unknown
    children: list[_Item] = field(
        default_factory=list
    )  # a join's sides (their aliases stay visible)
    hidden: set[str] = field(default_factory=set)  # USING columns merged away


@dataclass
class _Scope:
    items: list[_Item]
    ctes: dict[str, list[Col] | None]
    parent: _Scope | None = None

    def visible(self) -> Iterator[_Item]:
        """Items whose names can qualify a column: joins expose their sides' names."""
        stack = list(reversed(self.items))
        while stack:
            it = stack.pop()
            yield it
            stack.extend(reversed(it.children))

    def cte(self, name: str) -> tuple[bool, list[Col] | None]:
        s: _Scope | None = self
        while s is not None:
            if name in s.ctes:
                return True, s.ctes[name]
            s = s.parent
        return False, None


def _union(parts: Iterator[ColumnLineage] | list[ColumnLineage]) -> ColumnLineage:
    out: set[Source] = set()
    for p in parts:
        if p is None:
            return None
        out |= p
    return frozenset(out)


def _rename(cols: list[Col], names: list[str]) -> list[Col]:
    return [(names[i] if i < len(names) else n, lin) for i, (n, lin) in enumerate(cols)]


def _has(item: _Item, col: str) -> bool:
    if item.columns is None:
        return True  # unknown shape: it may have that column
    return any(n == col for n, _ in item.columns)


def _lookup(item: _Item, col: str) -> ColumnLineage:
    if item.columns is None:
        return item.fallback
    found = [lin for n, lin in item.columns if n == col]
    return _union(found) if found else None


def _whole(item: _Item | None) -> ColumnLineage:
    if item is None or item.columns is None:
        return None
    return _union([lin for _, lin in item.columns])
