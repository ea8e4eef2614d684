"""Kubernetes path: the emulator directly vs through hoopy, side by side in one run.

400 GET pod one at a time (the latency hoopy adds, without queueing), 2,000 GET
pod and 200 LIST pods (500 pods) at concurrency 10 (aiohttp client, JSON; on 2
cores the client, hoopy and the emulator share the CPU), then a 100 MB
`kubectl exec -i … -- wc -c` stream.  The request loads run direct and through
hoopy back to back (in an order that rotates each round), for --rounds rounds (the
machine is shared: only numbers taken side by side compare); each line is one round,
the summary gives the medians over rounds and their spread, the load average, and
the CPU each process spent per request (so a slow client would show; hoopy's CPU
per request is the figure the machine's load blurs least).  Both legs use the same client,
the same TLS settings and a fresh connection pool per run.  Targets (issue 12):
added median latency <= 2 ms, >= 0.5x direct throughput, exec >= 50 MB/s.

    PYTHONPATH=. python3 bench/kube.py [--gets 2000] [--lists 200] [--mb 100] [--rounds 3]
        [--compare DIR] [--loads one,get,list]

--compare DIR also runs a second hoopy from the source tree DIR (say an export of the
commit before a change) in every round, as a third leg: before/after numbers taken
side by side.
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
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kubefixture import KUBECTL, start_emulator, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
"""


