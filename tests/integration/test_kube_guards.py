"""Guards of hoopy's Kubernetes listener, end to end with real kubectl and raw sockets:
- request heads sent slowly (slowloris) are cut at httpguard.HEAD_TIMEOUT on the
  Kubernetes (TLS) and admin listeners while kubectl keeps working;
- request bodies with a key given twice are refused with a 400 Status naming the key;
- `kubectl create` of objects named by generateName is judged on every possible name."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hoopy.httpguard import HEAD_TIMEOUT
from hoopy.kubenames import ALPHABET
from tests.kubefixture import Emu, KubeHoopy, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
  - name: no-names-ending-in-x
    effect: deny
    reason: names ending in x are reserved
    match: {kubernetes: {verbs: [create], names: ["web-*x"]}}
  - name: no-secret-names
    effect: deny
    reason: secret-* names are reserved
    match: {kubernetes: {names: ["secret-*"]}}
  - name: tmp-only
    effect: allow
    match:
      groups: [tmpers]
      connectors: [cluster]
      kubernetes: {verbs: [create], resources: [configmaps], names: ["tmp-*"]}
"""

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-kube"), emu, POLICY)
    try:
        yield h
    finally:
        h.stop()


def call(hk: KubeHoopy, method: str, path: str, body: bytes, ctype: str) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(hk.ca))
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    headers = {"Authorization": f"Bearer {hk.token()}", "Content-Type": ctype}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


# ---- slow request heads ---------------------------------------------------------------


def _trickle(address: str, tls: ssl.SSLContext | None, out: dict[str, float]) -> None:
    """Open a connection, then send a request head one byte every 100 ms, forever;
    out["closed"]: seconds until the server closed it (absent: it never did)."""
    host, port = address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    sock = tls.wrap_socket(raw, server_hostname=host) if tls else raw
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: a\r\n" * 200
    t0 = time.monotonic()
    sock.settimeout(0.1)
    try:
        for b in head:
            if time.monotonic() - t0 > HEAD_TIMEOUT + 5:
                return
            try:
                sock.sendall(bytes([b]))
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue  # nothing to read: still open
            except (ConnectionError, ssl.SSLError):
                break
        else:
            return
        out["closed"] = time.monotonic() - t0
    finally:
        sock.close()


def test_slow_request_heads_are_cut_while_kubectl_works(hk: KubeHoopy) -> None:
    tls = ssl.create_default_context(cafile=str(hk.ca))
    kube: dict[str, float] = {}
    admin: dict[str, float] = {}
    threads = [
        threading.Thread(target=_trickle, args=(hk.addresses["kubernetes"], tls, kube)),
        threading.Thread(target=_trickle, args=(hk.addresses["admin"], None, admin)),
    ]
    for t in threads:
        t.start()
    try:
        r = hk.kubectl("get", "pods", "-n", "kube-system")  # served meanwhile
        assert r.returncode == 0, r.stderr
    finally:
        for t in threads:
            t.join(HEAD_TIMEOUT + 10)
    assert "closed" in kube and "closed" in admin, (kube, admin)
    for took in (kube["closed"], admin["closed"]):
        assert HEAD_TIMEOUT - 0.5 <= took <= HEAD_TIMEOUT + 3, (kube, admin)
    assert "no complete request head in time" in hk.log_text()


# ---- duplicate keys -------------------------------------------------------------------

CM = "/k8s/cluster/api/v1/namespaces/default/configmaps"


