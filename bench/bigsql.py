#!/usr/bin/env python3
"""Large SQL texts: what classifying them costs, and what they cost other sessions.

1. Offline, each case in a fresh process: seconds and extra peak RSS to classify a
   4 MB multi-row INSERT, a 4 MB IN list and (the pathological case of issue 15) a
   `SELECT 1,1,1,…` — the same function hoopy's worker runs.
2. Through a real hoopy in front of a real PostgreSQL: one agent sends each large
   statement while another runs `select 1` in a loop; prints the big statement's time,
   the small queries' p50/p99/max latency meanwhile, and hoopy's peak RSS (VmHWM) and
   its classification worker's.
Usage: python3 bench/bigsql.py [--mb 4] [--skip-offline] [--skip-gateway]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make(case: str, size: int) -> str:
    parts: list[str] = []
    n = i = 0
    while n < size:
        if case == "insert":
            p = f"({i},'name {i}',{i}.25,{'true' if i % 2 else 'false'},NULL)"
        elif case == "in":
            p = str(i * 7919)
        else:
            p = "1"
        parts.append(p)
        n += len(p) + 1
        i += 1
    if case == "insert":
        return "INSERT INTO big (a, b, c, d, e) VALUES " + ",".join(parts)
    if case == "in":
        return "SELECT count(*) FROM small WHERE a IN (" + ",".join(parts) + ")"
    return "SELECT " + ",".join(parts)


CASES = ("insert", "in", "select-ones")


def _rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def offline_one(case: str, size: int) -> None:
    """In this (fresh) process: classify once, print JSON seconds / extra MB."""
    from hoopy.protocols.postgres import classify as cl

    sql = make(case, size)
    base = _rss_mb()
    t = time.perf_counter()
    try:
        cmds, _ = cl._classify(sql, "bench", None)
        result = sorted(cmds[0].kinds)
    except cl.SqlParseError as e:
        result = [f"refused: {e.message}"]
    took = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": took, "extra_mb": peak - base, "result": result}))


def offline(mb: float) -> None:
    print(f"-- offline: classification of {mb:g} MB texts (fresh process each)")
    for case in ("insert", "in", "select-ones"):
        out = subprocess.run(
            [sys.executable, __file__, "--one", case, "--mb", str(mb)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if out.returncode != 0:
            print(f"{case:12s} failed: {out.stderr.strip()[-300:]}")
            continue
        r = json.loads(out.stdout)
        print(
            f"{case:12s} {r['seconds']:6.2f} s  {r['extra_mb']:7.1f} MB extra peak RSS  "
            f"-> {r['result']}",
            flush=True,
        )


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        found += [int(k) for k in kids]
    return found


async def _probe(dsn: dict[str, str], stop: asyncio.Event, lat: list[float]) -> None:
    import asyncpg

    conn = await asyncpg.connect(**dsn)  # type: ignore[arg-type]
    try:
        while not stop.is_set():
            t = time.perf_counter()
            await conn.fetchval("select 1")
            lat.append(time.perf_counter() - t)
    finally:
        await conn.close()


async def _through(dsn: dict[str, str], hoopy_pid: int, mb: float) -> None:
    import asyncpg

    size = int(mb * 1024 * 1024)
    setup = await asyncpg.connect(**dsn)  # type: ignore[arg-type]
    await setup.execute("CREATE TABLE IF NOT EXISTS big (a int, b text, c numeric, d bool, e int)")
    # PostgreSQL's own cost of a 600,000-item IN list grows with the rows it scans
    await setup.execute("CREATE TABLE IF NOT EXISTS small AS SELECT generate_series(1, 100) AS a")
    await setup.close()
    worker_peak = 0.0
    for case in CASES:
        sql = make(case, size)
        big = await asyncpg.connect(**dsn)  # type: ignore[arg-type]
        stop, lat = asyncio.Event(), []
        probe = asyncio.create_task(_probe(dsn, stop, lat))
        while not lat:  # the probe session is up and answering
            await asyncio.sleep(0.01)
        lat.clear()
        t = time.perf_counter()
        try:
            status = await big.execute(sql)
        except asyncpg.PostgresError as e:
            status = f"refused {e.sqlstate}: {e}"
        took = time.perf_counter() - t
        for pid in _children(hoopy_pid):
            worker_peak = max(worker_peak, _rss_mb(pid, "VmHWM"))
        stop.set()
        await probe
        await big.close()
        lat_ms = sorted(x * 1000 for x in lat)
        p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]
        print(
            f"{case:12s} {took:6.2f} s through hoopy ({str(status)[:60]}); meanwhile "
            f"{len(lat_ms)} x select 1: p50 {statistics.median(lat_ms):.1f} ms, "
            f"p99 {p99:.1f} ms, max {lat_ms[-1]:.1f} ms",
            flush=True,
        )
    print(
        f"hoopy peak RSS (VmHWM) {_rss_mb(hoopy_pid, 'VmHWM'):.0f} MB; "
        f"classification worker peak {worker_peak:.0f} MB",
        flush=True,
    )


def gateway(mb: float) -> None:
    import importlib.util

    from hoopy import pgcluster
    from hoopy.devissuer import DevIssuer

    spec = importlib.util.spec_from_file_location("bench_pg", ROOT / "bench" / "pg.py")
    assert spec is not None and spec.loader is not None
    bench_pg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_pg)
    start_hoopy = bench_pg.start_hoopy
    print(f"-- through hoopy: {mb:g} MB statements while another session runs select 1")
    work = Path(tempfile.mkdtemp(prefix="hoopy-bigsql-"))
    cluster = pgcluster.create()
    hp = None
    try:
        import asyncpg

        async def seed() -> None:
            conn = await asyncpg.connect(cluster.dsn)
            await conn.execute("CREATE ROLE bench LOGIN PASSWORD 'bench-pw-123'")
            await conn.execute("CREATE DATABASE bench OWNER bench")
            await conn.close()

        asyncio.run(seed())
        hp, addr = start_hoopy(work / "hoopy", cluster.port, "bench-pw-123", tls_required=False)
        token = DevIssuer(work / "hoopy" / "state", addr["dev_issuer"]).mint("bench", ["bench"])
        host, port = addr["postgres"].rsplit(":", 1)
        dsn = {"host": host, "port": port, "user": "bench", "database": "bench"}
        dsn |= {"password": token, "ssl": "disable"}  # type: ignore[dict-item]
        print(f"hoopy RSS at start {_rss_mb(hp.pid):.0f} MB", flush=True)
        asyncio.run(_through(dsn, hp.pid, mb))
    finally:
        if hp is not None:
            hp.terminate()
            hp.wait(10)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    global CASES
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-gateway", action="store_true")
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    CASES = tuple(a.cases.split(","))
    if a.one:
        offline_one(a.one, int(a.mb * 1024 * 1024))
        return
    if not a.skip_offline:
        offline(a.mb)
    if not a.skip_gateway:
        gateway(a.mb)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()
