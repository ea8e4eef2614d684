"""`kubectl port-forward` throughput: the emulator directly vs through hoopy, in one run.

One kubectl port-forward straight to the emulator and one through hoopy (with the
bytes recorded, up to its 64 MiB per connection), both to the same TCP echo server;
each round sends MB megabytes through each (interleaved) and reads the echo back.
Prints per-round MB/s (each byte crosses the tunnel twice), medians and the spread.

    PYTHONPATH=. python3 bench/kube_portforward.py [--mb 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kubefixture import KUBECTL, start_emulator, start_hoopy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(256 * 1024):
            self.request.sendall(data)


def forward(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert p.stdout is not None
    for line in p.stdout:
        m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ->", line)
        if m:
            return p, int(m.group(1))
    raise RuntimeError("kubectl port-forward did not start")


def transfer(port: int, payload: bytes) -> float:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        got = 0

        def read() -> None:
            nonlocal got
            while data := s.recv(256 * 1024):
                got += len(data)

        t = threading.Thread(target=read)
        t.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        t.join()
    assert got == len(payload), (got, len(payload))
    return len(payload) / (time.perf_counter() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    payload = os.urandom(a.mb * 1024 * 1024)
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    with tempfile.TemporaryDirectory() as d:
        emu = start_emulator(Path(d) / "emu")
        policy = (
            "rules:\n  - name: fwd\n    effect: allow\n    match: {groups: [agents], "
            f"kubernetes: {{resources: [pods/portforward], ports: [{port}]}}}}\n"
            "  - name: agents\n    effect: allow\n    match: {groups: [agents]}\n"
        )
        hk = start_hoopy(Path(d) / "hoopy", emu, policy)
        procs = []
        try:
            hk.kubectl("create", "namespace", "b")
            hk.kubectl("-n", "b", "run", "p", "--image=x")
            env = {**os.environ, "KUBECONFIG": str(emu.kubeconfig)}
            direct, dport = forward([KUBECTL, "-n", "b", "port-forward", "pod/p", f":{port}"], env)
            procs.append(direct)
            via = [
                KUBECTL, "--server", f"{hk.server}/k8s/cluster", "--certificate-authority",
                str(hk.ca), "--token", hk.token(), "-n", "b", "port-forward", "pod/p", f":{port}",
            ]  # fmt: skip
            hoopy, hport = forward(via, {**os.environ, "KUBECONFIG": "/dev/null"})
            procs.append(hoopy)
            rates: dict[str, list[float]] = {"direct": [], "hoopy": []}
            for _ in range(a.rounds):
                rates["direct"].append(transfer(dport, payload))
                rates["hoopy"].append(transfer(hport, payload))
            print(f"load average: {os.getloadavg()}")
            for k, v in rates.items():
                spread = f"{min(v):.1f}-{max(v):.1f}"
                print(
                    f"{k:7} {a.mb} MB each way: median {statistics.median(v):.1f} MB/s ({spread})"
                )
            ratio = statistics.median(rates["hoopy"]) / statistics.median(rates["direct"])
            print(f"hoopy / direct: {ratio:.2f}")
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            hk.stop()
            emu.stop()
            server.shutdown()


if __name__ == "__main__":
    main()
