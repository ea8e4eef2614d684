"""Attacks found by review of the Kubernetes data path, each reproduced through hoopy
against the emulator: a denied namespace reached, a Secret read unmasked, a proxy
relayed (see the issue 12 review)."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.integration.test_kube_hostile import call
from tests.kubefixture import (
    Emu,
    KubeHoopy,
    start_hoopy,
)

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
  - name: no-kube-system
    effect: deny
    reason: kube-system is off limits
    match: {kubernetes: {namespaces: [kube-system]}}
  - name: keep-precious
    effect: deny
    reason: precious objects stay
    match: {kubernetes: {verbs: [delete, deletecollection], names: ["precious-*"]}}
  - name: no-admin-objects
    effect: deny
    reason: admin-* objects are made by the platform team
    match: {kubernetes: {verbs: [create], names: ["admin-*"]}}
"""

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-kube"), emu, POLICY)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def precious(emu: Emu) -> None:
    emu.call(
        "POST",
        "/api/v1/namespaces/kube-system/configmaps",
        {"metadata": {"name": "precious"}, "data": {"k": "kube-system-only"}},
    )


@pytest.mark.parametrize(
    "query",
    [
        "fieldSelector=metadata.name%3Dprecious",
        "fieldSelector=metadata.name%3D%3Dprecious",
        "fieldSelector=metadata.name%3Dprecious&watch=1&timeoutSeconds=1",
    ],
)
def test_cluster_wide_list_by_name_hides_governed_namespaces(
    hk: KubeHoopy, precious: None, query: str
) -> None:
    """A name from the field selector made hoopy skip its namespace filter."""
    status, body = call(hk, "GET", "/k8s/cluster/api/v1/configmaps?" + query)
    assert status == 200
    text = body if isinstance(body, bytes) else repr(body).encode()
    assert b"kube-system-only" not in text and b"kube-system" not in text


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH", "POST"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/pods/web/proxy/admin/drop",
        "/api/v1/namespaces/default/services/web:80/proxy/admin/drop",
        "/api/v1/nodes/node-1/proxy/run/default/web/c",
        "/api/v1/proxy/namespaces/default/pods/web/admin/drop",
    ],
)
def test_proxy_is_refused_for_every_method(hk: KubeHoopy, emu: Emu, method: str, path: str) -> None:
    """GET was refused as a connection, but DELETE/PUT/PATCH of pods/proxy were relayed
    into the pod (and nodes/proxy into the kubelet) unread."""
    before = len([r for r in emu.requests() if "/proxy" in r["path"]])
    body = b"{}" if method in ("PUT", "PATCH", "POST") else None
    headers = {
        "Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"
    }
    status, answer = call(hk, method, "/k8s/cluster" + path, body=body, headers=headers)
    assert status in (400, 403), (status, answer)
    assert "proxy" in answer["message"]
    assert len([r for r in emu.requests() if "/proxy" in r["path"]]) == before


def test_oversized_websocket_frame_is_refused(hk: KubeHoopy, emu: Emu) -> None:
    """The exec relay accepted WebSocket messages of any size (max_msg_size=0) and held
    each whole in memory: one agent could exhaust the gateway's memory for all."""
    emu.call("POST", "/api/v1/namespaces/default/pods", {"metadata": {"name": "ws-box"}})
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    url = (
        f"https://{host}:{port}/k8s/cluster/api/v1/namespaces/default/pods/ws-box/exec"
        "?command=cat&stdin=true&stdout=true&stderr=true"
    )

    async def run() -> aiohttp.WSMessage:
        ctx = ssl.create_default_context(cafile=str(hk.ca))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                url,
                ssl=ctx,
                protocols=("v5.channel.k8s.io",),
                headers={"Authorization": f"Bearer {hk.token()}"},
                max_msg_size=0,
            ) as ws,
        ):
            await ws.send_bytes(b"\x00" + b"x" * (8 * 1024 * 1024))
            return await ws.receive(timeout=30)

    msg = asyncio.run(run())
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009, msg


