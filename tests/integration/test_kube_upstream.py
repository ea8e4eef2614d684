"""hoopy's connections to the cluster (hoopy/protocols/kube/h1.py) seen from outside:
keep-alive reuse across requests, a watch the agent abandons closes its cluster
connection, and a cluster that went away answers 502 (not a hang, not a 500)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubefixture import Emu, KubeHoopy, start_emulator, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
"""


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Emu, KubeHoopy]]:
    emu = start_emulator(tmp_path / "emu")
    h = start_hoopy(tmp_path / "hoopy", emu, POLICY)
    try:
        emu.call("POST", "/api/v1/namespaces", {"metadata": {"name": "up"}})
        emu.call("POST", "/api/v1/namespaces/up/pods", {"metadata": {"name": "p0"}})
        yield emu, h
    finally:
        h.stop()
        emu.stop()


def upstream_connections(port: int, pid: int | None = None) -> int:
    """Established TCP connections on this machine whose far end is `port` (only those
    of process `pid`, when given)."""
    mine: set[str] | None = None
    if pid is not None:
        mine = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "01" or int(fields[2].rsplit(":", 1)[1], 16) != port:
                continue
            if mine is None or fields[9] in mine:
                n += 1
    return n


def settle(want: int, port: int, timeout: float = 20) -> int:
    """Poll (bounded) until the count is `want`; return the last count."""
    deadline = time.monotonic() + timeout
    n = upstream_connections(port)
    while n != want and time.monotonic() < deadline:
        time.sleep(0.05)
        n = upstream_connections(port)
    return n


def client(h: KubeHoopy) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(h.ca))
    host, port = h.addresses["kubernetes"].rsplit(":", 1)
    return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)


def test_requests_share_kept_alive_connections(pair: tuple[Emu, KubeHoopy]) -> None:
    emu, h = pair
    headers = {"Authorization": f"Bearer {h.token()}", "Accept": "application/json"}
    c = client(h)
    for _ in range(30):
        c.request("GET", "/k8s/cluster/api/v1/namespaces/up/pods/p0", headers=headers)
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["metadata"]["name"] == "p0"
    c.close()
    # 30 requests, one connection of hoopy's to the cluster (kept alive between them)
    assert upstream_connections(emu.port, h.proc.pid) == 1


def test_an_abandoned_watch_closes_its_cluster_connection(pair: tuple[Emu, KubeHoopy]) -> None:
    emu, h = pair
    token = h.token()
    assert upstream_connections(emu.port) == 0
    ctx = ssl.create_default_context(cafile=str(h.ca))
    host, port = h.addresses["kubernetes"].rsplit(":", 1)
    raw = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host)
    raw.sendall(
        b"GET /k8s/cluster/api/v1/namespaces/up/pods?watch=true HTTP/1.1\r\n"
        b"Host: hoopy\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    assert raw.recv(65536).startswith(b"HTTP/1.1 200")  # the watch runs
    assert upstream_connections(emu.port) == 1  # on a connection of its own
    raw.close()  # the agent goes away; the next event finds it gone
    emu.call("POST", "/api/v1/namespaces/up/pods", {"metadata": {"name": "p1"}})
    assert settle(0, emu.port) == 0  # closed, not kept for reuse mid-stream
    c = client(h)  # hoopy still serves
    c.request(
        "GET",
        "/k8s/cluster/api/v1/namespaces/up/pods/p1",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert c.getresponse().status == 200


def test_a_cluster_gone_away_is_a_502(pair: tuple[Emu, KubeHoopy]) -> None:
    emu, h = pair
    headers = {"Authorization": f"Bearer {h.token()}"}
    c = client(h)
    c.request("GET", "/k8s/cluster/api/v1/namespaces/up/pods/p0", headers=headers)
    assert c.getresponse().read() and upstream_connections(emu.port) == 1
    emu.stop()  # the kept-alive connection dies with it
    c.request("GET", "/k8s/cluster/api/v1/namespaces/up/pods/p0", headers=headers)
    r = c.getresponse()
    status = json.loads(r.read())
    assert r.status == 502 and status["reason"] == "ServiceUnavailable"
    assert "connector cluster is unreachable" in status["message"]
    assert "Traceback" not in h.log_text()
    assert '"status":502' in h.recordings_text()  # recorded like any answer
