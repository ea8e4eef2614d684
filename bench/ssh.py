"""SSH through hoopy vs directly to sshd, side by side in one run.

    PYTHONPATH=. python3 bench/ssh.py [--mb 200] [--execs 100] [--conns 20] [--rounds 3]
                                      [--sessions 50] [--baseline DIR]

Starts a real OpenSSH sshd and `hoopy serve` (as the integration tests do), then:
- throughput: the real `ssh` client running `cat` of a file of --mb MB, output discarded;
- exec latency: --execs sequential `true` over one asyncssh connection per target, in
  --rounds rounds, direct and through hoopy interleaved exec by exec;
- connection latency: --conns fresh `ssh host true` runs of the real client per target
  and round, interleaved: direct, through hoopy as one identity (the backend connection
  reused, pool.py) and through hoopy as a new identity each time (no reuse possible);
- --sessions concurrent asyncssh sessions each holding a channel, hoopy's RSS at peak.
Latency rows: the median of all rounds per target, the added ms against direct, and the
added ms of each round (the spread).  --baseline DIR adds `hoopy serve` from another
tree (say `git archive <commit> | tar -x -C /tmp/base`) as target "base", interleaved.
The backend's HOME is an empty folder, so root's ~/.bashrc does not run with every
command on both paths (noise, not hoopy's cost).
Targets (issue 11): >= 0.4x direct throughput; <= 5 ms added median latency per exec
and per connection; RSS < 300 MB with 50 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh

from hoopy.devissuer import DevIssuer
from tests import serveproc
from tests.integration.sshd import (
    ADMIN_TOKEN,
    Sshd,
    SshHoopy,
    start_ssh_hoopy,
    start_sshd,
    stop,
    write_ssh_config,
)


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


def summary(name: str, samples: dict[str, list[list[float]]], note: str) -> None:
    """Median of each target over all rounds, the added ms (hoopy's median minus the
    direct median), and the spread: the added ms of each round."""
    med = {k: statistics.median(x for r in rounds for x in r) for k, rounds in samples.items()}
    direct = med.pop("direct")
    print(f"{name:<10} direct {direct * 1e3:7.2f} ms  ({note})")
    for k, m in med.items():
        per_round = [
            (statistics.median(h) - statistics.median(d)) * 1e3
            for h, d in zip(samples[k], samples["direct"], strict=True)
        ]
        spread = " ".join(f"{x:+.2f}" for x in per_round)
        print(f"{name:<10} {k:<6} {m * 1e3:7.2f} ms  added {(m - direct) * 1e3:+.2f} ms  "
              f"(per round: {spread})")  # fmt: skip


async def exec_rounds(
    s: Sshd, hoopies: dict[str, SshHoopy], n: int, rounds: int
) -> dict[str, list[list[float]]]:
    """n sequential `true` on one connection per target, interleaved exec by exec (the
    order reversed each round), so load on the shared machine hits all alike."""
    samples: dict[str, list[list[float]]] = {"direct": [], **{k: [] for k in hoopies}}
    async with contextlib.AsyncExitStack() as stack:
        targets = {"direct": await stack.enter_async_context(connect_direct(s))}
        for k, h in hoopies.items():
            targets[k] = await stack.enter_async_context(connect_hoopy(h))
        for r in range(rounds):
            got: dict[str, list[float]] = {k: [] for k in samples}
            order = list(samples) if r % 2 == 0 else list(reversed(samples))
            for _ in range(n):
                for k in order:
                    t = time.perf_counter()
                    res = await targets[k].run("true")
                    got[k].append(time.perf_counter() - t)
                    assert res.exit_status == 0, res.stderr
            for k in got:
                samples[k].append(got[k])
    return samples


def conn_rounds(
    s: Sshd, hoopies: dict[str, SshHoopy], n: int, rounds: int
) -> tuple[dict[str, list[list[float]]], dict[str, float]]:
    """n fresh `ssh host true` per target and round, interleaved run by run: directly,
    through each hoopy as one identity (its backend connection reused where it can
    be), and through the first as a new identity each time (a backend handshake each
    time).  Then hoopy's CPU per connection of each kind, in runs of their own (a
    connection's clean-up in hoopy goes on after the client exits, into what runs next)."""
    first = next(iter(hoopies))
    envs = {k: h.ssh_env(h.issuer.mint("bench", ["agents"], ttl=3600)) for k, h in hoopies.items()}
    fresh = iter(range(1 << 30))

    def run(k: str) -> float:
        if k == "direct":
            return timed([*direct_argv(s), "true"])
        if k == "new-id":
            h = hoopies[first]
            e = h.ssh_env(h.issuer.mint(f"bench-new-{next(fresh)}", ["agents"], ttl=3600))
            return timed([*h.ssh_argv("web-1"), "true"], e)
        return timed([*hoopies[k].ssh_argv("web-1"), "true"], envs[k])

    samples: dict[str, list[list[float]]] = {"direct": [], **{k: [] for k in hoopies}}
    samples["new-id"] = []
    for r in range(rounds):
        got: dict[str, list[float]] = {k: [] for k in samples}
        order = list(samples) if r % 2 == 0 else list(reversed(samples))
        for _ in range(n):
            for k in order:
                got[k].append(run(k))
        for k in got:
            samples[k].append(got[k])
    cpus = {}
    for k in [*hoopies, "new-id"]:
        pid = hoopies[first if k == "new-id" else k].proc.pid
        c0 = cpu(pid)
        for _ in range(n):
            run(k)
        cpus[k] = (cpu(pid) - c0) / n
    return samples, cpus