async def load(
    url: str, ca: Path, token: str, paths: list[str], conc: int
) -> tuple[list[float], float]:
    ctx = ssl.create_default_context(cafile=str(ca))
    lat: list[float] = []
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=conc)) as s:
        queue = list(reversed(paths))

        async def worker() -> None:
            while queue:
                p = queue.pop()
                t = time.perf_counter()
                async with s.get(url + p, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return lat, time.perf_counter() - t0


def cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU per request of the client (this process), the emulator and hoopy."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {"client": os.getpid(), **pids}

    def run(self, url: str, ca: Path, token: str, paths: list[str], conc: int) -> Run:
        before = {k: cpu(p) for k, p in self.pids.items()}
        lat, wall = asyncio.run(load(url, ca, token, paths, conc))
        used = {k: (cpu(p) - before[k]) * 1e3 / len(paths) for k, p in self.pids.items()}
        return Run(lat, wall, used)


@dataclass
class Run:
    lat: list[float]
    wall: float
    cpu_ms: dict[str, float]  # CPU milliseconds per request, by process

    @property
    def median_ms(self) -> float:
        return statistics.median(self.lat) * 1000

    @property
    def rate(self) -> float:
        return len(self.lat) / self.wall


def report(name: str, d: Run, v: Run, proxy: str = "hoopy") -> tuple[float, float, float]:
    added, ratio = v.median_ms - d.median_ms, v.rate / d.rate

    def costs(run: Run) -> str:
        return " ".join(f"{k} {ms:.2f}" for k, ms in run.cpu_ms.items() if ms > 0.005)

    print(
        f"{name:10} median direct {d.median_ms:6.2f} ms  via {v.median_ms:6.2f} ms"
        f"  added {added:+5.2f} ms  rate direct {d.rate:5.0f}/s  via {v.rate:5.0f}/s"
        f"  ratio {ratio:.2f}x\n{'':10} cpu ms/request direct: {costs(d)}  via: {costs(v)}",
        flush=True,
    )
    return added, ratio, v.cpu_ms.get(proxy, 0.0)


def summary(name: str, results: list[tuple[float, float, float]]) -> None:
    added = sorted(a for a, _, _ in results)
    ratio = sorted(r for _, r, _ in results)
    cost = sorted(c for _, _, c in results)
    print(
        f"== {name:24} added median {statistics.median(added):+5.2f} ms"
        f" (spread {added[0]:+.2f}..{added[-1]:+.2f})"
        f"  ratio median {statistics.median(ratio):.2f}x (spread {ratio[0]:.2f}..{ratio[-1]:.2f})"
        f"  hoopy cpu median {statistics.median(cost):.3f} ms/request"
        f" (spread {cost[0]:.3f}..{cost[-1]:.3f})"
    )


def exec_rate(args: list[str], mb: int, env: dict[str, str]) -> float:
    data = os.urandom(1024 * 1024) * mb
    t = time.perf_counter()
    r = subprocess.run(
        [KUBECTL, *args, "exec", "-i", "-n", "bench", "pod-0", "--", "wc", "-c"],
        input=data,
        capture_output=True,
        env=env,
        timeout=600,
    )
    dt = time.perf_counter() - t
    assert r.returncode == 0 and int(r.stdout) == len(data), r.stderr
    return len(data) / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gets", type=int, default=2000)
    ap.add_argument("--lists", type=int, default=200)
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", type=Path, help="a second hoopy source tree to compare")
    ap.add_argument(
        "--loads", default="one,get,list", help="which loads to run (one,get,list; comma-separated)"
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        emu = start_emulator(Path(d) / "emu")
        h = start_hoopy(Path(d) / "hoopy", emu, POLICY)
        other = None
        if a.compare:
            # `python -m` puts the working directory first on sys.path: start there
            saved, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
            os.environ["PYTHONPATH"] = str(a.compare.resolve())
            os.chdir(a.compare)
            try:
                other = start_hoopy(Path(d) / "other", emu, POLICY)
            finally:
                os.environ["PYTHONPATH"] = saved or ""
                os.chdir(cwd)
        try:
            emu.call("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
            for i in range(a.pods):
                emu.call(
                    "POST", "/api/v1/namespaces/bench/pods", {"metadata": {"name": f"pod-{i}"}}
                )
            token = h.token(ttl=3600)
            gets = [f"/api/v1/namespaces/bench/pods/pod-{i % a.pods}" for i in range(a.gets)]
            lists = ["/api/v1/namespaces/bench/pods"] * a.lists
            via = f"{h.server}/k8s/cluster"
            asyncio.run(load(via, h.ca, token, gets[:50], 10))  # warm-up: session, caches
            one = gets[: max(1, a.gets // 5)]
            m = Meter({"emu": emu.proc.pid, "hoopy": h.proc.pid})
            emu_ca = emu.folder / "ca.pem"
            chosen = set(a.loads.split(","))
            loads = tuple(
                (n, p, c)
                for key, n, p, c in (
                    ("one", f"{len(one)} GET pod, one at a time", one, 1),
                    ("get", f"{a.gets} GET pod, conc 10", gets, 10),
                    ("list", f"{a.lists} LIST {a.pods} pods, conc 10", lists, 10),
                )
                if key in chosen
            )
            results: dict[str, list[tuple[float, float, float]]] = {n: [] for n, _, _ in loads}
            if other is not None:
                otoken = other.token(ttl=3600)
                ovia = f"{other.server}/k8s/cluster"
                asyncio.run(load(ovia, other.ca, otoken, gets[:50], 10))
                m.pids["other"] = other.proc.pid
                results.update({f"{n} [{a.compare}]": [] for n, _, _ in loads})
            print("pids:", " ".join(f"{k} {v}" for k, v in m.pids.items()), flush=True)
            print("load average at start:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
            for r in range(a.rounds):
                print(f"-- round {r + 1}/{a.rounds}")
                for name, paths, conc in loads:
                    # the legs in a rotating order, so none is always first or last
                    legs = [("direct", emu.url, emu_ca, emu.token), ("via", via, h.ca, token)]
                    if other is not None:
                        legs.append(("other", ovia, other.ca, otoken))
                    legs = legs[r % len(legs) :] + legs[: r % len(legs)]
                    runs = {leg: m.run(url, ca, tok, paths, conc) for leg, url, ca, tok in legs}
                    results[name].append(report(name.split(",")[0], runs["direct"], runs["via"]))
                    if other is not None:
                        results[f"{name} [{a.compare}]"].append(
                            report("  compare", runs["direct"], runs["other"], "other")
                        )
            print("load average at end:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
            for name, res in results.items():
                summary(name, res)
            if not a.mb:
                return
            env = {**os.environ, "KUBECACHEDIR": str(Path(d) / "kc")}
            direct_env = {**env, "KUBECONFIG": str(emu.kubeconfig)}
            via_args = ["--server", via, "--certificate-authority", str(h.ca), "--token", token]
            rd = exec_rate([], a.mb, direct_env)
            rv = exec_rate(via_args, a.mb, {**env, "KUBECONFIG": "/dev/null"})
            print(
                f"exec -i wc -c {a.mb} MB: direct {rd:6.1f} MB/s  via hoopy {rv:6.1f} MB/s"
                f"  ratio {rv / rd:.2f}x"
            )
        finally:
            h.stop()
            if other is not None:
                other.stop()
            emu.stop()


if __name__ == "__main__":
    main()
