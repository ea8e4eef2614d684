#!/usr/bin/env python3
"""pgbench through hoopy vs a direct connection vs PgBouncer, side by side in one run.

Prints TPS per mode and the ratios hoopy/direct and hoopy/PgBouncer.  Also
measures connections per second (pgbench -C), hoopy without agent-side TLS, and
bench/barerelay.py (a bare uvloop byte relay, with and without TLS): hoopy/bare is what
hoopy's own work costs, bare/direct what any Python process in the path costs here.
Rounds interleave the targets in a rotating order (a shared VM drifts over a minute).
Usage: python3 bench/pg.py [--seconds 10] [--clients 8] [--scale 10] [--modes M,..] [--targets T,..]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoopy import pgcluster  # noqa: E402
from hoopy.devissuer import DevIssuer  # noqa: E402


def ensure_pgbouncer() -> str:
    found = shutil.which("pgbouncer")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "pgbouncer"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


BENCH_POLICY = (
    "rules:\n  - name: bench\n    effect: allow\n    match: {groups: [bench]}\n"
    "  - name: no-ddl\n    effect: deny\n    match: {sql: {statements: [drop, alter]}}\n"
)


def start_hoopy(
    folder: Path, pg_port: int, password: str, tls_required: bool, policy: str = BENCH_POLICY
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    folder.mkdir(parents=True)
    (folder / "connectors").mkdir()
    (folder / "policies").mkdir()
    (folder / "connectors" / "bench.yaml").write_text(
        f"type: postgres\naddress: 127.0.0.1:{pg_port}\ndatabase: bench\nuser: bench\n"
        "password: env:BENCH_DB_PASSWORD\nsslmode: disable\n"
    )
    (folder / "policies" / "bench.yaml").write_text(policy)
    issuer_port = pgcluster.free_port()
    (folder / "hoopy.yaml").write_text(
        "listen: {postgres: 127.0.0.1:0}\nstate: sqlite:state/state.db\n"
        f"dev_issuer: {{listen: 127.0.0.1:{issuer_port}}}\nrecordings: recordings/\n"
        f"postgres: {{allow_cleartext_without_tls: {str(not tls_required).lower()}}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopy.cli", "serve", "--config", str(folder / "hoopy.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "BENCH_DB_PASSWORD": password},
    )
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, ""):
        if line.startswith("hoopy ready "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, json.loads(line[len("hoopy ready ") :])
    raise SystemExit("hoopy did not start")


def start_pgbouncer(folder: Path, pg_port: int, password: str) -> tuple[subprocess.Popen[str], int]:
    exe = ensure_pgbouncer()
    folder.mkdir(parents=True)
    port = pgcluster.free_port()
    (folder / "userlist.txt").write_text(f'"bench" "{password}"\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\nbench = host=127.0.0.1 port={pg_port} dbname=bench\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = scram-sha-256\nauth_file = {folder}/userlist.txt\n"
        "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\n"
        f"unix_socket_dir =\nlogfile = {folder}/pgbouncer.log\n"
    )
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        for f in folder.iterdir():
            shutil.chown(f, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", exe, str(folder / "pgbouncer.ini")]
    else:
        cmd = [exe, str(folder / "pgbouncer.ini")]
    errf = open(folder / "stderr.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, text=True)
    for _ in range(100):
        if (
            subprocess.run(
                ["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            == 0
        ):
            return proc, port
        proc.poll()
        if proc.returncode is not None:
            raise SystemExit("pgbouncer exited: " + (folder / "stderr.txt").read_text())
        subprocess.run(["sleep", "0.1"])
    raise SystemExit("pgbouncer did not start")


def start_bare(pg_port: int, tls_dir: Path | None) -> tuple[subprocess.Popen[str], str]:
    """bench/barerelay.py in front of PostgreSQL, with hoopy's certificate when TLS."""
    relay = str(ROOT / "bench" / "barerelay.py")
    cmd = [sys.executable, relay, "--backend", f"127.0.0.1:{pg_port}"]
    if tls_dir is not None:
        cmd += ["--cert", str(tls_dir / "cert.pem"), "--key", str(tls_dir / "key.pem")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        raise SystemExit("bench/barerelay.py did not start")
    return proc, line.split()[1]


def pgbench(target: dict[str, str], args: list[str]) -> float:
    env = {**os.environ, "PGPASSWORD": target["password"], "PGSSLMODE": target["sslmode"]}
    cmd = [
        "pgbench",
        "-h",
        "127.0.0.1",
        "-p",
        target["port"],
        "-U",
        target["user"],
        "-n",
        *args,
        target["db"],
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
    if not m:
        m = re.search(r"tps = ([0-9.]+)", proc.stdout)
    if proc.returncode != 0 or not m:
        print(f"  pgbench failed on {target['name']}: {proc.stderr.strip()[-300:]}", flush=True)
        return 0.0
    return float(m.group(1))


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def big_select(target: dict[str, str], pid: int, rows: int = 1_000_000) -> None:
    """Stream a large result through hoopy; report hoopy's peak resident memory."""
    env = {**os.environ, "PGPASSWORD": target["password"], "PGSSLMODE": target["sslmode"]}
    before = rss_mb(pid, "VmRSS")
    sql = f"select i, repeat('x', 40) from generate_series(1, {rows}) as i"
    conninfo = f"host=127.0.0.1 port={target['port']} user={target['user']} dbname={target['db']}"
    proc = subprocess.run(["psql", conninfo, "-At", "-c", sql], env=env, capture_output=True)
    lines = proc.stdout.count(b"\n")
    print(
        f"{rows}-row SELECT through {target['name']}: {lines} rows received, hoopy RSS "
        f"{before:.0f} MB before, peak {rss_mb(pid):.0f} MB (VmHWM)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="runs per cell; the median is shown")
    ap.add_argument("--modes", default="", help="comma-separated substrings of mode names")
    ap.add_argument("--targets", default="", help="comma-separated target names (default all)")
    ap.add_argument("--no-big-select", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoopy-bench-"))
    os.chmod(work, 0o755)  # pgbouncer runs as the postgres user when we are root
    cluster = pgcluster.create()
    procs: list[subprocess.Popen[str]] = []
    try:
        password = "bench-pw-123"

        async def seed() -> None:
            conn = await asyncpg.connect(cluster.dsn)
            await conn.execute(f"CREATE ROLE bench LOGIN PASSWORD '{password}'")
            await conn.execute("CREATE DATABASE bench OWNER bench")
            await conn.close()

        asyncio.run(seed())
        subprocess.run(
            [
                "pgbench",
                "-i",
                "-q",
                "-s",
                str(a.scale),
                "-h",
                "127.0.0.1",
                "-p",
                str(cluster.port),
                "-U",
                "bench",
                "bench",
            ],
            check=True,
            env={**os.environ, "PGPASSWORD": password},
            capture_output=True,
        )
        hp, haddr = start_hoopy(work / "hoopy", cluster.port, password, tls_required=True)
        procs.append(hp)
        hp2, haddr2 = start_hoopy(work / "hoopy-plain", cluster.port, password, tls_required=False)
        procs.append(hp2)
        bp, bport = start_pgbouncer(work / "pgbouncer", cluster.port, password)
        procs.append(bp)
        rp, rport = start_bare(cluster.port, work / "hoopy" / "tls")
        procs.append(rp)
        rp2, rport2 = start_bare(cluster.port, None)
        procs.append(rp2)
        token = DevIssuer(work / "hoopy" / "state", haddr["dev_issuer"]).mint(
            "bench", ["bench"], ttl=7200
        )
        token2 = DevIssuer(work / "hoopy-plain" / "state", haddr2["dev_issuer"]).mint(
            "bench", ["bench"], ttl=7200
        )
        targets = [
            {
                "name": "direct",
                "port": str(cluster.port),
                "user": "bench",
                "db": "bench",
                "password": password,
                "sslmode": "disable",
            },
            {
                "name": "pgbouncer",
                "port": str(bport),
                "user": "bench",
                "db": "bench",
                "password": password,
                "sslmode": "disable",
            },
            {
                "name": "hoopy+tls",
                "port": haddr["postgres"].rsplit(":", 1)[1],
                "user": "agent",
                "db": "bench",
                "password": token,
                "sslmode": "require",
            },
            {
                "name": "hoopy-notls",
                "port": haddr2["postgres"].rsplit(":", 1)[1],
                "user": "agent",
                "db": "bench",
                "password": token2,
                "sslmode": "disable",
            },
            {
                "name": "bare+tls",
                "port": rport,
                "user": "bench",
                "db": "bench",
                "password": password,
                "sslmode": "require",
            },
            {
                "name": "bare-notls",
                "port": rport2,
                "user": "bench",
                "db": "bench",
                "password": password,
                "sslmode": "disable",
            },
        ]
        c, j, t = str(a.clients), "2", str(a.seconds)
        modes = {
            "select-only simple": ["-S", "-M", "simple", "-c", c, "-j", j, "-T", t],
            "select-only extended": ["-S", "-M", "extended", "-c", c, "-j", j, "-T", t],
            "select-only prepared": ["-S", "-M", "prepared", "-c", c, "-j", j, "-T", t],
            "tpcb simple": ["-M", "simple", "-c", c, "-j", j, "-T", t],
            "tpcb extended": ["-M", "extended", "-c", c, "-j", j, "-T", t],
            "tpcb prepared": ["-M", "prepared", "-c", c, "-j", j, "-T", t],
            "connect (-C) select-only": ["-S", "-C", "-c", c, "-j", j, "-T", t],
        }
        if a.modes:
            wanted = a.modes.split(",")
            modes = {k: v for k, v in modes.items() if any(w in k for w in wanted)}
        if a.targets:
            keep = {"direct", *a.targets.split(",")}
            targets = [x for x in targets if x["name"] in keep]
        print(
            f"pgbench {a.clients} clients, {a.seconds}s per run, median of {a.rounds} "
            f"rounds, scale {a.scale}",
            flush=True,
        )
        header = f"{'mode':<26}" + "".join(f"{x['name']:>13}" for x in targets)
        header += f"{'hoopy/direct':>14}{'hoopy/bouncer':>15}{'notls/direct':>14}"
        header += f"{'hoopy/bare':>12}{'bare/direct':>13}"
        print(header, flush=True)
        for mode, args in modes.items():
            # Rounds interleave the targets (in a rotating order), so that the drift of a
            # shared VM over the minute a mode takes lands on every target alike.
            runs: dict[str, list[float]] = {x["name"]: [] for x in targets}
            for r in range(a.rounds):
                for x in targets[r % len(targets) :] + targets[: r % len(targets)]:
                    runs[x["name"]].append(pgbench(x, args))
            tps = {name: statistics.median(v) for name, v in runs.items()}
            d, b = tps["direct"], tps.get("pgbouncer", 0.0)
            h, n = tps.get("hoopy+tls", 0.0), tps.get("hoopy-notls", 0.0)
            row = f"{mode:<26}" + "".join(f"{tps[x['name']]:>13.0f}" for x in targets)
            row += f"{h / d if d else 0:>14.2f}{h / b if b else 0:>15.2f}{n / d if d else 0:>14.2f}"
            r = tps.get("bare+tls", 0.0)
            row += f"{h / r if r else 0:>12.2f}{r / d if d else 0:>13.2f}"
            print(row, flush=True)
        if not a.no_big_select:
            big_select(next(x for x in targets if x["name"] == "hoopy+tls"), hp.pid)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
