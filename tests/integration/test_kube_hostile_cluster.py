"""A cluster answer hoopy must inspect that is cut, or shaped to slip past the item by
item rewriting (liststream.py), seen by the agent over raw HTTPS through hoopy.

The emulator cannot cut an answer, so a small TLS server here answers every request
with one scripted response (the emulator's certificate code, a kubeconfig to it)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from hoopy.kubeemu.__main__ import kubeconfig
from hoopy.tlsutil import TLSFiles, ensure_pair
from tests.kubefixture import Emu, KubeHoopy, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
"""

VALUE = "c2VjcmV0LXZhbHVlLW5ldmVyLXNob3du"  # base64 of the Secret value


def secret(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "app", "resourceVersion": "1"},
        "data": {"password": VALUE},
        "type": "Opaque",
    }


class Cluster:
    """Answers each request with `self.answer` (raw bytes), then closes."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        files = TLSFiles(folder / "ca.pem", folder / "key.pem")
        ensure_pair(files)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(files.cert), str(files.key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        (folder / "kubeconfig").write_text(kubeconfig(f"https://127.0.0.1:{port}", files.cert, "t"))
        self.kubeconfig = folder / "kubeconfig"
        self.answer = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as s:
                s.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    got = s.recv(65536)
                    if not got:
                        return
                    head += got
                s.sendall(self.answer)
        except OSError:
            pass

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("hostile") / "cluster")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def hk(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    fake = cast(Emu, SimpleNamespace(kubeconfig=cluster.kubeconfig))  # (only its kubeconfig)
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-kube"), fake, POLICY)
    try:
        yield h
    finally:
        h.stop()


def get(hk: KubeHoopy, path: str) -> tuple[int, bytes | Exception]:
    """The status and body the agent gets, or the exception reading the body raised."""
    ctx = ssl.create_default_context(cafile=str(hk.ca))
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {hk.token()}"})
    resp = conn.getresponse()
    try:
        return resp.status, resp.read()
    except (http.client.HTTPException, OSError) as e:
        return resp.status, e
    finally:
        conn.close()


def partial(e: Exception) -> bytes:
    return e.partial if isinstance(e, http.client.IncompleteRead) else b""


def head(framing: str) -> bytes:
    frame = "Transfer-Encoding: chunked\r\n" if framing == "chunked" else "Connection: close\r\n"
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{frame}\r\n".encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


PAD = [secret(f"pad-{i}") for i in range(3000)]  # > 1 MiB in all: streamed


@pytest.mark.parametrize("framing", ["chunked", "close"])
@pytest.mark.parametrize("where", ["before the items", "in an item"])
def test_a_list_answer_cut_short_never_reaches_the_agent_whole(
    hk: KubeHoopy, cluster: Cluster, framing: str, where: str
) -> None:
    """The agent gets a broken answer (the connection cut), never a complete JSON list,
    and never the Secret's value."""
    start = b'{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"9"},'
    if where == "in an item":
        items = json.dumps(PAD).encode()[:-1]  # (without its "]")
        body = start + b'"items":' + items + b',{"metadata":{"name":"last"},"data":{"k":"'
    else:
        body = start + b'"metadata2":"' + b"x" * 2_000_000
    if framing == "chunked":  # (the last chunk never comes)
        cluster.answer = (
            head(framing) + chunk(body[: len(body) // 2]) + chunk(body[len(body) // 2 :])
        )
    else:  # the close is the answer's end, as HTTP/1.1 allows without a length
        cluster.answer = head(framing) + body
    code, got = get(hk, "/k8s/cluster/api/v1/secrets")
    if isinstance(got, bytes):  # (a status answer instead of the list is fine too)
        assert code >= 500, got[:200]
        assert json.loads(got)["kind"] == "Status"
    else:
        assert isinstance(got, http.client.IncompleteRead | ConnectionError), repr(got)
        assert VALUE.encode() not in partial(got), "Secret values sent unmasked"
    assert VALUE.encode() not in (got if isinstance(got, bytes) else partial(got))


def test_a_kind_named_again_after_the_items_is_cut(hk: KubeHoopy, cluster: Cluster) -> None:
    """`{"kind":"ConfigMapList","items":[...secrets...],"kind":"SecretList"}`: hoopy judged
    the items as ConfigMaps, the agent's JSON reader takes the last kind (SecretList)."""
    items = json.dumps([*PAD, secret("real")]).encode()
    body = b'{"kind":"ConfigMapList","apiVersion":"v1","items":' + items + b',"kind":"SecretList"}'
    cluster.answer = head("close") + body
    _, got = get(hk, "/k8s/cluster/api/v1/secrets")
    if isinstance(got, bytes):
        assert VALUE.encode() not in got, "Secret values sent unmasked"
    else:
        assert isinstance(got, http.client.IncompleteRead | ConnectionError), repr(got)
        assert VALUE.encode() not in partial(got), "Secret values sent unmasked"