def start_baseline(folder: Path, s: Sshd, tree: Path) -> SshHoopy:
    """`hoopy serve` from another checkout (`--baseline`), e.g. the commit before a change,
    against the same sshd: compared in the same run, interleaved."""
    cfg = write_ssh_config(folder, s)
    env = {**os.environ, "TEST_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONUNBUFFERED": "1"}
    # `python -m` would put the current folder (this checkout) first on sys.path
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from hoopy.cli import main; main()"
    proc, addresses, _ = serveproc.launch(cfg, env, python_args=("-c", code))
    pub = (folder / "state" / "ssh_host_ed25519_key.pub").read_text().strip()
    issuer = DevIssuer(folder / "state", addresses["dev_issuer"])
    return SshHoopy(folder, cfg, proc, addresses, issuer, pub, "")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


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
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="another hoopy checkout, compared as 'base'")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hoopy-bench-ssh-"))
    # root's ~/.bashrc (here: pyenv init, ~130 ms) would run for every command on both
    # paths alike and drown hoopy's few ms in its noise: the backend's HOME is empty.
    (folder / "home").mkdir()
    s = start_sshd(folder / "sshd", f"SetEnv HOME={folder / 'home'}\n")
    print(f"load average {load()} at start")
    hoopies = {"hoopy": start_ssh_hoopy(folder / "hoopy", s)}
    try:
        if args.baseline:
            hoopies["base"] = start_baseline(folder / "base", s, args.baseline.resolve())
        big = s.folder / "big.bin"
        with big.open("wb") as f:
            f.write(os.urandom(1 << 20) * args.mb)
        mb = args.mb * (1 << 20) / 1e6
        d = min(timed([*direct_argv(s), f"cat {big}"]) for _ in range(2))
        for k, h in hoopies.items():
            env = h.ssh_env(h.issuer.mint("bench", ["agents"], ttl=3600))
            c0 = cpu(h.proc.pid)
            p = min(timed([*h.ssh_argv("web-1"), f"cat {big}"], env) for _ in range(2))
            cm = (cpu(h.proc.pid) - c0) / (2 * mb)
            print(
                f"throughput  direct {mb / d:7.1f} MB/s  {k} {mb / p:7.1f} MB/s  "
                f"ratio {d / p:.2f}x; {k} CPU {cm * 1e3:.2f} ms per MB"
            )
        c0s = {k: cpu(h.proc.pid) for k, h in hoopies.items()}
        ex = asyncio.run(exec_rounds(s, hoopies, args.execs, args.rounds))
        ce = {
            k: (cpu(h.proc.pid) - c0s[k]) / (args.execs * args.rounds) for k, h in hoopies.items()
        }
        summary(
            "exec",
            ex,
            f"median of {args.rounds} interleaved rounds x {args.execs} `true` on one "
            "connection; CPU per exec: "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in ce.items()),
        )
        cn, cpus = conn_rounds(s, hoopies, args.conns, args.rounds)
        summary(
            "connection",
            cn,
            f"median of {args.rounds} interleaved rounds x {args.conns} `ssh host true`; "
            "CPU per connection: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in cpus.items()),
        )
        h = hoopies["hoopy"]
        errors, peak = asyncio.run(concurrent(h, args.sessions))
        print(
            f"concurrent  {args.sessions} sessions, {errors} errors, "
            f"hoopy RSS peak {peak / 1e6:.0f} MB"
        )
        print(f"load average {load()} at the end")
    finally:
        for h in hoopies.values():
            stop(h.proc)
        s.stop()
        subprocess.run(["rm", "-rf", str(folder)], check=False)


if __name__ == "__main__":
    main()