def test_deletecollection_in_a_namespace_respects_name_rules(hk: KubeHoopy, emu: Emu) -> None:
    """`kubectl delete cm --all -n default` is a deletecollection without a name, so a
    rule about names never matched it and it deleted the protected objects too."""
    for name in ("precious-1", "scratch"):
        emu.call("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": name}})
    status, body = call(hk, "DELETE", "/k8s/cluster/api/v1/namespaces/default/configmaps")
    assert status == 403 and "deletecollection" in body["message"], body
    left = emu.call("GET", "/api/v1/namespaces/default/configmaps")["items"]
    assert "precious-1" in [c["metadata"]["name"] for c in left]
    # one by name is judged by the rule as usual
    status, body = call(hk, "DELETE", "/k8s/cluster/api/v1/namespaces/default/configmaps/scratch")
    assert status == 200
    status, body = call(
        hk, "DELETE", "/k8s/cluster/api/v1/namespaces/default/configmaps/precious-1"
    )
    assert status == 403 and "keep-precious" in body["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/k8s/cluster/api/v1/namespaces/default/configmaps/%23",
        "/k8s/cluster/api/v1/namespaces/default/configmaps/#",
        "/k8s/cluster/api/v1/namespaces/default/configmaps/precious-2#",
        "/k8s/cluster/api/v1/namespaces/default/configmaps/x#/y",
    ],
)
def test_fragment_in_the_path_is_refused(hk: KubeHoopy, emu: Emu, path: str) -> None:
    """A '#' in the request target: policy judged a `delete` of the object named '#',
    but the forwarded URL lost everything from '#' on, so the cluster ran a
    deletecollection (or a delete of another name) instead."""
    emu.call("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "precious-2"}})
    status, _ = call(hk, "DELETE", path)
    left = emu.call("GET", "/api/v1/namespaces/default/configmaps")["items"]
    names = [c["metadata"]["name"] for c in left]
    if "precious-2" in names:
        emu.call("DELETE", "/api/v1/namespaces/default/configmaps/precious-2")
    assert status == 400 and "precious-2" in names, (status, names)


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/json", b'{"metadata": {"name": "admin-%s"}}'),
        ("application/yaml", b"metadata:\n  name: admin-%s\n"),
    ],
)
def test_create_is_judged_on_the_name_in_its_body(
    hk: KubeHoopy, emu: Emu, ctype: str, body: bytes
) -> None:
    """A create's path has no name, so a rule about names never matched a create."""
    tag = ctype.rsplit("/", 1)[1].encode()
    path = "/k8s/cluster/api/v1/namespaces/default/configmaps"
    status, answer = call(hk, "POST", path, body=body % tag, headers={"Content-Type": ctype})
    assert status == 403 and "no-admin-objects" in answer["message"], answer
    names = [
        c["metadata"]["name"]
        for c in emu.call("GET", "/api/v1/namespaces/default/configmaps")["items"]
    ]
    assert f"admin-{tag.decode()}" not in names
    ok_body = body.replace(b"admin-", b"user-") % tag
    status, answer = call(hk, "POST", path, body=ok_body, headers={"Content-Type": ctype})
    assert status == 201, answer


def test_protobuf_create_split_object_meta(hk: KubeHoopy) -> None:
    """ObjectMeta sent twice in a protobuf body: the cluster merges both (so the name is
    admin-pb), hoopy read only the last (no name) and let the create through."""
    meta1 = bytes([0x0A, 10, 0x0A, 8]) + b"admin-pb"
    meta2 = bytes([0x0A, 4, 0x22, 2]) + b"zz"
    raw = meta1 + meta2
    body = b"k8s\x00" + bytes([0x0A, 0]) + bytes([0x12, len(raw)]) + raw
    status, answer = call(
        hk,
        "POST",
        "/k8s/cluster/api/v1/namespaces/default/configmaps",
        body=body,
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
    )
    assert status == 403 and "no-admin-objects" in answer["message"], (status, answer)


