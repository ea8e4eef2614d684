"""Unit tests of the Kubernetes path's pieces that need no server: the token cache
(never beyond exp), body namespaces, and response rewriting (Secrets masked and
governed items dropped in every shape)."""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest

from hoopy.errors import AuthFailed
from hoopy.masking import ValueMasker
from hoopy.policy import Identity
from hoopy.protocols.kube.bodies import (
    LAST_APPLIED,
    MASKED,
    MASKED_B64,
    BodyError,
    Inspector,
    body_name,
    body_namespace,
)
from hoopy.protocols.kube.proxy import KubeListener

SECRET = {
    "kind": "Secret",
    "apiVersion": "v1",
    "metadata": {
        "name": "db",
        "namespace": "default",
        "annotations": {LAST_APPLIED: json.dumps({"stringData": {"pw": "hunter2"}})},
    },
    "data": {"pw": base64.b64encode(b"hunter2").decode()},
    "stringData": {"pw": "hunter2"},
}


def _clean(value: Any) -> bool:
    text = json.dumps(value)
    return "hunter2" not in text and base64.b64encode(b"hunter2").decode() not in text


def test_token_cache_never_outlives_exp() -> None:
    calls: list[str] = []

    async def authenticate(token: str) -> Identity:
        calls.append(token)
        if len(calls) > 1:
            raise AuthFailed("token rejected: expired")
        return Identity("agent", frozenset({"agents"}), expires_at=100.0)

    gw = SimpleNamespace(authenticate=authenticate)
    listener = KubeListener(gw, None)  # type: ignore[arg-type]
    now = [50.0]
    listener.clock = lambda: now[0]
    request = SimpleNamespace(headers={"Authorization": "Bearer tok"})

    async def run() -> None:
        assert (await listener._identity(request)).subject == "agent"  # type: ignore[arg-type]
        now[0] = 99.9
        await listener._identity(request)  # type: ignore[arg-type]
        assert len(calls) == 1  # cached
        now[0] = 100.0
        with pytest.raises(AuthFailed):
            await listener._identity(request)  # type: ignore[arg-type]
        assert len(calls) == 2

    asyncio.run(run())


@pytest.mark.parametrize(
    ("ctype", "body", "want"),
    [
        ("application/json", b'{"metadata":{"namespace":"a"}}', ["a"]),
        ("application/json", b'{"metadata":{"name":"x"}}', []),
        ("application/apply-patch+yaml", b"metadata: {namespace: b}\n", ["b"]),
        (
            "application/json-patch+json",
            b'[{"op":"add","path":"/metadata/namespace","value":"c"}]',
            ["c"],
        ),
        (
            "application/json-patch+json",
            b'[{"op":"replace","path":"/metadata","value":{"namespace":"d"}}]',
            ["d"],
        ),
        (
            "application/json-patch+json",
            b'[{"op":"add","path":"","value":{"metadata":{"namespace":"e"}}}]',
            ["e"],
        ),
        (
            "application/vnd.kubernetes.protobuf",
            b"k8s\x00" + bytes([0x12, 5, 0x0A, 3, 0x1A, 1]) + b"f",
            ["f"],
        ),
    ],
)
def test_body_namespace(ctype: str, body: bytes, want: list[str]) -> None:
    assert body_namespace(ctype, body) == want


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/json", b"{not json"),
        (
            "application/json-patch+json",
            b'[{"op":"move","from":"/x","path":"/metadata/namespace"}]',
        ),
        (
            "application/json-patch+json",
            b'[{"op":"copy","from":"/metadata/namespace","path":"/x"}]',
        ),
        ("application/vnd.kubernetes.protobuf", b"k8s\x00\x12\xff"),
        ("application/vnd.kubernetes.protobuf", b"nope"),
    ],
)
def test_body_namespace_refuses_what_it_cannot_read(ctype: str, body: bytes) -> None:
    with pytest.raises(BodyError):
        body_namespace(ctype, body)


