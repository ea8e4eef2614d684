"""TEMPORARY stand-in until lineage.py lands: every computed column is unknown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Source = tuple[str, str]
ColumnLineage = frozenset[Source] | None
QualName = tuple[str | None, str]


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    kind: str
    columns: tuple[str, ...]
    view_sql: str | None = None


class Catalog(Protocol):
    def relation(self, name: QualName) -> Relation | None: ...
    def function_is_builtin(self, name: QualName) -> bool: ...


def required_names(sql: str) -> tuple[set[QualName], set[QualName]]:
    return set(), set()


def output_lineage(sql: str, catalog: Any, max_view_depth: int = 16) -> list[ColumnLineage] | None:
    return None