@pytest.mark.parametrize(
    ("method", "path", "ctype", "body", "key"),
    [
        (
            "POST",
            CM,
            "application/json",
            '{"kind":"ConfigMap","apiVersion":"v1","metadata":'
            '{"name":"dup1","namespace":"default","namespace":"kube-system"}}',
            "'metadata.namespace' is given twice",
        ),
        (
            "POST",
            CM,
            "application/json",
            '{"metadata":{"name":"secret-a","name":"dup2"}}',
            "'metadata.name' is given twice",
        ),
        (
            "POST",
            CM,
            "application/json",
            '{"metadata":{"name":"dup3"},"data":{"k":"1","k":"2"}}',
            "'data.k' is given twice",
        ),
        (
            "POST",
            CM,
            "application/json",
            '{"metadata":{"name":"dup4","namesp\\u0061ce":"kube-system","namespace":"default"}}',
            "'metadata.namespace' is given twice",
        ),
        (
            "POST",
            CM,
            "application/json",
            '{"metadata":{"name":"dup5","\\ud800":"a","\\udc00":"b"}}',
            "not valid Unicode",
        ),
        (
            "POST",
            CM,
            "application/yaml",
            "metadata:\n  name: dup6\n  namespace: default\n  namespace: kube-system\n",
            "'namespace' is given twice in one mapping (line 4",
        ),
        (
            "POST",
            CM,
            "application/yaml",
            "x: &m {namespace: kube-system}\nmetadata:\n  <<: *m\n  name: dup7\n"
            "  namespace: default\n",
            "'namespace' is given twice",
        ),
        (
            "POST",
            CM,
            "application/yaml",
            'metadata: {name: dup8}\ndata:\n  1: a\n  "1": b\n',
            "'1' is given twice",
        ),
        (
            "PATCH",
            CM + "/victim",
            "application/merge-patch+json",
            '{"metadata":{"namespace":"default","namespace":"kube-system"}}',
            "'metadata.namespace' is given twice",
        ),
        (
            "PUT",
            CM + "/victim",
            "application/json",
            '{"metadata":{"name":"victim","labels":{"a":"1","a":"2"}}}',
            "'metadata.labels.a' is given twice",
        ),
    ],
)
def test_bodies_with_a_key_given_twice_are_refused(
    hk: KubeHoopy, emu: Emu, method: str, path: str, ctype: str, body: str, key: str
) -> None:
    if not any(c["metadata"]["name"] == "victim" for c in _configmaps(emu)):
        emu.call("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "victim"}})
    before = len(emu.requests())
    status, answer = call(hk, method, path, body.encode(), ctype)
    assert status == 400 and answer["kind"] == "Status", answer
    assert key in answer["message"], answer["message"]
    assert [r for r in emu.requests()[before:] if "configmaps" in r["path"]] == []
    assert "given twice" in hk.recordings_text() or "not valid Unicode" in hk.recordings_text()


def test_a_body_without_duplicates_still_passes(hk: KubeHoopy, emu: Emu) -> None:
    status, answer = call(
        hk, "POST", CM, b'{"metadata":{"name":"single","namespace":"default"}}', "application/json"
    )
    assert status == 201, answer
    assert "single" in [c["metadata"]["name"] for c in _configmaps(emu)]


def _configmaps(emu: Emu, ns: str = "default") -> list[dict[str, Any]]:
    return emu.call("GET", f"/api/v1/namespaces/{ns}/configmaps")["items"]  # type: ignore[no-any-return]


# ---- generateName ---------------------------------------------------------------------


def _create(hk: KubeHoopy, meta: str, groups: tuple[str, ...] = ("agents",)) -> Any:
    doc = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{{meta}}}\ndata: {{a: b}}\n"
    token = hk.token(sub="gen-agent", groups=groups)
    return hk.kubectl(
        "create",
        "--validate=false",
        "-n",
        "default",
        "-f",
        "-",
        "-o",
        "name",
        input=doc,
        token=token,
    )


def test_generate_name_is_judged_on_every_possible_name(hk: KubeHoopy, emu: Emu) -> None:
    before = {c["metadata"]["name"] for c in _configmaps(emu)}
    # some completion of web- ends in x: the deny applies (judged on "web-" it would not)
    r = _create(hk, "generateName: web-")
    assert r.returncode == 1 and "no-names-ending-in-x" in r.stderr, r.stderr
    # every completion of secret- is secret-*: denied
    r = _create(hk, "generateName: secret-")
    assert r.returncode == 1 and "no-secret-names" in r.stderr, r.stderr
    # no completion of app- is covered by a deny: created, named as kube-apiserver would
    r = _create(hk, "generateName: app-")
    assert r.returncode == 0, r.stderr
    made = r.stdout.strip().removeprefix("configmap/")
    assert re.fullmatch(f"app-[{ALPHABET}]{{5}}", made), made
    # an allow naming tmp-* covers generateName tmp- (every completion), not tm
    r = _create(hk, "generateName: tmp-", groups=("tmpers",))
    assert r.returncode == 0, r.stderr
    r = _create(hk, "generateName: tm", groups=("tmpers",))
    assert r.returncode == 1 and "no policy rule allows" in r.stderr, r.stderr
    # a name wins over generateName, as in the cluster
    r = _create(hk, "name: plain-one, generateName: secret-")
    assert r.returncode == 0 and r.stdout.strip() == "configmap/plain-one", r.stderr
    r = _create(hk, "name: secret-one, generateName: app-")
    assert r.returncode == 1 and "no-secret-names" in r.stderr, r.stderr
    after = {c["metadata"]["name"] for c in _configmaps(emu)} - before
    assert {n[:4] for n in after} == {"app-", "tmp-", "plai"}, after
    assert len(after) == 3