def test_secret_masked_in_every_shape() -> None:
    ins = Inspector()
    one = ins.value(SECRET)
    assert one["data"] == {"pw": MASKED_B64} and one["stringData"] == {"pw": MASKED}
    assert one["metadata"]["annotations"][LAST_APPLIED] == MASKED
    shapes = [
        {"kind": "SecretList", "items": [SECRET]},
        {"kind": "List", "items": [SECRET]},
        {"kind": "Table", "rows": [{"cells": ["db"], "object": SECRET}]},
        {"type": "ADDED", "object": SECRET},
    ]
    for shape in shapes:
        assert _clean(ins.value(shape)), shape
    assert _clean(ins.event({"type": "MODIFIED", "object": SECRET}))
    assert _clean(
        ins.event({"type": "ADDED", "object": {"kind": "Table", "rows": [{"object": SECRET}]}})
    )
    assert not _clean(SECRET)  # inputs are not modified (and the test can fail)
    assert not _clean(Inspector(mask_secrets=False).value(SECRET))
    # kube-apiserver's list items carry no kind: they are of the list's (or request's)
    bare = {k: v for k, v in SECRET.items() if k not in ("kind", "apiVersion")}
    assert _clean(ins.value({"kind": "SecretList", "items": [bare]}))
    assert _clean(Inspector(kind="Secret").value({"items": [bare]}))
    # a line of a watch stream that is not an event (a list, an object) is still read
    assert _clean(ins.event({"kind": "SecretList", "items": [bare]}))
    assert _clean(ins.event(SECRET))


def test_items_of_governed_namespaces_dropped() -> None:
    ins = Inspector(visible=lambda ns, name: ns != "kube-system")
    pods = [
        {"kind": "Pod", "metadata": {"name": "a", "namespace": "default"}},
        {"kind": "Pod", "metadata": {"name": "b", "namespace": "kube-system"}},
    ]
    assert [
        p["metadata"]["name"] for p in ins.value({"kind": "PodList", "items": pods})["items"]
    ] == ["a"]
    table = {
        "kind": "Table",
        "rows": [{"cells": [], "object": p} for p in pods] + [{"cells": ["x"]}],
    }
    assert [r["object"]["metadata"]["name"] for r in ins.value(table)["rows"]] == ["a"]
    assert ins.event({"type": "ADDED", "object": pods[1]}) is None
    assert (
        ins.event({"type": "ADDED", "object": {"kind": "Table", "rows": [{"object": pods[1]}]}})
        is None
    )
    assert ins.event({"type": "ADDED", "object": pods[0]}) is not None
    ns = [{"kind": "Namespace", "metadata": {"name": n}} for n in ("default", "kube-system")]
    assert len(ins.value({"kind": "NamespaceList", "items": ns})["items"]) == 1


def test_detectors_on_configmaps_and_env() -> None:
    ins = Inspector(masker=ValueMasker(["email"]))
    cm = ins.value(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "c"},
            "data": {"o": "a@example.com", "p": "plain"},
        }
    )
    assert "a@example.com" not in json.dumps(cm) and cm["data"]["p"] == "plain"
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "env": [{"name": "E", "value": "b@example.com"}]}]},
    }
    assert "b@example.com" not in json.dumps(ins.value(pod))
    dep = {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": pod}}
    assert "b@example.com" not in json.dumps(ins.value(dep))


def test_exit_code_from_the_error_channel() -> None:
    from hoopy.protocols.kube.execrelay import exit_code

    assert exit_code(b'{"metadata":{},"status":"Success"}') == 0
    fail = {
        "status": "Failure",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "42"}]},
    }
    assert exit_code(json.dumps(fail).encode()) == 42
    assert exit_code(b"not json") is None and exit_code(b"[]") is None
    assert exit_code(b'{"status":"Failure","details":{"causes":[{"reason":"ExitCode"}]}}') is None


