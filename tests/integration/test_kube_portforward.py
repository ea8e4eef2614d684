"""Real kubectl 1.32 `port-forward` and `attach` through hoopy to the emulator.

port-forward: kubectl tunnels SPDY/3.1 in a WebSocket; hoopy judges every stream on
its port (`kubernetes: {ports: [...]}`), relays and records the bytes.  The pod's
port P is 127.0.0.1:P on the emulator's host, where each test runs a TCP echo server.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.kubeemu.fixture import KUBECTL, Emu, KubeHoopy, start_hoopy

pytest_plugins = ["tests.kubeemu.fixture"]  # the emulator fixture, `emu`


@dataclass
class Echo:
    """A TCP echo server (the pod's port); it counts what reached it."""

    server: socketserver.ThreadingTCPServer
    connections: list[bytes] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def start_echo() -> Echo:
    echo: Echo

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            got = bytearray()
            while data := self.request.recv(65536):
                got += data
                self.request.sendall(data)
            echo.connections.append(bytes(got))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    echo = Echo(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return echo


@pytest.fixture(scope="module")
def echoes() -> Iterator[tuple[Echo, Echo]]:
    allowed, other = start_echo(), start_echo()
    yield allowed, other
    for e in (allowed, other):
        e.server.shutdown()
        e.server.server_close()


def policy(port: int) -> str:
    return f"""
rules:
  - name: agents
    effect: allow
    match: {{groups: [agents], connectors: ["cluster*"]}}
  - name: forward-echo
    effect: allow
    match: {{groups: [agents], kubernetes: {{resources: [pods/portforward], ports: [{port}]}}}}
  - name: attach-workers
    effect: allow
    match: {{groups: [agents], kubernetes: {{resources: [pods/attach], opaque: true}}}}
  - name: no-vault
    effect: deny
    reason: the vault namespace is off limits
    match: {{kubernetes: {{namespaces: [vault]}}}}
  - name: hide-emails
    effect: mask
    detectors: [email]
    match: {{connectors: [cluster-masked]}}
"""


@pytest.fixture(scope="module")
def hk(
    emu: Emu, echoes: tuple[Echo, Echo], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeHoopy]:
    h = start_hoopy(
        tmp_path_factory.mktemp("hoopy-pf"),
        emu,
        policy(echoes[0].port),
        connectors={"cluster": "", "cluster-masked": ""},
    )
    try:
        for ns in ("pf", "vault"):
            h.kubectl("create", "namespace", ns)
        h.kubectl("-n", "pf", "run", "db", "--image=x")
        emu.call(  # (vault is denied through hoopy)
            "POST",
            "/api/v1/namespaces/vault/pods",
            {"metadata": {"name": "db"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
        )
        yield h
    finally:
        h.stop()


class Forward:
    """`kubectl port-forward pod/db :PORT` (kubectl picks the local port and says it)."""

    def __init__(self, hk: KubeHoopy, *args: str, token: str, connector: str = "cluster"):
        env = {**os.environ, "KUBECONFIG": "/dev/null", "KUBECACHEDIR": str(hk.folder / "kc")}
        self.proc = subprocess.Popen(
            [
                KUBECTL,
                "--server",
                f"{hk.server}/k8s/{connector}",
                "--certificate-authority",
                str(hk.ca),
                "--token",
                token,
                "port-forward",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        out = self.proc.stdout
        assert out is not None

        def read() -> None:
            for line in out:
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=read, daemon=True).start()

    def local_port(self) -> int | None:
        """The local port once kubectl listens; None if kubectl ended first."""
        while (line := self.lines.get(timeout=30)) is not None:
            m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
            if m:
                return int(m.group(1))
        return None

    def finish(self, ends: bool = False) -> tuple[int, str]:
        """kubectl's exit status and stderr: stopped, unless it `ends` by itself."""
        if not ends and self.proc.poll() is None:
            self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while data := s.recv(65536):
            got += data
        return bytes(got)


def session_events(hk: KubeHoopy, subject: str) -> tuple[str, list[dict[str, Any]]]:
    listed = [x for x in hk.cli("sessions", "list").stdout.splitlines() if subject in x]
    assert len(listed) == 1, listed
    sid = listed[0].split()[0]
    shown = hk.cli("sessions", "show", sid)
    assert shown.returncode == 0, shown.stderr
    return sid, [json.loads(x) for x in shown.stdout.splitlines() if x.startswith("{")]


def test_port_forward_round_trip_recorded_and_verified(
    hk: KubeHoopy, echoes: tuple[Echo, Echo]
) -> None:
    echo = echoes[0]
    before = len(echo.connections)
    fwd = Forward(hk, "-n", "pf", "pod/db", f":{echo.port}", token=hk.token(sub="pf-agent"))
    local = fwd.local_port()
    assert local is not None, fwd.finish()
    payload = bytes(range(256)) * 2000 + b"marker-to-pod"  # 512 KB, every byte value
    assert roundtrip(local, payload) == payload
    assert roundtrip(local, b"second connection") == b"second connection"
    _, err = fwd.finish()
    assert echo.connections[before:] == [payload, b"second connection"], err
    sid, events = session_events(hk, "pf-agent")
    opens = [e for e in events if e.get("type") == "portforward_open"]
    assert {(e["port"], e["kind"]) for e in opens} == {(echo.port, "error"), (echo.port, "data")}
    assert len(opens) == 4  # two streams per local connection
    closes = [e for e in events if e.get("type") == "portforward_close" and e["kind"] == "data"]
    assert sorted(e["to_pod"] for e in closes) == sorted([len(payload), 17])
    assert sorted(e["to_agent"] for e in closes) == sorted([len(payload), 17])
    to_pod = b"".join(
        base64.b64decode(e["data"])
        for e in events
        if e.get("type") == "portforward_data" and e["direction"] == "to_pod"
    )
    assert payload in to_pod and b"second connection" in to_pod
    assert all(len(base64.b64decode(e["data"])) <= 16384 for e in events if "data" in e)
    commands = [e for e in events if e.get("type") == "command"]
    assert any(f"port {echo.port}" in str(e.get("text")) for e in commands)
    verified = hk.cli("verify", sid)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_port_not_allowed_is_refused_and_never_reaches_the_pod(
    hk: KubeHoopy, echoes: tuple[Echo, Echo], emu: Emu
) -> None:
    other = echoes[1]
    fwd = Forward(hk, "-n", "pf", "pod/db", f":{other.port}", token=hk.token(sub="pf-denied"))
    local = fwd.local_port()
    assert local is not None, fwd.finish()
    got = roundtrip(local, b"must not arrive")
    assert got == b""
    code, err = fwd.finish(ends=True)  # kubectl gives up the tunnel, as on a kubelet error
    assert code == 1 and "lost connection to pod" in err, err
    assert f"hoopy refused port {other.port} of pod pf/db" in err, err
    assert "kubernetes: {ports:" in err
    assert other.connections == []
    assert all(o["port"] != other.port for o in emu.call("GET", "/emu/portforwards"))
    _, events = session_events(hk, "pf-denied")
    refused = [e for e in events if e.get("type") == "portforward_refused"]
    assert refused and all(e["port"] == other.port for e in refused)
    assert not [e for e in events if e.get("type") == "portforward_data"]


def test_port_forward_denied_by_namespace(hk: KubeHoopy, echoes: tuple[Echo, Echo]) -> None:
    fwd = Forward(hk, "-n", "vault", "pod/db", f":{echoes[0].port}", token=hk.token())
    assert fwd.local_port() is None
    code, err = fwd.finish()
    assert code != 0 and "no-vault" in err and "off limits" in err, err


def test_port_forward_refused_under_a_mask_rule(hk: KubeHoopy, echoes: tuple[Echo, Echo]) -> None:
    before = len(echoes[0].connections)
    fwd = Forward(
        hk, "-n", "pf", "pod/db", f":{echoes[0].port}", token=hk.token(), connector="cluster-masked"
    )
    assert fwd.local_port() is None
    code, err = fwd.finish()
    assert code != 0 and "hide-emails" in err and "cannot be masked" in err, err
    assert len(echoes[0].connections) == before


def test_attach_with_stdin_is_relayed_and_recorded(hk: KubeHoopy, emu: Emu) -> None:
    hk.kubectl("-n", "pf", "run", "worker", "--image=x")
    script = "import sys\nfor line in sys.stdin: print('got', line.strip().upper(), flush=True)"
    emu.call("POST", "/emu/attach/pf/worker", {"command": ["python3", "-u", "-c", script]})
    r = hk.kubectl(
        "-n", "pf", "attach", "-i", "worker", token=hk.token(sub="attach-agent"),
        input="hello\nworld\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "got HELLO" in r.stdout and "got WORLD" in r.stdout
    sid, events = session_events(hk, "attach-agent")
    io = [e for e in events if e.get("type") == "exec_io"]
    assert io and "hello" in io[0]["stdin"] and "got HELLO" in io[0]["stdout"]
    verified = hk.cli("verify", sid)
    assert verified.returncode == 0, verified.stdout + verified.stderr
