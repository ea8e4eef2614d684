"""liststream.py: a list answer rewritten item by item gives exactly what reading it
whole gives, in any split, while holding one item at a time."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.protocols.kube.bodies import Inspector
from hoopy.protocols.kube.liststream import ListError, ListStream


def inspector(hide: str = "kube-system") -> Inspector:
    return Inspector(mask_secrets=True, visible=lambda ns, name: ns != hide, kind="Secret")


def whole(raw: bytes, hide: str = "kube-system") -> str:
    return json.dumps(inspector(hide).value(json.loads(raw)), separators=(",", ":"))


def streamed(raw: bytes, cuts: list[int], hide: str = "kube-system") -> str:
    s = ListStream(inspector(hide), limit=1 << 30)
    out, last = [], 0
    for cut in sorted(set(cuts)):
        out.append(s.feed(raw[last:cut]))
        last = cut
    out.append(s.feed(raw[last:]))
    out.append(s.end())
    return "".join(out)


def secret(ns: str, name: str, value: str = "c2VjcmV0") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "12"},
        "data": {"password": value, "token": value},
        "type": "Opaque",
    }


def secret_list(n: int) -> dict[str, Any]:
    items = [secret("kube-system" if i % 3 == 0 else "app", f"s{i}") for i in range(n)]
    return {
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "99", "continue": "x"},
        "items": items,
    }


def table(n: int) -> dict[str, Any]:
    rows = []
    for i in range(n):
        obj = {
            "kind": "Secret",
            "apiVersion": "v1",
            **secret("kube-system" if i % 2 else "a", f"t{i}"),
        }
        rows.append({"cells": [f"t{i}", "Opaque", 2, "1d"], "object": obj})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "5"},
        "columnDefinitions": [{"name": "Name", "type": "string"}],
        "rows": rows,
    }


SHAPES = [
    secret_list(0),
    secret_list(1),
    secret_list(7),
    table(0),
    table(5),
    {
        "kind": "List",
        "apiVersion": "v1",
        "metadata": {},
        "items": [{"kind": "Secret", **secret("a", "x")}],
    },
    {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [{"metadata": {"name": "p", "namespace": "kube-system"}}],
    },
    # not streamed: the fallback reads them whole
    {"kind": "Secret", "apiVersion": "v1", **secret("a", "one")},
    {"apiVersion": "v1", "items": [secret("a", "x")], "kind": "SecretList"},  # items first
    {"items": [secret("a", "x")]},  # no kind at all
    {"kind": "Status", "status": "Failure", "message": "x", "code": 403},
    {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": None},
    {"kind": "SecretList", "metadata": {}, "items": [1, "two", None, [3]]},
    {},
]


@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_every_split_gives_what_the_whole_reading_gives(shape: dict[str, Any]) -> None:
    raw = json.dumps(shape, indent=1).encode()
    want = whole(raw)
    assert streamed(raw, []) == want
    for step in (1, 7, 64):
        assert streamed(raw, list(range(0, len(raw), step))) == want


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 30),
    seps=st.sampled_from([None, 0, 2]),
    cuts=st.lists(st.integers(0, 20000), max_size=40),
    value=st.text(max_size=20),
)
def test_generated_lists_in_random_splits(
    n: int, seps: int | None, cuts: list[int], value: str
) -> None:
    shape = secret_list(n)
    for item in shape["items"]:
        item["data"]["note"] = value
        item["metadata"]["labels"] = {"v": value}
    raw = json.dumps(shape, indent=seps, ensure_ascii=False).encode()
    assert streamed(raw, [c % (len(raw) + 1) for c in cuts]) == whole(raw)


def test_items_go_out_before_the_answer_ends_and_secret_values_never_do() -> None:
    raw = json.dumps(secret_list(2000)).encode()
    s = ListStream(inspector(), limit=1 << 20)
    sent = ""
    half = len(raw) // 2
    for i in range(0, half, 4096):
        sent += s.feed(raw[i : min(i + 4096, half)])
    assert sent.count('"name":"s') > 500  # well before the end
    assert "c2VjcmV0" not in sent
    assert '"namespace":"kube-system"' not in sent


def test_one_item_is_held_at_a_time() -> None:
    raw = json.dumps(secret_list(20000)).encode()  # ~4 MB
    s = ListStream(inspector(), limit=64 * 1024)  # far below the answer's size
    out = [s.feed(raw[i : i + 8192]) for i in range(0, len(raw), 8192)]
    out.append(s.end())
    assert "".join(out) == whole(raw)


def test_an_item_over_the_cap_is_refused() -> None:
    big = secret_list(1)
    big["items"][0]["data"]["blob"] = "x" * 200_000
    raw = json.dumps(big).encode()
    s = ListStream(inspector(), limit=64 * 1024)
    with pytest.raises(ListError):
        for i in range(0, len(raw), 8192):
            s.feed(raw[i : i + 8192])
        s.end()


def test_a_whole_answer_over_the_cap_is_refused() -> None:
    raw = json.dumps({"kind": "Secret", **secret("a", "b", "x" * 100_000)}).encode()
    s = ListStream(inspector(), limit=64 * 1024)
    with pytest.raises(ListError):
        for i in range(0, len(raw), 8192):
            s.feed(raw[i : i + 8192])
        s.end()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"kind":"SecretList","items":[{"a":1}',  # cut off
        b'{"kind":"SecretList","items":[{"a":1}]}}',  # an extra brace
        b'{"kind":"SecretList","items":[{"a":1}] "x":1}',  # a missing comma
        b'{"kind":"SecretList","items":[{"a":1},]}',  # a trailing comma
        b'{"kind":"SecretList","items":[{"a":1}]}garbage',
        b'{"kind":"SecretList","items":["\xff"]}',  # not UTF-8
        b"",
    ],
)
def test_malformed_answers_are_refused(raw: bytes) -> None:
    s = ListStream(inspector(), limit=1 << 20)
    with pytest.raises(ListError):
        s.feed(raw)
        s.end()


def test_a_second_items_array_is_rewritten_too() -> None:
    raw = (
        b'{"kind":"SecretList","items":[{"metadata":{"namespace":"a"},"data":{"k":"djE="}}],'
        b'"items":[{"metadata":{"namespace":"a"},"data":{"k":"djI="}}]}'
    )
    out = streamed(raw, [])
    assert "djE=" not in out and "djI=" not in out
    assert json.loads(out)["items"][0]["data"]["k"] != "djI="


@pytest.mark.parametrize(
    "first, last", [("ConfigMapList", "SecretList"), ("List", "SecretList"), ("Table", "PodList")]
)
def test_a_kind_after_the_items_is_refused(first: str, last: str) -> None:
    # JSON readers (Go's, Python's) take the last `kind`: the items already sent were
    # judged by the first one, so a Secret could go out as a ConfigMap, unmasked
    key = "rows" if first == "Table" else "items"
    item = {"metadata": {"name": "s", "namespace": "a"}, "data": {"k": "c2VjcmV0"}}
    row = {"cells": ["s"], "object": item} if first == "Table" else item
    raw = json.dumps({"kind": first, key: [row], "kind2": last}).replace('"kind2"', '"kind"')
    s = ListStream(inspector(), limit=1 << 20)
    with pytest.raises(ListError, match="kind twice"):
        s.feed(raw.encode())
        s.end()


def test_a_secret_list_inside_a_list_is_masked() -> None:
    inner = {"kind": "SecretList", "items": [secret("a", "x", "bGVhaw==")]}
    raw = json.dumps({"kind": "List", "metadata": {}, "items": [inner]}).encode()
    for out in (whole(raw), streamed(raw, [10])):
        assert "bGVhaw==" not in out
        assert json.loads(out)["items"][0]["items"][0]["data"]["password"] != "bGVhaw=="


@pytest.mark.parametrize(
    "shape",
    [
        {"kind": "SecretList", "items": [{"kind": "ConfigMap", **secret("a", "x", "bGVhaw==")}]},
        {"kind": "ConfigMapList", "items": [secret("a", "x", "bGVhaw==")]},
        {"kind": "List", "items": [{"kind": "Pod", **secret("a", "x", "bGVhaw==")}]},
        {
            "kind": "Table",
            "rows": [{"cells": [], "object": {"kind": "ConfigMap", "data": {"k": "bGVhaw=="}}}],
        },
    ],
)
def test_a_secrets_answer_is_masked_whatever_kind_it_claims(shape: dict[str, Any]) -> None:
    # the first `kind` decides how streamed items are judged, and a later one is only
    # refused after they went out: the request's resource must decide alone
    raw = json.dumps(shape).encode()
    for out in (whole(raw), streamed(raw, [7])):
        assert "bGVhaw==" not in out


def test_a_namespaces_answer_hides_governed_namespaces_whatever_kind_it_claims() -> None:
    ins = Inspector(visible=lambda ns, name: ns != "kube-system", kind="Namespace")
    item = {"metadata": {"name": "kube-system"}}
    out = ins.value({"kind": "PodList", "items": [item]})
    assert out["items"] == []


def test_a_number_cut_at_a_read_edge_waits_for_the_rest() -> None:
    # raw_decode reads "1." as 1 and "2e" as 2: a valid answer was refused (or, with a
    # different next read, misread) when a read ended inside a fraction or an exponent
    raw = (
        b'{"kind":"PodList","metadata":{},"items":[1.5,2e3,-0.5E+2,'
        b'{"metadata":{"namespace":"a"},"n":-1.25E-2}],"x":3.5}'
    )
    want = whole(raw)
    for cut in range(len(raw)):
        assert streamed(raw, [cut]) == want, raw[:cut]
