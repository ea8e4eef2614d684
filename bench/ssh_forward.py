"""SSH TCP forwarding through hoopy vs directly through sshd, side by side in one run.

    PYTHONPATH=. python3 bench/ssh_forward.py [--mb 100] [--rounds 3] [--opens 50]

Starts a real OpenSSH sshd, `hoopy serve` with an `ssh.forward` rule, and a local TCP
server that sends --mb MB to whoever connects.  Then, interleaved per round:
- throughput: the real `ssh -W 127.0.0.1:PORT` pulling the --mb MB (stdout discarded),
  directly to sshd and through hoopy (which records the first `ssh.record_bytes`);
- open latency: --opens sequential forwards opened and answered over one asyncssh
  connection (median).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import socketserver
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.ssh import connect_direct, connect_hoopy, direct_argv
from tests.integration.sshd import start_ssh_hoopy, start_sshd, stop

POLICY = """\
mode: enforce
rules:
  - name: bench-forward
    effect: allow
    match: {{connectors: [web-1], ssh: {{forward: ["127.0.0.1:{port}", "127.0.0.1:{gport}"]}}}}
"""


def source(mb: int) -> socketserver.ThreadingTCPServer:
    block = bytes(range(256)) * 4096  # 1 MiB

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            for _ in range(mb):
                sock.sendall(block)
            if not mb:
                sock.sendall(b"x")  # a greeting, for the open latency
            sock.shutdown(socket.SHUT_WR)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pull(argv: list[str], env: dict[str, str] | None, mb: int) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=True)
    elapsed = time.perf_counter() - t
    assert len(r.stdout) == mb << 20, (len(r.stdout), r.stderr[-500:])
    return mb * 1.048576 / elapsed  # MB/s


async def open_latency(connect: object, port: int, n: int) -> float:
    async with connect as conn:  # type: ignore[attr-defined]
        times = []
        for _ in range(n):
            t = time.perf_counter()
            reader, writer = await conn.open_connection("127.0.0.1", port)
            await reader.readexactly(1)
            times.append(time.perf_counter() - t)
            writer.close()
        return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opens", type=int, default=50)
    args = ap.parse_args()
    src, greeter = source(args.mb), source(0)
    port, gport = int(src.server_address[1]), int(greeter.server_address[1])
    with tempfile.TemporaryDirectory(prefix="hoopy-bench-fwd-") as tmp:
        sshd = start_sshd(Path(tmp) / "sshd")
        h = start_ssh_hoopy(
            Path(tmp) / "hoopy", sshd, {"bench": POLICY.format(port=port, gport=gport)}
        )
        try:
            direct = [*direct_argv(sshd)[:-1], "-W", f"127.0.0.1:{port}", "root@127.0.0.1"]
            via = h.ssh_argv("web-1", "-W", f"127.0.0.1:{port}")
            env = h.ssh_env(h.token("bench"))
            rates: dict[str, list[float]] = {"direct": [], "hoopy": []}
            opens: dict[str, list[float]] = {"direct": [], "hoopy": []}
            for _ in range(args.rounds):
                rates["direct"].append(pull(direct, None, args.mb))
                rates["hoopy"].append(pull(via, env, args.mb))
                opens["direct"].append(
                    asyncio.run(open_latency(connect_direct(sshd), gport, args.opens))
                )
                opens["hoopy"].append(
                    asyncio.run(open_latency(connect_hoopy(h), gport, args.opens))
                )
            for name in ("direct", "hoopy"):
                r, o = rates[name], opens[name]
                print(
                    f"{name:>6}: throughput median {statistics.median(r):7.1f} MB/s "
                    f"(min {min(r):.1f}, max {max(r):.1f}); open+first byte median "
                    f"{statistics.median(o) * 1000:.2f} ms (min {min(o) * 1000:.2f}, "
                    f"max {max(o) * 1000:.2f})"
                )
            ratio = statistics.median(rates["hoopy"]) / statistics.median(rates["direct"])
            added = statistics.median(opens["hoopy"]) - statistics.median(opens["direct"])
            print(f"hoopy/direct throughput {ratio:.2f}x; open latency added {added * 1000:.2f} ms")
        finally:
            stop(h.proc)
            sshd.stop()
            for server in (src, greeter):
                server.shutdown()
                server.server_close()


if __name__ == "__main__":
    main()
