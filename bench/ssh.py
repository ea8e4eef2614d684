"""SSH through hoopy vs directly to sshd, side by side in one run.

    PYTHONPATH=. python3 bench/ssh.py [--mb 200] [--execs 100] [--conns 50] [--sessions 50]

Starts a real OpenSSH sshd and `hoopy serve` (as the integration tests do), then:
- throughput: the real `ssh` client running `cat` of a file of --mb MB, output discarded;
- exec latency: --execs sequential `true` over one asyncssh connection (median);
- connection latency: --conns fresh `ssh host true` runs of the real client (median);
- --sessions concurrent asyncssh sessions each holding a channel, hoopy's RSS at peak.
Targets (issue 11): >= 0.4x direct throughput; <= 5 ms added median latency per exec
and per connection; RSS < 300 MB with 50 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh

from tests.integration.sshd import Sshd, SshHoopy, start_ssh_hoopy, start_sshd, stop


def direct_argv(s: Sshd) -> list[str]:
    return [
        "ssh", "-p", str(s.port), "-i", str(s.client_key), "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "root@127.0.0.1",
    ]  # fmt: skip


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - t


def cpu(pid: int) -> float:
    """CPU seconds the process used so far: hoopy's own cost, which the shared machine's
    noise in wall-clock latency does not blur."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def connect_direct(s: Sshd) -> asyncssh.connection._ConnectionContextManager:
    return asyncssh.connect(
        "127.0.0.1", s.port, username="root", client_keys=[str(s.client_key)],
        known_hosts=None, config=None, agent_path=None,
    )  # fmt: skip


def connect_hoopy(h: SshHoopy, i: int = 0) -> asyncssh.connection._ConnectionContextManager:
    return asyncssh.connect(
        "127.0.0.1", h.ssh_port, username="web-1", password=h.token(f"bench-{i}"),
        known_hosts=asyncssh.import_known_hosts(h.known_hosts().read_text()),
        client_keys=None, config=None, agent_path=None, preferred_auth="password",
    )  # fmt: skip


async def exec_latency(connect: object, n: int) -> float:
    async with connect as conn:  # type: ignore[attr-defined]
        times = []
        for _ in range(n):
            t = time.perf_counter()
            r = await conn.run("true")
            times.append(time.perf_counter() - t)
            assert r.exit_status == 0, r.stderr
        return statistics.median(times)


async def concurrent(h: SshHoopy, n: int) -> tuple[int, int]:
    """n connections each with a running channel at once: (errors, hoopy's peak RSS)."""
    errors = 0
    peak = rss(h.proc.pid)
    stack = []
    try:
        for i in range(n):
            try:
                cm = connect_hoopy(h, i)
                conn = await cm.__aenter__()
                stack.append(cm)
                proc = await conn.create_process("cat")
                proc.stdin.write("x\n")
                if await proc.stdout.readline() != "x\n":
                    errors += 1
            except (asyncssh.Error, OSError):
                errors += 1
            peak = max(peak, rss(h.proc.pid))
    finally:
        for cm in stack:
            await cm.__aexit__(None, None, None)
    return errors, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--execs", type=int, default=100)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=50)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hoopy-bench-ssh-"))
    s = start_sshd(folder / "sshd")
    h = start_ssh_hoopy(folder / "hoopy", s)
    try:
        big = s.folder / "big.bin"
        with big.open("wb") as f:
            f.write(os.urandom(1 << 20) * args.mb)
        env = h.ssh_env(h.issuer.mint("bench", ["agents"], ttl=3600))
        through = [*h.ssh_argv("web-1")]
        d = min(timed([*direct_argv(s), f"cat {big}"]) for _ in range(2))
        c0 = cpu(h.proc.pid)
        p = min(timed([*through, f"cat {big}"], env) for _ in range(2))
        cm = (cpu(h.proc.pid) - c0) / (2 * args.mb * (1 << 20) / 1e6)
        mb = args.mb * (1 << 20) / 1e6
        print(
            f"throughput  direct {mb / d:7.1f} MB/s  hoopy {mb / p:7.1f} MB/s  "
            f"ratio {d / p:.2f}x; hoopy CPU {cm * 1e3:.2f} ms per MB"
        )
        pid = h.proc.pid
        ed = asyncio.run(exec_latency(connect_direct(s), args.execs))
        c0 = cpu(pid)
        eh = asyncio.run(exec_latency(connect_hoopy(h), args.execs))
        ce = (cpu(pid) - c0) / args.execs
        print(
            f"exec        direct {ed * 1e3:6.2f} ms  hoopy {eh * 1e3:6.2f} ms  "
            f"added {(eh - ed) * 1e3:+.2f} ms (median of {args.execs}, one connection); "
            f"hoopy CPU {ce * 1e3:.2f} ms per exec"
        )
        cd = statistics.median(timed([*direct_argv(s), "true"]) for _ in range(args.conns))
        c0 = cpu(pid)
        ch = statistics.median(timed([*through, "true"], env) for _ in range(args.conns))
        cc = (cpu(pid) - c0) / args.conns
        print(
            f"connection  direct {cd * 1e3:6.2f} ms  hoopy {ch * 1e3:6.2f} ms  "
            f"added {(ch - cd) * 1e3:+.2f} ms (median of {args.conns} `ssh host true`); "
            f"hoopy CPU {cc * 1e3:.2f} ms per connection"
        )
        errors, peak = asyncio.run(concurrent(h, args.sessions))
        print(
            f"concurrent  {args.sessions} sessions, {errors} errors, hoopy RSS peak {peak / 1e6:.0f} MB"
        )
    finally:
        stop(h.proc)
        s.stop()
        subprocess.run(["rm", "-rf", str(folder)], check=False)


if __name__ == "__main__":
    main()
