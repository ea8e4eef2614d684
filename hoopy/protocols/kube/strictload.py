"""JSON and YAML request bodies read strictly: no key twice in one object (sans-I/O).

Why: hoopy judges a write on the body it decodes, and the cluster applies the body it
decodes.  With a key given twice (`metadata: {namespace: a, namespace: b}`) each side
picks one by its own rules: Python's json and PyYAML keep the last, and so do Go's
JSON decoders; sigs.k8s.io/yaml documents duplicates as "ignored in an undefined
order" (YAMLToJSON turns keys `1` and "1" into one JSON key in Go map order) and its
strict mode refuses them; a YAML merge (`<<`) plus an explicit key is resolved by
each library's own merge code.  A body where the
answer depends on such rules is refused, so both sides read the same single value.
Keys that are not valid Unicode (a lone `\\ud800` escape, which Go turns into U+FFFD
and Python keeps) are refused too: two such keys can be one key to Go.
"""

from __future__ import annotations

import json
from typing import Any

import yaml


class AmbiguousKey(ValueError):
    """A key given twice in one object, or one the cluster could read as another; the
    message names it (and where)."""


class _Dup(dict[str, Any]):
    """An object that had a duplicate key (kept to name its path afterwards)."""

    dup = ""
    why = "is given twice"


def _hook(check_unicode: bool, bad: list[bool]) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) == len(items) and not (
            check_unicode and not all(k.isascii() or _valid(k) for k in out)
        ):
            return out
        bad.append(True)
        dup = _Dup(out)
        seen: set[str] = set()
        for k, _ in items:
            if not (k.isascii() or _valid(k)):
                dup.dup = k.encode("utf-8", "backslashreplace").decode()
                dup.why = "is not valid Unicode (a lone surrogate escape)"
                break
            if k in seen:
                dup.dup = k
                break
            seen.add(k)
        return dup

    return pairs


def _valid(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _find(v: Any, path: str = "") -> str | None:
    """The dotted path of the first key given twice, and why it is refused."""
    if isinstance(v, _Dup):
        return f"{f'{path}.{v.dup}' if path else v.dup!r} {v.why}"
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, child in items:
        found = _find(child, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


def load_json(body: bytes) -> Any:
    """json.loads, refusing a key given twice in any object (AmbiguousKey)."""
    bad: list[bool] = []
    # a lone surrogate can only come from a \u escape or from non-ASCII bytes
    check_unicode = not body.isascii() or b"\\u" in body
    value = json.loads(body, object_pairs_hook=_hook(check_unicode, bad))
    if bad:
        raise AmbiguousKey(f"key {_find(value)}")
    return value


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        # node.value is flattened now: keys a merge (<<) brings in are there too
        self._check(node)
        return mapping

    def _check(self, node: yaml.MappingNode) -> None:
        seen: set[str] = set()
        for key_node, _ in node.value:
            value = self.construct_object(key_node, deep=True)
            if isinstance(value, float):  # Go writes it as float32 'g': 1.0 and 1 collide
                line = key_node.start_mark.line + 1
                raise AmbiguousKey(f"key {value!r} is a floating-point number (line {line})")
            key = _as_json_key(value)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise AmbiguousKey(
                    f"key {key!r} is given twice in one mapping (line {line}; a merge "
                    "(<<) counts too)"
                )
            seen.add(key)


# A timestamp is the text it was written as, as go-yaml v2 (under sigs.k8s.io/yaml)
# keeps it in an interface{}: `name: 2024-01-01` names "2024-01-01" to the cluster,
# where PyYAML would make a date of it (and hoopy judge a create without a name).
def _timestamp(loader: _StrictLoader, node: yaml.Node) -> str:
    return str(node.value)


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def _as_json_key(key: Any) -> str:
    """The JSON key sigs.k8s.io/yaml makes of a YAML key: `1` and "1", `true` and
    "true" are one key to the cluster (Python keeps them apart), and which of the two
    values it keeps is undefined (Go map order: YAMLToJSON's own documentation)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)


def load_yaml(body: bytes) -> Any:
    """yaml.safe_load, refusing a key given twice in any mapping (AmbiguousKey)."""
    return yaml.load(body, Loader=_StrictLoader)
