"""Real kubectl 1.32 `port-forward` and `attach` through hoopy to the emulator.

port-forward: kubectl tunnels SPDY/3.1 in a WebSocket; hoopy judges every stream on
its port (`kubernetes: {ports: [...]}`), relays and records the bytes.  The pod's
port P is 127.0.0.1:P on the emulator's host, where each test runs a TCP echo server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from hoopy.protocols.kube import spdy
from hoopy.protocols.kube.pfrelay import PROTOCOL
from tests.kubefixture import KUBECTL, Emu, KubeHoopy, start_hoopy

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`


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


@pytest.fixture(scope="module")
def guarded() -> Iterator[Echo]:
    """A pod port whose forwarding needs an approval."""
    e = start_echo()
    yield e
    e.server.shutdown()
    e.server.server_close()


def policy(port: int, guarded: int) -> str:
    return f"""
rules:
  - name: agents
    effect: allow
    match: {{groups: [agents], connectors: ["cluster*"]}}
  - name: forward-echo
    effect: allow
    match:
      groups: [agents]
      kubernetes: {{resources: [pods/portforward], ports: [{port}, {guarded}]}}
  - name: guarded-port-needs-sre
    effect: require_approval
    approvers: [sre]
    timeout: 60s
    match: {{kubernetes: {{ports: [{guarded}]}}}}
  - name: readers
    effect: allow
    match: {{groups: [readers], connectors: [cluster]}}
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
    emu: Emu,
    echoes: tuple[Echo, Echo],
    guarded: Echo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KubeHoopy]:
    h = start_hoopy(
        tmp_path_factory.mktemp("hoopy-pf"),
        emu,
        policy(echoes[0].port, guarded.port),
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


def cast_output(cast: str) -> str:
    """The terminal output an asciicast v2 recording holds, its "o" events joined."""
    events = [json.loads(x) for x in cast.splitlines()[1:] if x.strip()]
    return "".join(e[2] for e in events if e[1] == "o")


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
    replayed = hk.cli("replay", sid, "--speed", "1000")
    assert replayed.returncode == 0, replayed.stderr
    assert f"create pods/portforward pf/db port {echo.port}" in replayed.stdout


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


# ---- a hostile tunnel client --------------------------------------------------------
class Tunnel:
    """A raw SPDY-in-WebSocket client to hoopy (the frames kubectl would not send)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.enc = spdy.Encoder()
        self.dec = spdy.Decoder()
        self.got: list[spdy.Frame] = []

    async def send(self, *frames: spdy.Frame) -> None:
        for f in frames:
            await self.ws.send_bytes(self.enc.encode(f))

    async def until(self, want: Any) -> spdy.Frame:
        """Read until a frame equal to `want` (or satisfying it, if callable)."""
        while True:
            for i, f in enumerate(self.got):
                if want(f) if callable(want) else f == want:
                    del self.got[: i + 1]
                    return f
            msg = await asyncio.wait_for(self.ws.receive(), 30)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            self.got += self.dec.feed(msg.data)


def _stream(sid: int, kind: str, port: str, rid: str) -> spdy.SynStream:
    return spdy.SynStream(sid, (("port", port), ("requestid", rid), ("streamtype", kind)))


async def _hostile(hk: KubeHoopy, allowed: int, other: int) -> list[spdy.Frame]:
    ctx = ssl.create_default_context(cafile=str(hk.ca))
    url = f"{hk.server}/k8s/cluster/api/v1/namespaces/pf/pods/db/portforward"
    headers = {"Authorization": f"Bearer {hk.token(sub='pf-hostile')}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=(PROTOCOL,), headers=headers, ssl=ctx) as ws,
    ):
        t = Tunnel(ws)
        # an allowed error stream, then its data stream naming another port
        await t.send(_stream(1, "error", str(allowed), "0"), spdy.Data(1, b"", True))
        await t.until(spdy.SynReply(1))
        await t.send(_stream(3, "data", str(other), "0"))
        await t.until(spdy.SynReply(3, fin=True))
        await t.send(spdy.Data(3, b"to the wrong port"))
        # two ports in one header, a stream id reused, no stream type: reset
        await t.send(_stream(5, "data", f"{allowed}\0{other}", "2"))
        await t.until(spdy.RstStream(5, spdy.PROTOCOL_ERROR))
        await t.send(_stream(5, "data", str(allowed), "3"))
        await t.until(spdy.RstStream(5, spdy.PROTOCOL_ERROR))
        await t.send(spdy.SynStream(7, (("port", str(allowed)),)))
        await t.until(spdy.RstStream(7, spdy.PROTOCOL_ERROR))
        # a HEADERS frame restating the port is not forwarded
        await t.send(spdy.HeadersFrame(1, (("port", str(other)),)))
        # after all that, the header compression towards the cluster is still in step:
        # a proper pair forwards and echoes
        await t.send(_stream(9, "error", str(allowed), "4"), spdy.Data(9, b"", True))
        await t.send(_stream(11, "data", str(allowed), "4"))
        await t.until(spdy.SynReply(11))
        await t.send(spdy.Data(11, b"still in step"), spdy.Data(11, b"", True))
        echoed = bytearray()
        while True:
            f = await t.until(lambda f: isinstance(f, spdy.Data) and f.stream_id == 11)
            assert isinstance(f, spdy.Data)
            echoed += f.data
            if f.fin:
                break
        assert bytes(echoed) == b"still in step"
        # digits Python reads as digits but are no port; a port beyond 65535
        await t.send(_stream(13, "data", "\u00b2\u0662", "5"))
        await t.until(spdy.RstStream(13, spdy.PROTOCOL_ERROR))
        await t.send(_stream(15, "data", "65537", "6"))
        await t.until(spdy.RstStream(15, spdy.PROTOCOL_ERROR))
        # not SPDY at all: hoopy ends the connection
        await ws.send_bytes(b"\x80\x02\x00\x01" + b"\x00" * 12)
        msg = await asyncio.wait_for(ws.receive(), 30)
        while msg.type == aiohttp.WSMsgType.BINARY:
            msg = await asyncio.wait_for(ws.receive(), 30)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    return t.got


def test_hostile_streams_are_refused_and_the_tunnel_stays_in_step(
    hk: KubeHoopy, echoes: tuple[Echo, Echo], emu: Emu
) -> None:
    allowed, other = echoes
    before = len(allowed.connections)
    asyncio.run(_hostile(hk, allowed.port, other.port))
    assert other.connections == []
    assert allowed.connections[before:] == [b"still in step"]
    _, events = session_events(hk, "pf-hostile")
    refused = [e for e in events if e.get("type") == "portforward_refused"]
    assert [e["stream"] for e in refused] == [3, 5, 5, 7, 13, 15]
    assert any(e.get("type") == "portforward_error" for e in events)
    to_pod = [e for e in events if e.get("type") == "portforward_data"]
    assert {e["stream"] for e in to_pod} == {11}


def test_attach_tty_is_recorded_as_asciicast(hk: KubeHoopy, emu: Emu) -> None:
    container = {"name": "c", "image": "x", "tty": True, "stdin": True}  # kubectl checks
    emu.call(
        "POST",
        "/api/v1/namespaces/pf/pods",
        {"metadata": {"name": "console"}, "spec": {"containers": [container]}},
    )
    script = "line = input(); print('got', line.upper() + '-' + str(6 * 7)); raise SystemExit(4)"
    emu.call("POST", "/emu/attach/pf/console", {"command": ["python3", "-c", script], "tty": True})
    r = hk.kubectl_tty(
        "-n", "pf", "attach", "-it", "console",
        token=hk.token(sub="attach-tty"), input="typed-line\n",
    )  # fmt: skip
    assert "got TYPED-LINE-42" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 4, r.stdout + r.stderr
    sid, events = session_events(hk, "attach-tty")
    casts = [p.read_text() for p in (hk.folder / "recordings").rglob("*.cast")]
    # (the output may come in several "o" events: read it whole)
    assert any("got TYPED-LINE-42" in cast_output(c) and "typed-line" in c for c in casts), casts
    assert any(e.get("type") == "exec_io" and e.get("tty") for e in events)
    verified = hk.cli("verify", sid)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_attach_needs_an_allow_with_opaque_and_obeys_namespaces(hk: KubeHoopy, emu: Emu) -> None:
    hk.kubectl("-n", "pf", "run", "worker2", "--image=x")
    emu.call("POST", "/emu/attach/pf/worker2", {"command": ["cat"]})
    r = hk.kubectl(
        "-n", "pf", "attach", "-i", "worker2", token=hk.token(sub="reader", groups=("readers",)),
        input="must not arrive\n",
    )  # fmt: skip
    assert r.returncode != 0 and "must not arrive" not in r.stdout
    assert "shell_attach: sends input to a process already running" in r.stderr, r.stderr
    assert "kubernetes: {opaque: true}" in r.stderr
    r = hk.kubectl("-n", "vault", "attach", "-i", "db", token=hk.token(), input="x\n")
    assert r.returncode != 0 and "no-vault" in r.stderr


def test_spdy_port_forward_gets_a_status_naming_kubectl_versions(
    hk: KubeHoopy, echoes: tuple[Echo, Echo]
) -> None:
    env = {**os.environ, "KUBECONFIG": "/dev/null", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
    before = len(echoes[0].connections)
    r = subprocess.run(
        [
            KUBECTL,
            "--server",
            f"{hk.server}/k8s/cluster",
            "--certificate-authority",
            str(hk.ca),
            "--token",
            hk.token(),
            "-n",
            "pf",
            "port-forward",
            "pod/db",
            f":{echoes[0].port}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode != 0 and "kubectl 1.31 or newer" in r.stderr, r.stderr
    assert "KUBECTL_PORT_FORWARD_WEBSOCKETS" in r.stderr
    assert len(echoes[0].connections) == before


def test_concurrent_connections_share_one_tunnel(hk: KubeHoopy, echoes: tuple[Echo, Echo]) -> None:
    echo = echoes[0]
    fwd = Forward(hk, "-n", "pf", "pod/db", f":{echo.port}", token=hk.token(sub="pf-many"))
    local = fwd.local_port()
    assert local is not None, fwd.finish()
    payloads = [bytes([i]) * (150_000 + i * 7919) for i in range(6)]
    results: dict[int, bytes] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, roundtrip(local, payloads[i])))
        for i in range(len(payloads))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    _, err = fwd.finish()
    assert [results.get(i) == p for i, p in enumerate(payloads)] == [True] * 6, err
    _, events = session_events(hk, "pf-many")
    closes = [e for e in events if e.get("type") == "portforward_close" and e["kind"] == "data"]
    assert sorted(e["to_pod"] for e in closes) == sorted(len(p) for p in payloads)


async def _offer(hk: KubeHoopy, protocols: tuple[str, ...], query: str) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(hk.ca))
    url = f"{hk.server}/k8s/cluster/api/v1/namespaces/pf/pods/db/portforward{query}"
    headers = {"Authorization": f"Bearer {hk.token()}"}
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, protocols=protocols, headers=headers, ssl=ctx):
                return 101, ""
        except aiohttp.WSServerHandshakeError as e:
            return e.status, e.message


def test_other_port_forward_protocols_are_refused(
    hk: KubeHoopy, echoes: tuple[Echo, Echo], emu: Emu
) -> None:
    port = echoes[0].port
    before = len(emu.call("GET", "/emu/portforwards"))
    for protocols in (("portforward.k8s.io",), ("v4.channel.k8s.io",), ("SPDY/3.1",)):
        code, _ = asyncio.run(_offer(hk, protocols, f"?ports={port}"))
        assert code == 400, protocols
    assert len(emu.call("GET", "/emu/portforwards")) == before


def test_a_port_needing_approval_waits_then_forwards(
    hk: KubeHoopy, guarded: Echo, emu: Emu
) -> None:
    from tests.integration.test_pg_approvals import admin, wait_pending

    fwd = Forward(hk, "-n", "pf", "pod/db", f":{guarded.port}", token=hk.token(sub="pf-appr"))
    local = fwd.local_port()
    assert local is not None, fwd.finish()
    got: list[bytes] = []
    client = threading.Thread(target=lambda: got.append(roundtrip(local, b"after approval")))
    client.start()
    try:
        a = wait_pending(hk, f"port {guarded.port}")  # type: ignore[arg-type]
        assert a["rule"] == "guarded-port-needs-sre"
        assert all(o["port"] != guarded.port for o in emu.call("GET", "/emu/portforwards"))
        status, _ = admin(hk, "POST", f"/api/approvals/{a['id']}/approve", {"by": "sre-1"})  # type: ignore[arg-type]
        assert status == 200
        client.join(30)
    finally:
        _, err = fwd.finish()
    assert got == [b"after approval"], err
    assert guarded.connections == [b"after approval"]


def test_a_tunnel_ends_when_its_token_expires(hk: KubeHoopy, echoes: tuple[Echo, Echo]) -> None:
    echo = echoes[0]
    fwd = Forward(hk, "-n", "pf", "pod/db", f":{echo.port}", token=hk.token(sub="pf-exp", ttl=3))
    local = fwd.local_port()
    assert local is not None, fwd.finish()
    assert roundtrip(local, b"while valid") == b"while valid"
    code, err = fwd.finish(ends=True)  # kubectl ends by itself once hoopy closes the tunnel
    assert code != 0, err
    _, events = session_events(hk, "pf-exp")
    assert any(
        e.get("type") == "expired" and "port-forward ends" in e.get("reason", "") for e in events
    )
