"""PostgreSQL 15's own regression suite through hoopy, compared with a direct connection.

Run as `python3 -m tests.compat.pgregress` (CI does, after the unit and integration
tests).  It runs the files of `shared/pgregress/parallel_schedule` the way pg_regress 15
runs them (`psql -X -a -q` per file, schedule order, one database, see that folder's
README) twice, on two fresh clusters made from the installed server binaries: once
directly, once through `hoopy serve` with an allow-all policy that names every statement
kind (opaque ones included).  A file whose two outputs differ is a transparency gap.

`tests/compat/known_differences.txt` lists the files that still differ, each with the
reason.  The run fails when a file differs that is not listed there (a regression), and
reports listed files that now match (so the list only shrinks).  `--write-outputs DIR`
keeps both outputs and a diff per file for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from hoopy import pgcluster
from hoopy.devissuer import DevIssuer
from tests import serveproc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KNOWN = HERE / "known_differences.txt"
# pg_regress ignores the result of `random` (its output is random by design).
IGNORED = frozenset({"random"})


def find_suite() -> Path:
    """shared/pgregress: beside the project folder (the work tree or CI's clone), or
    beside the folder holding it (a git worktree under wt/)."""
    env = os.environ.get("HOOPY_PGREGRESS")
    candidates = [Path(env)] if env else []
    candidates += [ROOT.parent / "shared" / "pgregress", ROOT / "shared" / "pgregress"]
    candidates.append(ROOT.parent.parent / "shared" / "pgregress")  # from a worktree folder
    for c in candidates:
        if (c / "parallel_schedule").is_file():
            return c
    raise SystemExit("pgregress: shared/pgregress not found (set HOOPY_PGREGRESS)")


def schedule(suite: Path) -> list[str]:
    files: list[str] = []
    for line in (suite / "parallel_schedule").read_text().splitlines():
        if line.startswith("test:"):
            files += line.split()[1:]
    return files


def build_library(suite: Path, into: Path) -> None:
    """regress.so from the suite's regress.c, plus contrib's autoinc/refint beside it."""
    include = subprocess.run(
        ["pg_config", "--includedir-server"], capture_output=True, text=True, check=False
    ).stdout.strip()
    bindir = pgcluster.find_bindir()
    if not include or not Path(include, "postgres.h").exists():
        major = bindir.parent.name
        include = f"/usr/include/postgresql/{major}/server"
    if not Path(include, "postgres.h").exists():
        raise SystemExit("pgregress: server headers missing (install postgresql-server-dev-15)")
    obj = into / "regress.o"
    flags = ["-O2", "-fPIC", "-fno-strict-aliasing", "-fwrapv", "-fexcess-precision=standard"]
    internal = str(Path(include).parent / "internal")
    cc = ["gcc", *flags, f"-I{include}", f"-I{internal}"]
    subprocess.run([*cc, "-c", str(suite / "src" / "regress.c"), "-o", str(obj)], check=True)
    subprocess.run(["gcc", "-shared", "-o", str(into / "regress.so"), str(obj)], check=True)
    libdir = bindir.parent / "lib"
    for name in ("autoinc.so", "refint.so"):
        if (libdir / name).exists():
            shutil.copy(libdir / name, into / name)


@dataclass
class Target:
    name: str
    conninfo: str
    password: str


def _chown_tree(path: Path, user: str | None) -> None:
    if not user:
        return
    pw = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


async def _prepare_db(cluster: pgcluster.PgCluster) -> None:
    conn = await asyncpg.connect(cluster.dsn)
    try:
        await conn.execute(
            "CREATE DATABASE regression TEMPLATE=template0 ENCODING='UTF8' "
            "LC_COLLATE='C' LC_CTYPE='C'"
        )
        await conn.execute(
            "ALTER DATABASE regression SET lc_messages TO 'C';"
            "ALTER DATABASE regression SET lc_monetary TO 'C';"
            "ALTER DATABASE regression SET lc_numeric TO 'C';"
            "ALTER DATABASE regression SET lc_time TO 'C';"
            "ALTER DATABASE regression SET bytea_output TO 'hex';"
            "ALTER DATABASE regression SET timezone_abbreviations TO 'Default'"
        )
    finally:
        await conn.close()


def new_cluster() -> pgcluster.PgCluster:
    cluster = pgcluster.create(extra_options="-c max_prepared_transactions=2")
    asyncio.run(_prepare_db(cluster))
    return cluster


def allow_all_policy() -> str:
    """One allow rule naming every statement kind `hoopy check` accepts (opaque kinds
    need naming one by one; a glob does not cover them)."""
    from hoopy import configpolicy

    names, _ = configpolicy._statement_kinds()
    kinds = sorted(
        k
        for k in names | {"read_activity", "signal_backend", "read_statistics"}
        if configpolicy._statement_kind_problem(k) is None
    )
    return (
        "mode: enforce\nrules:\n  - name: allow-everything\n    effect: allow\n"
        f"    match: {{connectors: [regression], sql: {{statements: {json.dumps(kinds)}}}}}\n"
    )


def start_hoopy(
    folder: Path, cluster: pgcluster.PgCluster
) -> tuple[subprocess.Popen[str], int, str]:
    (folder / "connectors").mkdir(parents=True)
    (folder / "policies").mkdir()
    (folder / "connectors" / "regression.yaml").write_text(
        f"type: postgres\naddress: 127.0.0.1:{cluster.port}\ndatabase: regression\n"
        "user: postgres\npassword: env:PGREGRESS_BACKEND_PASSWORD\nsslmode: disable\n"
    )
    (folder / "policies" / "all.yaml").write_text(allow_all_policy())
    issuer_port = pgcluster.free_port()
    cfg = folder / "hoopy.yaml"
    cfg.write_text(
        "listen:\n  postgres: 127.0.0.1:0\n  admin: 127.0.0.1:0\n"
        "state: sqlite:state/state.db\n"
        f"dev_issuer: {{listen: 127.0.0.1:{issuer_port}}}\nrecordings: recordings/\n"
    )
    env = {**os.environ, "PGREGRESS_BACKEND_PASSWORD": cluster.password, "PYTHONUNBUFFERED": "1"}
    with open(folder / "hoopy.log", "w") as log:  # the child keeps its own copy
        try:
            proc, addresses, _ = serveproc.launch(cfg, env, stderr=log)
        except serveproc.ServeFailed:
            raise SystemExit(
                "pgregress: hoopy serve did not start:\n" + (folder / "hoopy.log").read_text()
            ) from None
    issuer = DevIssuer(folder / "state", addresses["dev_issuer"])
    token = issuer.mint("pgregress", ["compat"], ttl=4 * 3600)
    port = int(addresses["postgres"].rsplit(":", 1)[1])
    return proc, port, token


def run_file(target: Target, name: str, suite: Path, env: dict[str, str]) -> str:
    src = (suite / "sql" / f"{name}.sql").read_bytes()
    cmd = [
        "psql", "-X", "-a", "-q", "-d", target.conninfo,
        "-v", "HIDE_TABLEAM=on", "-v", "HIDE_TOAST_COMPRESSION=on", "-v", "ON_ERROR_STOP=0",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd,
            input=src,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, "PGPASSWORD": target.password, "PGAPPNAME": f"pg_regress/{name}"},
            timeout=float(os.environ.get("PGREGRESS_FILE_TIMEOUT", "300")),
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        partial = (e.stdout or b"").decode("utf-8", "replace")
        return partial + f"\n*** pgregress: psql did not finish {name} in {e.timeout:.0f} s ***\n"
    return proc.stdout.decode("utf-8", "replace")


def base_env(work: Path, suite: Path, libdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k == "LANG" or k.startswith("LC_") or k == "LANGUAGE" or k.startswith("PG"))
    }
    env.update(
        LC_MESSAGES="C",
        PGTZ="America/Los_Angeles",
        PGDATESTYLE="Postgres, MDY",
        PGOPTIONS="-c intervalstyle=postgres_verbose",
        PG_ABS_SRCDIR=str(suite),
        PG_ABS_BUILDDIR=str(work),
        PG_LIBDIR=str(libdir),
        PG_DLSUFFIX=".so",
        PGCONNECT_TIMEOUT="30",
    )
    return env


def run_side(
    label: str, files: list[str], target: Target, suite: Path, env: dict[str, str]
) -> dict[str, str]:
    out: dict[str, str] = {}
    started = time.monotonic()
    for name in files:
        out[name] = run_file(target, name, suite, env)
    print(
        f"pgregress: {label}: {len(files)} files in {time.monotonic() - started:.0f} s", flush=True
    )
    return out


def without_hoopy_detail(out: str) -> str:
    """The output less the one line hoopy adds to a refused unparseable statement: its
    DETAIL, or the DETAIL's second line after the grammar's own (psql prints a
    multi-line DETAIL as it comes)."""
    from hoopy.protocols.postgres.statementcheck import UNPARSEABLE_DETAIL

    out = out.replace(f"DETAIL:  {UNPARSEABLE_DETAIL}\n", "")
    return re.sub(f"(?m)^(DETAIL:  .*\n){re.escape(UNPARSEABLE_DETAIL)}\n", r"\1", out)


def read_known() -> dict[str, str]:
    known: dict[str, str] = {}
    if KNOWN.exists():
        for line in KNOWN.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                known[name] = reason.strip()
    return known


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="run just these files (after test_setup)")
    ap.add_argument("--write-outputs", type=Path, help="keep both outputs and diffs here")
    args = ap.parse_args(argv)
    suite = find_suite()
    files = schedule(suite)
    if args.only:
        files = [f for f in files if f in set(args.only) or f == "test_setup"]
    user = "postgres" if os.geteuid() == 0 else None
    work = Path(tempfile.mkdtemp(prefix="hoopy-pgregress-"))
    clusters: list[pgcluster.PgCluster] = []
    proc: subprocess.Popen[str] | None = None
    try:
        libdir = work / "lib"
        libdir.mkdir()
        build_library(suite, libdir)
        (work / "results").mkdir()
        _chown_tree(work, user)
        os.chmod(work, 0o755)
        env = base_env(work, suite, libdir)
        direct_cluster = new_cluster()
        clusters.append(direct_cluster)
        direct = Target(
            "direct",
            f"host=127.0.0.1 port={direct_cluster.port} dbname=regression user=postgres",
            direct_cluster.password,
        )
        via_cluster = new_cluster()
        clusters.append(via_cluster)
        proc, port, token = start_hoopy(work / "hoopy", via_cluster)
        via = Target(
            "hoopy",
            f"host=127.0.0.1 port={port} dbname=regression user=postgres sslmode=require",
            token,
        )
        a = run_side("direct", files, direct, suite, env)
        b = run_side("hoopy", files, via, suite, env)
    finally:
        if proc is not None:
            serveproc.stop(proc)
        for c in clusters:
            c.destroy()
    return report(files, a, b, args.write_outputs, work)


def report(
    files: list[str], a: dict[str, str], b: dict[str, str], keep: Path | None, work: Path
) -> int:
    known = read_known()
    counted = [f for f in files if f not in IGNORED]
    raw = [f for f in counted if a[f] != b[f]]
    differ = [f for f in raw if a[f] != without_hoopy_detail(b[f])]
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for f in differ:
            diff = difflib.unified_diff(
                a[f].splitlines(True), b[f].splitlines(True), f"direct/{f}.out", f"hoopy/{f}.out"
            )
            (keep / f"{f}.diff").write_text("".join(diff))
    shutil.rmtree(work, ignore_errors=True)
    same = len(counted) - len(differ)
    print(f"pgregress: {len(counted) - len(raw)}/{len(counted)} files byte-identical through hoopy")
    print(
        f"pgregress: {same}/{len(counted)} identical but for hoopy's DETAIL line on "
        "statements it cannot parse (which the server rejects too)"
    )
    new = [f for f in differ if f not in known]
    fixed = [f for f in known if f in counted and f not in differ]
    for f in differ:
        print(f"  differs: {f}" + (f"  ({known[f]})" if f in known else "  (NOT LISTED)"))
    for f in fixed:
        print(f"  now identical, remove from known_differences.txt: {f}")
    if new:
        print(
            f"pgregress: FAILED: {len(new)} file(s) differ that known_differences.txt does not list"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
