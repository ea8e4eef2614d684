"""Strict JSON/YAML reading of Kubernetes request bodies (hoopy.protocols.kube.strictload):
a key given twice anywhere is refused and named by its path; bodies without one read
exactly as json.loads / yaml.safe_load read them; body_names reads generateName."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.protocols.kube.bodies import BodyError, body_names, body_namespace
from hoopy.protocols.kube.strictload import AmbiguousKey, load_json, load_yaml

KEYS = st.text(alphabet="abn\u00e9", min_size=1, max_size=3)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(KEYS, VALUES, max_size=4))
def test_bodies_without_duplicates_read_as_json_and_yaml_read_them(value: dict[str, Any]) -> None:
    raw = json.dumps(value).encode()
    assert load_json(raw) == json.loads(raw)
    y = yaml.safe_dump(value).encode()
    assert load_yaml(y) == yaml.safe_load(y)


def _with_duplicate(value: Any, path: list[str]) -> str:
    """JSON text of `value` whose object at `path` gets its first key again."""
    if isinstance(value, dict) and value:
        parts = []
        for i, (k, v) in enumerate(value.items()):
            inner = _with_duplicate(v, [*path, k]) if i == 0 else json.dumps(v)
            parts.append(f"{json.dumps(k)}:{inner}")
            if i == 0 and not isinstance(v, dict | list):
                parts.append(f"{json.dumps(k)}:{json.dumps(v)}")  # the duplicate
        return "{" + ",".join(parts) + "}"
    return json.dumps(value)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(KEYS, VALUES, min_size=1, max_size=4))
def test_a_duplicate_anywhere_is_refused_and_named(value: dict[str, Any]) -> None:
    text = _with_duplicate(value, [])
    path, v = [], value
    while isinstance(v, dict) and v:
        k = next(iter(v))
        path.append(k)
        v = v[k]
    if isinstance(v, list | dict):
        assert load_json(text.encode()) == json.loads(text)  # no duplicate was made
        return
    with pytest.raises(AmbiguousKey) as e:
        load_json(text.encode())
    assert repr(".".join(path)) in str(e.value)


@pytest.mark.parametrize(
    ("ctype", "body", "named"),
    [
        ("application/json", b'{"metadata":{"namespace":"a","namespace":"b"}}', "namespace"),
        ("application/json", b'{"metadata":{"namespace":"a"},"metadata":{}}', "metadata"),
        ("application/json", b'[{"op":"add","path":"/x","path":"/metadata/namespace"}]', "path"),
        ("application/yaml", b"metadata: {namespace: a, namespace: b}", "namespace"),
        ("application/yaml", b"metadata: {true: a, 'true': b}", "true"),
        ("application/yaml", b"a: &x {k: 1}\nb:\n  <<: [*x, *x]\n", "k"),
        ("application/apply-patch+yaml", b"metadata:\n  name: a\n  name: b\n", "name"),
    ],
)
def test_duplicates_refused_by_body_readers(ctype: str, body: bytes, named: str) -> None:
    for read in (body_namespace, body_names):
        with pytest.raises(BodyError, match=f"'(.*\\.)?{named}'"):
            read(ctype, body)


def test_body_names_reads_generate_name() -> None:
    assert body_names("application/json", b'{"metadata":{"generateName":"z-"}}') == ("", "z-")
    assert body_names("application/yaml", b"metadata: {name: a, generateName: b}") == ("a", "b")
    assert body_names("application/json", b'{"metadata":{"generateName":7}}') == ("", "")
    # k8s\0 + Unknown{2: raw{1: ObjectMeta{2: "gen-"}}}
    pb = b"k8s\x00" + bytes([0x12, 8, 0x0A, 6, 0x12, 4]) + b"gen-"
    assert body_names("application/vnd.kubernetes.protobuf", pb) == ("", "gen-")


def test_yaml_float_keys_are_refused() -> None:
    # Go's sigs.k8s.io/yaml writes float keys as float32 'g' ("1" for 1.0): it could
    # merge keys Python keeps apart
    for body in (b"data: {1.0: a, 1: b}", b"data: {2.5: a}"):
        with pytest.raises(BodyError, match="floating-point"):
            body_namespace("application/yaml", body)
    assert body_namespace("application/yaml", b"data: {1: a, 2: b}") == []
