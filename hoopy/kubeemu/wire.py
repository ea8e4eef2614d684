"""What the emulator reads and writes as kube-apiserver does, apart from HTTP: YAML
bodies (as sigs.k8s.io/yaml reads them), list continue tokens, merge and JSON patches."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import yaml


class GoYAML(yaml.SafeLoader):
    """YAML read as sigs.k8s.io/yaml reads it into JSON: a timestamp stays the string
    it was written as (go-yaml v2 keeps it so in an interface{})."""


def _timestamp(loader: GoYAML, node: yaml.Node) -> str:
    return str(node.value)


GoYAML.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def storage_key(obj: dict[str, Any], ns: str) -> str:
    """An object's storage key under the list's prefix (namespace/name across
    namespaces, the name in one)."""
    meta = obj["metadata"]
    return meta["name"] if ns else f"{meta.get('namespace', '')}/{meta['name']}"


def continue_token(key: str, rv: int) -> str:
    """As kube-apiserver's storage encodes it: base64url (unpadded) of JSON naming the
    resourceVersion and the key to start after (the last key sent, plus NUL)."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": key + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def continue_key(token: str) -> str | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return str(value["start"]) if value.get("v") == "meta.k8s.io/v1" else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 (strategic merge patches are treated the same: lists are replaced)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if k == "$patch" or k.startswith("$setElementOrder"):
            continue
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge_patch(target.get(k), v)
    return target


def _pointer(doc: Any, pointer: str) -> tuple[Any, str]:
    """The parent of an RFC 6901 pointer's target, and the target's last key."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove/test/copy/move (as evanphx/json-patch, which
    kube-apiserver uses, applies them; `from ""` is the whole document)."""
    for op in ops:
        kind = op["op"]
        if kind in ("copy", "move"):
            source: Any = doc
            if op["from"]:
                sparent, skey = _pointer(doc, op["from"])
                source = sparent[int(skey)] if isinstance(sparent, list) else sparent[skey]
                if kind == "move":
                    del sparent[int(skey) if isinstance(sparent, list) else skey]
            op = {"op": "add", "path": op["path"], "value": copy.deepcopy(source)}
            kind = "add"
        parent, last = _pointer(doc, op["path"])
        if isinstance(parent, list):
            i = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(i, op["value"])
            elif kind == "replace":
                parent[i] = op["value"]
            elif kind == "remove":
                del parent[i]
        elif kind in ("add", "replace"):
            parent[last] = op["value"]
        elif kind == "remove":
            del parent[last]
        elif kind == "test" and parent.get(last) != op["value"]:
            raise ValueError("test failed")
    return doc