def test_tty_spelled_otherwise_is_still_recorded_as_a_tty(hk: KubeHoopy, emu: Emu) -> None:
    """`tty=yes` is a TTY to the cluster (Go reads any value but 0/false as true) but was
    not to hoopy, which then kept only the first 64 KiB of the session, not a cast."""
    emu.call("POST", "/api/v1/namespaces/default/pods", {"metadata": {"name": "tty-box"}})
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    url = (
        f"https://{host}:{port}/k8s/cluster/api/v1/namespaces/default/pods/tty-box/exec"
        "?command=sh&command=-c&command=echo+yes-tty-$((6*7))&stdout=true&tty=yes"
    )

    async def run() -> bytes:
        ctx = ssl.create_default_context(cafile=str(hk.ca))
        out = b""
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                url,
                ssl=ctx,
                protocols=("v5.channel.k8s.io",),
                headers={"Authorization": f"Bearer {hk.token(sub='tty-yes')}"},
            ) as ws,
        ):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x01":
                    out += msg.data[1:]
        return out

    assert b"yes-tty-42" in asyncio.run(run())
    listed = hk.cli("sessions", "list", "--subject", "tty-yes").stdout.split()
    shown = hk.cli("sessions", "show", listed[0]).stdout
    assert '"tty": true' in shown, shown


