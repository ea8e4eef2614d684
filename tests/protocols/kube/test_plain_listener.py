"""The Kubernetes listener's two servers end to end (real TLS, hoopy serve, the
emulator), with raw bytes: plain GETs served by h1server (pipelined, in order), a
connection handed to aiohttp mid-way at its first other request (a create with a
body, Expect: 100-continue, HTTP/1.0, a malformed head) and still answered right, a
GET with a body whose bytes are never taken for a request (no smuggling), 401 Status
answers, Connection: close."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from tests.kubefixture import Emu, KubeHoopy, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
  - name: no-secrets
    effect: deny
    reason: secrets are off limits
    match: {kubernetes: {resources: [secrets]}}
"""

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`

NS = "plainns"


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    emu.call("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    for i in range(3):
        emu.call("POST", f"/api/v1/namespaces/{NS}/pods", {"metadata": {"name": f"p{i}"}})
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-plain"), emu, POLICY)
    try:
        yield h
    finally:
        h.stop()


class Raw:
    """One TLS connection to hoopy's Kubernetes listener, spoken to in bytes."""

    def __init__(self, hk: KubeHoopy) -> None:
        host, port = hk.addresses["kubernetes"].rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=str(hk.ca))
        raw = socket.create_connection((host, int(port)), timeout=30)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.file: BinaryIO = self.sock.makefile("rb")
        self.token = hk.token()

    def get(self, path: str, extra: str = "", version: str = "1.1") -> bytes:
        return (
            f"GET /k8s/cluster{path} HTTP/{version}\r\nHost: x\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: application/json\r\n{extra}\r\n"
        ).encode()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers (lower-case names), body (de-chunked)."""
        line = self.file.readline()
        assert line.startswith(b"HTTP/1."), line
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while True:
            h = self.file.readline()
            if h in (b"\r\n", b""):
                break
            name, _, value = h.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self.file.readline().split(b";")[0], 16)
                if size == 0:
                    self.file.readline()
                    break
                body += self.file.read(size)
                self.file.readline()
        elif "content-length" in headers:
            body = self.file.read(int(headers["content-length"]))
        else:
            body = self.file.read()
        return status, headers, body

    def closed_by_server(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def name_of(body: bytes) -> Any:
    return json.loads(body)["metadata"].get("name")


def test_pipelined_gets_come_back_in_order(hk: KubeHoopy) -> None:
    c = Raw(hk)
    try:
        c.send(b"".join(c.get(f"/api/v1/namespaces/{NS}/pods/p{i}") for i in (2, 0, 1)))
        names = []
        for _ in range(3):
            status, headers, body = c.answer()
            assert status == 200 and "date" in headers
            names.append(name_of(body))
        assert names == ["p2", "p0", "p1"]
        c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p0"))  # the connection is kept
        assert c.answer()[0] == 200
    finally:
        c.close()


def test_a_connection_handed_to_aiohttp_mid_way_keeps_its_order(hk: KubeHoopy) -> None:
    body = json.dumps({"metadata": {"name": "handed"}, "data": {"k": "v"}}).encode()
    post = (
        f"POST /k8s/cluster/api/v1/namespaces/{NS}/configmaps HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {hk.token()}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    c = Raw(hk)
    try:
        c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p1") + post)
        c.send(c.get(f"/api/v1/namespaces/{NS}/configmaps/handed"))
        first, created, read = c.answer(), c.answer(), c.answer()
        assert (first[0], name_of(first[2])) == (200, "p1")
        assert created[0] == 201, created
        assert (read[0], name_of(read[2])) == (200, "handed")
    finally:
        c.close()


def test_expect_100_continue_goes_to_aiohttp(hk: KubeHoopy) -> None:
    """(aiohttp's bare server sends no 100 Continue: a client sends its body after a
    wait, as curl does after a second; this one sends it at once.)"""
    body = json.dumps({"metadata": {"name": "expected"}}).encode()
    c = Raw(hk)
    try:
        c.send(
            (
                f"POST /k8s/cluster/api/v1/namespaces/{NS}/configmaps HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {c.token}\r\nContent-Type: application/json\r\n"
                f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        status = c.answer()[0]
        if status == 100:
            status = c.answer()[0]
        assert status == 201
        c.send(c.get(f"/api/v1/namespaces/{NS}/configmaps/expected"))
        assert c.answer()[0] == 200
    finally:
        c.close()


def test_a_get_with_a_body_never_smuggles_a_request(hk: KubeHoopy) -> None:
    """The body of a GET (here a whole request to a denied resource) is a body: the
    connection goes to aiohttp, which reads it as such, and only two answers come."""
    smuggled = (
        f"GET /k8s/cluster/api/v1/namespaces/{NS}/secrets/smuggled HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {hk.token()}\r\n\r\n"
    ).encode()
    c = Raw(hk)
    try:
        for framing in (
            f"Content-Length: {len(smuggled)}\r\n".encode(),
            b"Transfer-Encoding: chunked\r\n",
        ):
            body = smuggled
            if b"chunked" in framing:
                body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
            head = c.get(f"/api/v1/namespaces/{NS}/pods/p0")
            c.send(head[:-2] + framing + b"\r\n" + body)
            c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p2"))
            a, b = c.answer(), c.answer()
            assert (a[0], name_of(a[2])) == (200, "p0")
            assert (b[0], name_of(b[2])) == (200, "p2")
    finally:
        c.close()
    assert "secrets/smuggled" not in hk.recordings_text()


def test_http_10_is_answered_and_closed(hk: KubeHoopy) -> None:
    c = Raw(hk)
    try:
        c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p0", version="1.0"))
        status, _, body = c.answer()
        assert (status, name_of(body)) == (200, "p0")
        assert c.closed_by_server()
    finally:
        c.close()


def test_connection_close_on_a_plain_get(hk: KubeHoopy) -> None:
    c = Raw(hk)
    try:
        c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p0", "Connection: close\r\n"))
        c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p1"))  # after the close: never answered
        status, headers, body = c.answer()
        assert (status, headers.get("connection"), name_of(body)) == (200, "close", "p0")
        assert c.closed_by_server()
    finally:
        c.close()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /k8s/cluster/api HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
        b"GET /k8s/cluster/api HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /k8s/cluster/api HTTP/1.1\r\nX-A: b\r\n\r\n",
        b"GET /k8s/cluster/api HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    ],
    ids=["space-before-colon", "folded", "no-host", "long-header"],
)
def test_malformed_heads_get_aiohttps_400(hk: KubeHoopy, head: bytes) -> None:
    c = Raw(hk)
    try:
        c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p0") + head)
        assert c.answer()[0] == 200
        assert c.answer()[0] == 400
    finally:
        c.close()


def test_refusals_on_the_plain_path_are_kubernetes_status(hk: KubeHoopy) -> None:
    c = Raw(hk)
    try:
        c.token = "not-a-token"
        c.send(c.get(f"/api/v1/namespaces/{NS}/pods/p0"))
        status, headers, body = c.answer()
        assert status == 401 and json.loads(body)["kind"] == "Status"
        c.token = hk.token()
        c.send(c.get(f"/api/v1/namespaces/{NS}/secrets/x"))
        status, headers, body = c.answer()
        assert status == 403 and "no-secrets" in json.loads(body)["message"]
        assert headers["content-type"].startswith("application/json")
        c.send(c.get("/api/v1/namespaces/a/pods/%2e%2e"))
        assert c.answer()[0] == 400
    finally:
        c.close()


def test_a_token_of_undecodable_bytes_is_a_401_not_a_crash(hk: KubeHoopy) -> None:
    c = Raw(hk)
    try:
        for token in (b"abc\xff\xfe", "tok\u00e9n".encode()):
            c.send(
                f"GET /k8s/cluster/api/v1/namespaces/{NS}/pods/p0 HTTP/1.1\r\nHost: x\r\n".encode()
                + b"Authorization: Bearer "
                + token
                + b"\r\n\r\n"
            )
            status, _, body = c.answer()
            assert status == 401 and "outside ASCII" in json.loads(body)["message"]
    finally:
        c.close()
    assert "UnicodeEncodeError" not in hk.log_text()


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding:\tchunked\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Content-Length: +40\r\n",
        b"Content-Length: 40\r\nContent-Length: 41\r\n",
        b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["te-space", "te-tab", "te-xchunked", "cl-plus", "cl-twice", "cl-te"],
)
def test_obfuscated_framing_never_smuggles_a_request(hk: KubeHoopy, framing: bytes) -> None:
    """Whatever aiohttp makes of each (a 400, or a body), the request hidden in the
    body never runs: never answered as a request of its own, never recorded."""
    smuggled = (
        f"GET /k8s/cluster/api/v1/namespaces/{NS}/configmaps/smuggled-{len(framing)} "
        f"HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hk.token()}\r\n\r\n"
    ).encode()
    c = Raw(hk)
    answers = []
    try:
        head = c.get(f"/api/v1/namespaces/{NS}/pods/p0")
        body = b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
        c.send(head[:-2] + framing + b"\r\n" + body + c.get(f"/api/v1/namespaces/{NS}/pods/p2"))
        while True:  # until the follow-up GET is answered, or the server closes
            line = c.file.peek(1) if hasattr(c.file, "peek") else b"x"
            if not line:
                break
            answers.append(c.answer())
            if answers[-1][0] == 200 and name_of(answers[-1][2]) == "p2":
                break
    finally:
        c.close()
    assert answers and answers[0][0] in (200, 400), answers
    for status, _, text in answers:  # each answer is p0's, p2's or a 400: none the hidden one's
        assert b"smuggled" not in text and (status == 400 or name_of(text) in ("p0", "p2"))
    assert f"smuggled-{len(framing)}" not in hk.recordings_text()
