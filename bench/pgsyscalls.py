#!/usr/bin/env python3
"""System calls per pgbench transaction in hoopy and in the bare relay (one client).

Starts PostgreSQL, hoopy (agent TLS, recording on) and bench/barerelay.py (TLS) as
bench/pg.py does, runs `pgbench -c 1` in each select-only mode through each while
`strace -c -f` counts the proxy's system calls, and prints calls per transaction by
name.  Where the end-to-end latency goes that bench/pgpath.py's CPU does not explain:
wake-ups (epoll_wait), writes to the recording, sends and receives per statement.
Usage: python3 bench/pgsyscalls.py [--seconds 5] [--modes simple,extended,prepared]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import pg as pgbench_bench  # noqa: E402

from hoopy import pgcluster  # noqa: E402
from hoopy.devissuer import DevIssuer  # noqa: E402


def pgbench_count(target: dict[str, str], args: list[str]) -> int:
    env = {**os.environ, "PGPASSWORD": target["password"], "PGSSLMODE": target["sslmode"]}
    cmd = ["pgbench", "-h", "127.0.0.1", "-p", target["port"], "-U", target["user"], "-n"]
    proc = subprocess.run([*cmd, *args, target["db"]], capture_output=True, text=True, env=env)
    m = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"pgbench failed on {target['name']}: {proc.stderr[-300:]}")
    return int(m.group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def untraced(pid: int, target: dict[str, str], args: list[str]) -> tuple[float, float]:
    """(microseconds per transaction, the proxy's CPU microseconds per transaction)."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    txns = pgbench_count(target, args)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    return (t1 - t0) / txns * 1e6, (cpu1 - cpu0) / txns * 1e6


def sampled(
    pid: int, target: dict[str, str], args: list[str], out: Path, secs: int, native: bool
) -> None:
    """py-spy's raw stacks (with native frames) of one pgbench run, into `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # --native: C frames too (py-spy then stops the process for each sample)
    how = ["-n"] if native else ["--nonblocking"]
    cmd = ["py-spy", "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "500"]
    spy = subprocess.Popen(
        [*cmd, "-d", str(max(secs - 1, 1)), *how],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pgbench_count(target, args)
    spy.wait(30)


def perfed(pid: int, target: dict[str, str], args: list[str], out: Path) -> None:
    """`perf record` of the proxy over one pgbench run, into `out` (perf report reads it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    perf = subprocess.Popen(
        ["perf", "record", "-F", "2000", "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    try:
        pgbench_count(target, args)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(30)


def traced(pid: int, target: dict[str, str], args: list[str]) -> tuple[int, dict[str, int]]:
    """(transactions, system call name → count) over one pgbench run."""
    out = Path(tempfile.mktemp(prefix="hoopy-strace-"))
    st = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # strace attaches (no synchronisation to wait on: a bench, not a test)
    try:
        txns = pgbench_count(target, args)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(10)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and not line.startswith("100.00"):
            name = parts[-1]
            calls = int(parts[3])
            counts[name] = calls
    out.unlink()
    return txns, counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default="simple,extended,prepared")
    ap.add_argument("--targets", default="hoopy+tls,bare+tls")
    ap.add_argument("--perf", default="", help="also `perf record` each proxy into DIR")
    ap.add_argument("--py-spy", default="", help="also sample hoopy with py-spy into DIR")
    ap.add_argument("--native", action="store_true", help="py-spy: with C frames")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoopy-sys-"))
    os.chmod(work, 0o755)
    cluster = pgcluster.create()
    procs: list[subprocess.Popen[str]] = []
    try:
        password = pgbench_bench.seed(cluster, 1)
        hp, haddr = pgbench_bench.start_hoopy(work / "hoopy", cluster.port, password, True)
        procs.append(hp)
        rp, rport = pgbench_bench.start_bare(cluster.port, work / "hoopy" / "tls")
        procs.append(rp)
        token = DevIssuer(work / "hoopy" / "state", haddr["dev_issuer"]).mint(
            "bench", ["bench"], ttl=7200
        )
        targets = {
            "hoopy+tls": (
                hp.pid,
                {
                    "name": "hoopy+tls",
                    "port": haddr["postgres"].rsplit(":", 1)[1],
                    "user": "agent",
                    "db": "bench",
                    "password": token,
                    "sslmode": "require",
                },
            ),
            "bare+tls": (
                rp.pid,
                {
                    "name": "bare+tls",
                    "port": rport,
                    "user": "bench",
                    "db": "bench",
                    "password": password,
                    "sslmode": "require",
                },
            ),
        }
        for mode in a.modes.split(","):
            args = ["-S", "-M", mode, "-c", "1", "-j", "1", "-T", str(a.seconds)]
            for name in a.targets.split(","):
                pid, target = targets[name]
                wall, cpu = untraced(pid, target, args)
                if a.perf:
                    perfed(pid, target, args, Path(a.perf) / f"{mode}-{name}.data")
                if a.py_spy and name.startswith("hoopy"):
                    sampled(pid, target, args, Path(a.py_spy) / f"{mode}.txt", a.seconds, a.native)
                txns, counts = traced(pid, target, args)
                per = {k: v / txns for k, v in counts.items() if v / txns >= 0.01}
                total = sum(counts.values()) / txns
                shown = ", ".join(
                    f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])
                )
                print(
                    f"{mode:<9} {name:<10} {wall:6.0f} us/txn (pgbench's wall time incl. "
                    f"connect), proxy CPU {cpu:5.0f} us/txn; {total:5.2f} calls/txn: {shown}",
                    flush=True,
                )
    finally:
        pgbench_bench.stop_all(procs, cluster, work)


if __name__ == "__main__":
    main()
