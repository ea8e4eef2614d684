#!/usr/bin/env python3
"""pgbench through hoopy vs a direct connection vs PgBouncer and pgpool-II, side by side.

Prints TPS per mode and the ratios hoopy/direct, hoopy/PgBouncer and hoopy/pgpool.
pgpool-II (C) is the peer that parses every statement as hoopy does: its
streaming_replication mode with one backend and load balancing on, no TLS.  A last
row runs one client (select-only simple) and prints the latency each target adds per
statement over direct, in microseconds.  Also
measures connections per second (pgbench -C), hoopy without agent-side TLS, and
bench/barerelay.py (a bare uvloop byte relay, with and without TLS): hoopy/bare is what
hoopy's own work costs, bare/direct what any Python process in the path costs here.
hoopy-w2+tls is hoopy+tls with postgres.workers: 2 (columns w2/pgpool, w2/bare).
Rounds interleave the targets in a rotating order (a shared VM drifts over a minute).
`--baseline DIR` adds a hoopy run from another source tree (target hoopy-base+tls, column
hoopy/base): a before/after comparison in one run.  Each mode also prints the spread of
TPS over its rounds.
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


def ensure_package(exe: str, package: str) -> str:
    """The executable, installed from the distribution's package when missing."""
    found = shutil.which(exe) or (f"/usr/sbin/{exe}" if Path(f"/usr/sbin/{exe}").exists() else "")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which(exe) or f"/usr/sbin/{exe}"


def ensure_pgbouncer() -> str:
    return ensure_package("pgbouncer", "pgbouncer")


BENCH_POLICY = (
    "rules:\n  - name: bench\n    effect: allow\n    match: {groups: [bench]}\n"
    "  - name: no-ddl\n    effect: deny\n    match: {sql: {statements: [drop, alter]}}\n"
)


