#!/usr/bin/env python3
"""Masked results through hoopy vs unmasked vs direct, side by side in one run.

A 100,000-row SELECT of a table with 2 masked columns (email, ssn) and 4 text
columns scanned by detectors, fetched with asyncpg (binary rows) and psql (text rows):
  direct          straight to PostgreSQL
  hoopy plain     through hoopy, an identity no mask rule applies to
  hoopy masked    through hoopy, mask rules (2 columns + email/credit_card/ssn detectors)
  hoopy no-mask-cols  masked identity, but selecting only columns nothing masks (id, n):
                  must cost nothing extra over "hoopy plain"
Prints rows/s (median of --rounds) and the ratios masked/plain and masked/direct.
Usage: python3 bench/masking.py [--rows 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pg import start_hoopy  # noqa: E402
from hoopy import pgcluster  # noqa: E402
from hoopy.devissuer import DevIssuer  # noqa: E402

POLICY = """\
rules:
  - name: bench
    effect: allow
    match: {groups: [plain, masked]}
  - name: hide-pii
    effect: mask
    columns: ["people.email", "people.ssn"]
    detectors: [email, credit_card, ssn]
    match: {groups: [masked]}
"""
SEED = """
CREATE TABLE people (id int, n int, email text, ssn text,
                     t1 text, t2 text, t3 text, t4 text);
INSERT INTO people
SELECT i, i * 7, 'user' || i || '@example.com', '123-45-' || lpad((i % 10000)::text, 4, '0'),
       'order ' || i || ' shipped to warehouse ' || (i % 17),
       CASE WHEN i % 10 = 0 THEN 'contact support@example.org please' ELSE 'no contact' END,
       md5(i::text),
       CASE WHEN i % 50 = 0 THEN 'card 4111 1111 1111 1111 on file' ELSE 'status ok ' || i END
FROM generate_series(1, {rows}) AS i;
"""
ALL = "SELECT * FROM people"
UNMASKED = "SELECT id, n FROM people"


def _ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cluster = pgcluster.create()
    tmp = Path(tempfile.mkdtemp(prefix="hoopy-bench-mask-"))
    proc = None
    try:
        password = "bench-pw"
        conn = await asyncpg.connect(cluster.dsn)
        await conn.execute(f"CREATE ROLE bench LOGIN PASSWORD '{password}'")
        await conn.execute("CREATE DATABASE bench OWNER bench")
        await conn.close()
        direct_kw = dict(
            host="127.0.0.1", port=cluster.port, user="bench", password=password, database="bench"
        )
        conn = await asyncpg.connect(**direct_kw)
        await conn.execute(SEED.format(rows=args.rows))
        await conn.execute("ANALYZE people")
        await conn.close()
        proc, addresses = start_hoopy(
            tmp / "hoopy", cluster.port, password, tls_required=True, policy=POLICY
        )
        port = int(addresses["postgres"].rsplit(":", 1)[1])
        issuer = DevIssuer(tmp / "hoopy" / "state", addresses["dev_issuer"])
        tokens = {g: issuer.mint("bench", [g], ttl=3600) for g in ("plain", "masked")}

        def via(group: str) -> dict:
            return dict(
                host="127.0.0.1", port=port, user="agent", database="bench",
                password=tokens[group], ssl=_ssl(),
            )  # fmt: skip

        targets = {
            "direct": direct_kw,
            "hoopy plain": via("plain"),
            "hoopy masked": via("masked"),
        }
        conns = {name: await asyncpg.connect(**kw) for name, kw in targets.items()}

        def asyncpg_fetch(name: str, sql: str) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                return len(await conns[name].fetch(sql))

            return run

        def psql_fetch(kw: dict, sql: str) -> Callable[[], Awaitable[int]]:
            info = f"host=127.0.0.1 port={kw['port']} user={kw['user']} dbname={kw['database']}" + (
                " sslmode=require" if "ssl" in kw else " sslmode=disable"
            )
            env = {**os.environ, "PGPASSWORD": kw["password"]}

            async def run() -> int:
                p = await asyncio.create_subprocess_exec(
                    "psql", "-X", "-At", info, "-c", sql,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                )  # fmt: skip
                out, _ = await p.communicate()
                return out.count(b"\n")

            return run

        cases: dict[str, Callable[[], Awaitable[int]]] = {}
        for name, kw in targets.items():
            cases[f"asyncpg  {name}"] = asyncpg_fetch(name, ALL)
            cases[f"psql     {name}"] = psql_fetch(kw, ALL)
        cases["asyncpg  hoopy plain, id+n"] = asyncpg_fetch("hoopy plain", UNMASKED)
        cases["asyncpg  hoopy masked, id+n (no masked columns)"] = asyncpg_fetch(
            "hoopy masked", UNMASKED
        )
        # sanity: masking is on for the masked identity
        sample = await conns["hoopy masked"].fetchrow("SELECT email, t2 FROM people WHERE id = 10")
        assert sample is not None and sample["email"] == "****", sample
        assert "support@" not in sample["t2"], sample
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            for name, run in cases.items():  # interleaved: drift hits every case alike
                t0 = time.perf_counter()
                n = await run()
                times[name].append(time.perf_counter() - t0)
                assert n == args.rows, (name, n)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{args.rows}-row SELECT, median of {args.rounds} rounds (rows/s):")
        for k, t in med.items():
            print(f"  {k:52s} {args.rows / t:12,.0f}")
        for client in ("asyncpg ", "psql    "):
            m, p, d = (med[f"{client} hoopy masked"], med[f"{client} hoopy plain"],
                       med[f"{client} direct"])  # fmt: skip
            print(
                f"  {client.strip():8s} masked/plain time {m / p:.2f}x   "
                f"masked/direct time {m / d:.2f}x   plain/direct time {p / d:.2f}x"
            )
        a, b = (
            med["asyncpg  hoopy masked, id+n (no masked columns)"],
            med["asyncpg  hoopy plain, id+n"],
        )
        print(f"  no masked columns selected: masked identity / plain identity time {a / b:.2f}x")
        for c in conns.values():
            await c.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