def test_exec_output_masking_keeps_other_bytes() -> None:
    from hoopy.protocols.kube.execrelay import _Lines

    lines = _Lines(ValueMasker(["email"]), tty=False)
    assert lines.feed(b"mail dave@exa") == b""  # held: the line is not complete
    out = lines.feed(b"mple.com ok\n\xff\xfe binary\nrest")
    assert b"dave@example.com" not in out and out.endswith(b" ok\n\xff\xfe binary\n")
    assert lines.feed(b"", final=True) == b"rest"
    tty = _Lines(ValueMasker(["email"]), tty=True)
    assert tty.feed(b"$ ") == b"$ "  # a prompt is not held back
    assert b"eve@example.com" not in tty.feed(b"eve@example.com\r\n")


def test_body_name_of_a_create() -> None:
    # runtime.Unknown{2: object{1: ObjectMeta{1: name "ab", 3: namespace "f"}}}
    pb = b"k8s\x00" + bytes([0x12, 9, 0x0A, 7, 0x0A, 2]) + b"ab" + bytes([0x1A, 1]) + b"f"
    assert body_name("application/vnd.kubernetes.protobuf", pb) == "ab"
    assert body_namespace("application/vnd.kubernetes.protobuf", pb) == ["f"]
    assert body_name("application/json", b'{"metadata":{"name":"x"}}') == "x"
    assert body_name("application/yaml", b"metadata: {name: y}") == "y"
    assert body_name("application/json", b'{"metadata":{"generateName":"z-"}}') == ""
    with pytest.raises(BodyError):
        body_name("application/json", b"{not json")


def test_protobuf_object_meta_is_merged_as_go_merges_it() -> None:
    """Two ObjectMeta occurrences: Go merges them (name from the first, the second
    without one); reading only the last one lost the name and the namespace."""
    meta1 = bytes([0x0A, 7, 0x0A, 2]) + b"ab" + bytes([0x1A, 1]) + b"f"
    meta2 = bytes([0x0A, 4, 0x22, 2]) + b"zz"  # ObjectMeta{4: generateName "zz"}
    raw = meta1 + meta2
    pb = b"k8s\x00" + bytes([0x12, len(raw)]) + raw
    assert body_name("application/vnd.kubernetes.protobuf", pb) == "ab"
    assert body_namespace("application/vnd.kubernetes.protobuf", pb) == ["f"]


def test_detectors_on_the_last_applied_annotation_of_every_kind() -> None:
    """The annotation `kubectl apply` leaves repeats env values (and a ConfigMap's data):
    it was masked on ConfigMaps only, and not at all in a Table's PartialObjectMetadata
    rows (includeObject=Metadata, kube-apiserver's default)."""
    from hoopy.protocols.kube.bodies import LAST_APPLIED

    env = {"containers": [{"name": "c", "env": [{"name": "E", "value": "b@example.com"}]}]}
    applied = {LAST_APPLIED: json.dumps({"kind": "Pod", "spec": env})}
    pod = {"kind": "Pod", "metadata": {"name": "p", "annotations": applied}, "spec": env}
    dep = {
        "kind": "Deployment",
        "metadata": {"name": "d", "annotations": applied},
        "spec": {"template": {"spec": env}},
    }
    for obj, kind in ((pod, "Pod"), (dep, "Deployment")):
        ins = Inspector(masker=ValueMasker(["email"]), kind=kind)
        assert "b@example.com" not in json.dumps(ins.value(obj))
        partial = {"kind": "PartialObjectMetadata", "metadata": obj["metadata"]}
        table = {"kind": "Table", "rows": [{"cells": ["x"], "object": partial}]}
        out = ins.value(table)
        assert "b@example.com" not in json.dumps(out)
        assert "spec" not in out["rows"][0]["object"]  # (nothing added to the row)
    cm_applied = {LAST_APPLIED: json.dumps({"data": {"o": "a@example.com"}})}
    partial = {"kind": "PartialObjectMetadata", "metadata": {"annotations": cm_applied}}
    ins = Inspector(masker=ValueMasker(["email"]), kind="ConfigMap")
    out = ins.value({"kind": "Table", "rows": [{"cells": ["c"], "object": partial}]})
    assert "a@example.com" not in json.dumps(out)