def start_hoopy(
    folder: Path,
    pg_port: int,
    password: str,
    tls_required: bool,
    policy: str = BENCH_POLICY,
    root: Path = ROOT,
    workers: int = 1,
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """hoopy serve from the source tree `root` (another tree: a before/after run), its
    PostgreSQL agents served by `workers` processes (postgres.workers)."""
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
        f"postgres: {{allow_cleartext_without_tls: {str(not tls_required).lower()}"
        + (f", workers: {workers}" if workers > 1 else "")
        + "}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopy.cli", "serve", "--config", str(folder / "hoopy.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=root,
        env={**os.environ, "BENCH_DB_PASSWORD": password, "PYTHONPATH": str(root)},
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


def _as_postgres(folder: Path, cmd: list[str]) -> list[str]:
    """Pooler daemons refuse (or should not) run as root: hand them the folder."""
    if os.geteuid() != 0:
        return cmd
    shutil.chown(folder, "postgres")
    for f in folder.iterdir():
        shutil.chown(f, "postgres")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _wait_ready(proc: subprocess.Popen[str], port: int, name: str, log: Path) -> None:
    for _ in range(100):
        ready = subprocess.run(
            ["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        )
        if ready.returncode == 0:
            return
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited: " + log.read_text()[-2000:])
        subprocess.run(["sleep", "0.1"])
    raise SystemExit(f"{name} did not start: " + log.read_text()[-2000:])


def start_pgpool(
    folder: Path, pg_port: int, password: str, clients: int
) -> tuple[subprocess.Popen[str], int]:
    """pgpool-II in streaming_replication mode over the one backend, load balancing on
    (so it parses every statement to route it), no TLS, no health or replication checks."""
    exe = ensure_package("pgpool", "pgpool2")
    folder.mkdir(parents=True)
    port, pcp_port = pgcluster.free_port(), pgcluster.free_port()
    (folder / "pool_passwd").write_text(f"bench:TEXT{password}\n")
    (folder / "pcp.conf").write_text("")
    (folder / "pgpool.conf").write_text(
        "backend_clustering_mode = 'streaming_replication'\n"
        f"listen_addresses = '127.0.0.1'\nport = {port}\nsocket_dir = '{folder}'\n"
        f"pcp_listen_addresses = '127.0.0.1'\npcp_port = {pcp_port}\n"
        f"pcp_socket_dir = '{folder}'\nwd_ipc_socket_dir = '{folder}'\n"
        f"pid_file_name = '{folder}/pgpool.pid'\nlogdir = '{folder}'\n"
        f"backend_hostname0 = '127.0.0.1'\nbackend_port0 = {pg_port}\n"
        "backend_weight0 = 1\nbackend_flag0 = 'ALWAYS_PRIMARY|DISALLOW_TO_FAILOVER'\n"
        "load_balance_mode = on\nsr_check_period = 0\nhealth_check_period = 0\n"
        "failover_on_backend_error = off\nuse_watchdog = off\nssl = off\n"
        f"enable_pool_hba = off\npool_passwd = '{folder}/pool_passwd'\n"
        f"num_init_children = {max(clients + 4, 32)}\nmax_pool = 2\n"
        "connection_cache = on\nlog_min_messages = warning\n"
    )
    cmd = _as_postgres(
        folder,
        [exe, "-n", "-f", str(folder / "pgpool.conf"), "-F", str(folder / "pcp.conf")],
    )
    errf = open(folder / "stderr.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=errf, stderr=errf, text=True)
    _wait_ready(proc, port, "pgpool", folder / "stderr.txt")
    return proc, port


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


def latency_row(targets: list[dict[str, str]], seconds: int, rounds: int) -> None:
    """One client, select-only simple: microseconds each target adds per statement over
    direct (pgbench's transaction is one statement there), medians of interleaved rounds,
    with the spread (min..max of the rounds) beside it."""
    args = ["-S", "-M", "simple", "-c", "1", "-j", "1", "-T", str(seconds)]
    runs: dict[str, list[float]] = {x["name"]: [] for x in targets}
    for r in range(rounds):
        for x in targets[r % len(targets) :] + targets[: r % len(targets)]:
            tps = pgbench(x, args)
            runs[x["name"]].append(1e6 / tps if tps else float("nan"))
    base = statistics.median(runs["direct"])
    cells = {n: [v - base for v in vs] for n, vs in runs.items()}
    row = f"{'1 client, us added/stmt':<26}"
    row += "".join(f"{statistics.median(cells[x['name']]):>15.0f}" for x in targets)
    print(row, flush=True)
    print(
        f"  (direct {base:.0f} us per statement; spread over rounds: "
        + ", ".join(f"{n} {min(v):.0f}..{max(v):.0f}" for n, v in cells.items() if n != "direct")
        + ")",
        flush=True,
    )
    h, b = (
        statistics.median(cells.get("hoopy+tls", [0])),
        statistics.median(cells.get("bare+tls", [0])),
    )
    if b > 0:
        print(f"  hoopy+tls adds {h / b:.2f}x what bare+tls adds", flush=True)


def seed(cluster: pgcluster.PgCluster, scale: int) -> str:
    """The bench role and database, pgbench's tables at `scale`; the role's password."""
    password = "bench-pw-123"

    async def roles() -> None:
        conn = await asyncpg.connect(cluster.dsn)
        await conn.execute(f"CREATE ROLE bench LOGIN PASSWORD '{password}'")
        await conn.execute("CREATE DATABASE bench OWNER bench")
        await conn.close()

    asyncio.run(roles())
    init = ["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(cluster.port)]
    subprocess.run(
        [*init, "-U", "bench", "bench"],
        check=True,
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
    )
    return password


def stop_all(procs: list[subprocess.Popen[str]], cluster: pgcluster.PgCluster, work: Path) -> None:
    """Stops the bench's processes (a hung one is killed), then its cluster and folder."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    cluster.destroy()
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="runs per cell; the median is shown")
    ap.add_argument("--modes", default="", help="comma-separated substrings of mode names")
    ap.add_argument("--targets", default="", help="comma-separated target names (default all)")
    ap.add_argument("--no-big-select", action="store_true")
    ap.add_argument("--no-latency", action="store_true", help="skip the one-client row")
    ap.add_argument(
        "--baseline", default="", help="another hoopy source tree, as target hoopy-base+tls"
    )
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoopy-bench-"))
    os.chmod(work, 0o755)  # pgbouncer runs as the postgres user when we are root
    cluster = pgcluster.create()
    procs: list[subprocess.Popen[str]] = []
    try:
        password = seed(cluster, a.scale)
        hp, haddr = start_hoopy(work / "hoopy", cluster.port, password, tls_required=True)
        procs.append(hp)
        hp2, haddr2 = start_hoopy(work / "hoopy-plain", cluster.port, password, tls_required=False)
        procs.append(hp2)
        hw, waddr = start_hoopy(work / "hoopy-w2", cluster.port, password, True, workers=2)
        procs.append(hw)
        bp, bport = start_pgbouncer(work / "pgbouncer", cluster.port, password)
        procs.append(bp)
        pp, pport = start_pgpool(work / "pgpool", cluster.port, password, a.clients)
        procs.append(pp)
        rp, rport = start_bare(cluster.port, work / "hoopy" / "tls")
        procs.append(rp)
        rp2, rport2 = start_bare(cluster.port, None)
        procs.append(rp2)
        if a.baseline:
            hb, baddr = start_hoopy(
                work / "hoopy-base", cluster.port, password, True, root=Path(a.baseline)
            )
            procs.append(hb)
        token = DevIssuer(work / "hoopy" / "state", haddr["dev_issuer"]).mint(
            "bench", ["bench"], ttl=7200
        )
        token2 = DevIssuer(work / "hoopy-plain" / "state", haddr2["dev_issuer"]).mint(
            "bench", ["bench"], ttl=7200
        )
        token_w = DevIssuer(work / "hoopy-w2" / "state", waddr["dev_issuer"]).mint(
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
                "name": "pgpool",
                "port": str(pport),
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
                "name": "hoopy-w2+tls",  # postgres.workers: 2 (two processes)
                "port": waddr["postgres"].rsplit(":", 1)[1],
                "user": "agent",
                "db": "bench",
                "password": token_w,
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
        if a.baseline:
            base_token = DevIssuer(work / "hoopy-base" / "state", baddr["dev_issuer"]).mint(
                "bench", ["bench"], ttl=7200
            )
            targets.append(
                {
                    "name": "hoopy-base+tls",
                    "port": baddr["postgres"].rsplit(":", 1)[1],
                    "user": "agent",
                    "db": "bench",
                    "password": base_token,
                    "sslmode": "require",
                }
            )
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
        header = f"{'mode':<26}" + "".join(f"{x['name']:>15}" for x in targets)
        header += f"{'hoopy/direct':>14}{'hoopy/bouncer':>15}{'notls/direct':>14}"
        header += f"{'hoopy/bare':>12}{'bare/direct':>13}"
        header += f"{'hoopy/pgpool':>14}{'pgpool/direct':>15}"
        header += f"{'w2/pgpool':>11}{'w2/bare':>9}"
        if a.baseline:
            header += f"{'hoopy/base':>12}"
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
            row = f"{mode:<26}" + "".join(f"{tps[x['name']]:>15.0f}" for x in targets)
            row += f"{h / d if d else 0:>14.2f}{h / b if b else 0:>15.2f}{n / d if d else 0:>14.2f}"
            r = tps.get("bare+tls", 0.0)
            row += f"{h / r if r else 0:>12.2f}{r / d if d else 0:>13.2f}"
            q = tps.get("pgpool", 0.0)
            row += f"{h / q if q else 0:>14.2f}{q / d if d else 0:>15.2f}"
            w = tps.get("hoopy-w2+tls", 0.0)
            row += f"{w / q if q else 0:>11.2f}{w / r if r else 0:>9.2f}"
            if a.baseline:
                hb_tps = tps.get("hoopy-base+tls", 0.0)
                row += f"{h / hb_tps if hb_tps else 0:>12.2f}"
            print(row, flush=True)
            spread = ", ".join(f"{n} {min(v):.0f}..{max(v):.0f}" for n, v in runs.items())
            print(f"  (TPS spread over rounds: {spread})", flush=True)
        if not a.no_latency:
            latency_row(targets, a.seconds, a.rounds)
        if not a.no_big_select:
            big_select(next(x for x in targets if x["name"] == "hoopy+tls"), hp.pid)
    finally:
        stop_all(procs, cluster, work)


if __name__ == "__main__":
    main()