def test_a_watch_the_cluster_reads_as_false_is_judged_as_a_list(
    emu: Emu, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`watch=fal%C5%BFe` (U+017F, a long s): Go's strings.EqualFold reads it as false,
    so the cluster lists; hoopy read it as true and judged a watch, which a rule on
    `list` skips."""
    emu.call(
        "POST",
        "/api/v1/namespaces/default/secrets",
        {"metadata": {"name": "listed"}, "data": {"k": "bGlzdGVk"}},
    )
    policy = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
  - name: no-secret-lists
    effect: deny
    reason: Secrets are read one by one
    match: {kubernetes: {verbs: [list], resources: [secrets]}}
"""
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-fold"), emu, policy)
    try:
        path = "/k8s/cluster/api/v1/namespaces/default/secrets?watch=fal%C5%BFe"
        before = len([r for r in emu.requests() if "watch=fal" in r["path"]])
        status, answer = call(h, "GET", path)
        assert status == 403, (status, answer)
        assert "no-secret-lists" in answer["message"]
        assert len([r for r in emu.requests() if "watch=fal" in r["path"]]) == before
    finally:
        h.stop()


@pytest.mark.parametrize("include", ["Metadata", "Object"])
@pytest.mark.parametrize("one", [False, True])
def test_a_secrets_table_masks_the_last_applied_annotation(
    hk: KubeHoopy, emu: Emu, include: str, one: bool
) -> None:
    """`includeObject=Metadata` (kube-apiserver's default for a Table) gives each row a
    PartialObjectMetadata: hoopy did not take it for a Secret, so the
    last-applied-configuration annotation (the Secret's data, as `kubectl apply` keeps
    it) went to the agent unmasked."""
    applied = json.dumps({"apiVersion": "v1", "kind": "Secret", "data": {"k": "YXBwbGllZA=="}})
    emu.call(
        "POST",
        "/api/v1/namespaces/default/secrets",
        {
            "metadata": {
                "name": f"applied-{include.lower()}-{one}",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied},
            },
            "data": {"k": "YXBwbGllZA=="},
        },
    )
    path = "/k8s/cluster/api/v1/namespaces/default/secrets"
    if one:
        path += f"/applied-{include.lower()}-{one}"
    status, answer = call(
        hk,
        "GET",
        f"{path}?includeObject={include}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    assert status == 200 and answer["kind"] == "Table", answer
    assert answer["rows"] and all("object" in r for r in answer["rows"])
    assert "YXBwbGllZA==" not in json.dumps(answer)


@pytest.mark.parametrize("include", ["Metadata", "Object", "None"])
def test_a_namespaces_table_hides_governed_namespaces(
    hk: KubeHoopy, emu: Emu, include: str
) -> None:
    """With includeObject=Metadata (kube-apiserver's default, and kubectl get's) each row
    is a PartialObjectMetadata: a Namespace's own name is its namespace, but hoopy read
    the (empty) metadata.namespace and showed kube-system."""
    names = [n["metadata"]["name"] for n in emu.call("GET", "/api/v1/namespaces")["items"]]
    assert "kube-system" in names
    status, answer = call(
        hk,
        "GET",
        f"/k8s/cluster/api/v1/namespaces?includeObject={include}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    assert status == 200 and answer["kind"] == "Table", answer
    assert "kube-system" not in json.dumps(answer["rows"])


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=40",
        "/api/v1/namespaces/default/secrets?watch=1&timeoutSeconds=40",  # (inspected)
    ],
)
def test_a_watch_ends_with_its_token(hk: KubeHoopy, path: str) -> None:
    """Exec, attach and port-forward ended with the token they were opened with, but a
    watch went on for as long as the cluster allowed (an hour and more): the agent kept
    reading changes after its token had expired."""
    ctx = ssl.create_default_context(cafile=str(hk.ca))
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)
    token = hk.token(sub="watch-exp", ttl=3)
    start = time.monotonic()
    conn.request("GET", "/k8s/cluster" + path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    while resp.read1(65536):  # until hoopy ends the answer
        pass
    took = time.monotonic() - start
    conn.close()
    assert took < 25, f"the watch went on {took:.0f} s after a 3 s token"
    assert "token expired: the stream ends" in hk.recordings_text()


def test_kubectl_get_namespaces_hides_governed_namespaces(hk: KubeHoopy, emu: Emu) -> None:
    """`kubectl get namespaces` asks for a Table without includeObject: kube-apiserver
    (and now the emulator) then gives PartialObjectMetadata rows, and hoopy showed
    kube-system, a namespace its policy governs."""
    names = [n["metadata"]["name"] for n in emu.call("GET", "/api/v1/namespaces")["items"]]
    assert "kube-system" in names and "default" in names
    got = hk.kubectl("get", "namespaces")
    assert got.returncode == 0, got.stderr
    assert "default" in got.stdout and "kube-system" not in got.stdout, got.stdout


def test_exec_input_in_a_text_message_is_recorded(hk: KubeHoopy, emu: Emu) -> None:
    """kube-apiserver reads a text WebSocket message's bytes as it reads a binary one's
    (channel byte first), but hoopy passed text messages on unread: input that reached
    the process without being recorded (or without stdin=true having been judged)."""
    emu.call("POST", "/api/v1/namespaces/default/pods", {"metadata": {"name": "text-box"}})
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    url = (
        f"https://{host}:{port}/k8s/cluster/api/v1/namespaces/default/pods/text-box/exec"
        "?command=cat&stdin=true&stdout=true&stderr=true"
    )
    token = hk.token(sub="text-input")

    async def run() -> bytes:
        ctx = ssl.create_default_context(cafile=str(hk.ca))
        out = b""
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                url,
                ssl=ctx,
                protocols=("v5.channel.k8s.io",),
                headers={"Authorization": f"Bearer {token}"},
            ) as ws,
        ):
            await ws.send_str("\x00typed-in-a-text-message\n")
            await ws.send_bytes(b"\xff\x00")  # (v5: stdin ends)
            while True:
                msg = await ws.receive(timeout=30)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                if msg.data[:1] == b"\x01":
                    out += msg.data[1:]
                if msg.data[:1] == b"\x03":
                    break
        return out

    assert b"typed-in-a-text-message" in asyncio.run(run())
    from tests.integration.test_kube_portforward import session_events

    _, events = session_events(hk, "text-input")
    io = [e for e in events if e.get("type") == "exec_io"]
    assert io and "typed-in-a-text-message" in io[0].get("stdin", ""), io
