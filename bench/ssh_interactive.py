"""PTY shell lines and SFTP through hoopy vs directly to sshd, side by side in one run.

    PYTHONPATH=. python3 bench/ssh_interactive.py [--lines 100] [--mb 50]

Starts a real OpenSSH sshd and `hoopy serve` (as the integration tests do), then over
asyncssh connections:
- shell line round trip: --lines `echo` lines typed on a PTY shell, each timed from the
  Enter to its output (hoopy checks each line through the policy before forwarding it);
- SFTP get: a file of --mb MiB fetched three times (median MiB/s).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh

from tests.integration.sshd import start_ssh_hoopy, start_sshd, stop

POLICY = """\
mode: enforce
rules:
  - name: bench
    effect: allow
    match:
      groups: [bench]
      ssh: {shell: true, commands: ["echo *"], sftp: [read, stat, list], paths: ["*"]}
"""


async def shell_lines(conn: asyncssh.SSHClientConnection, n: int) -> list[float]:
    proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
    seen = ""

    async def until(text: str) -> None:
        nonlocal seen
        while text not in seen:
            seen += await proc.stdout.read(4096)

    proc.stdin.write("echo warm'-'up\r")
    await asyncio.wait_for(until("warm-up"), 30)
    times = []
    for i in range(n):
        t = time.perf_counter()
        proc.stdin.write(f"echo line'-'{i}'-'done\r")
        await asyncio.wait_for(until(f"line-{i}-done"), 30)
        times.append(time.perf_counter() - t)
    proc.close()
    return times


async def sftp_get(conn: asyncssh.SSHClientConnection, path: Path, mb: int, out: Path) -> float:
    rates = []
    async with conn.start_sftp_client() as sftp:
        for _ in range(3):
            t = time.perf_counter()
            await sftp.get(str(path), str(out))
            rates.append(mb / (time.perf_counter() - t))
    return statistics.median(rates)


async def run(args: argparse.Namespace, folder: Path) -> None:
    s = start_sshd(folder / "sshd")
    h = start_ssh_hoopy(folder / "hoopy", s, {"bench": POLICY})
    try:
        big = s.folder / "big.bin"
        big.write_bytes(b"\x00\xff" * (args.mb << 19))
        direct = await asyncssh.connect(
            "127.0.0.1", s.port, username="root", client_keys=[str(s.client_key)],
            known_hosts=None, config=None, agent_path=None,
        )  # fmt: skip
        through = await asyncssh.connect(
            "127.0.0.1", h.ssh_port, username="web-1", password=h.token("bench", ("bench",)),
            known_hosts=asyncssh.import_known_hosts(h.known_hosts().read_text()),
            client_keys=None, config=None, agent_path=None, preferred_auth="password",
        )  # fmt: skip
        results = {}
        for name, conn in (("direct", direct), ("hoopy", through)):
            times = await shell_lines(conn, args.lines)
            rate = await sftp_get(conn, big, args.mb, folder / f"{name}.out")
            results[name] = (statistics.median(times), sorted(times)[int(len(times) * 0.9)], rate)
            conn.close()
        (dm, d90, dr), (hm, h90, hr) = results["direct"], results["hoopy"]
        print(
            f"shell line  direct {dm * 1e3:6.2f} ms (p90 {d90 * 1e3:.2f})  "
            f"hoopy {hm * 1e3:6.2f} ms (p90 {h90 * 1e3:.2f})  added {(hm - dm) * 1e3:+.2f} ms "
            f"(median of {args.lines})"
        )
        print(
            f"sftp get    direct {dr:7.1f} MiB/s  hoopy {hr:7.1f} MiB/s  ratio {hr / dr:.2f}x "
            f"({args.mb} MiB, median of 3)"
        )
    finally:
        stop(h.proc)
        s.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100)
    ap.add_argument("--mb", type=int, default=50)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hoopy-bench-sshi-"))
    try:
        asyncio.run(run(args, folder))
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


if __name__ == "__main__":
    main()
