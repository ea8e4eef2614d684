"""Kubernetes path: the emulator directly vs through hoopy, side by side in one run.

400 GET pod one at a time (the latency hoopy adds, without queueing), 2,000 GET
pod and 200 LIST pods (500 pods) at concurrency 10 (aiohttp client, JSON; on 2
cores the client, hoopy and the emulator share the CPU), then a 100 MB
`kubectl exec -i … -- wc -c` stream.  Prints medians, the
added median latency, throughput ratios and the exec rate.  Targets (issue 12):
added median latency <= 2 ms, >= 0.5x direct throughput, exec >= 50 MB/s.

    PYTHONPATH=. python3 bench/kube.py [--gets 2000] [--lists 200] [--mb 100]
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


def report(name: str, direct: tuple[list[float], float], via: tuple[list[float], float]) -> None:
    md, mv = statistics.median(direct[0]) * 1000, statistics.median(via[0]) * 1000
    td, tv = len(direct[0]) / direct[1], len(via[0]) / via[1]
    print(
        f"{name:10} median direct {md:7.2f} ms  via hoopy {mv:7.2f} ms  added {mv - md:+6.2f} ms"
        f"   throughput direct {td:7.0f}/s  via {tv:7.0f}/s  ratio {tv / td:.2f}x"
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
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        emu = start_emulator(Path(d) / "emu")
        h = start_hoopy(Path(d) / "hoopy", emu, POLICY)
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
            print(f"{len(one)} GET pod one at a time (latency without queueing)")
            direct = asyncio.run(load(emu.url, emu.folder / "ca.pem", emu.token, one, 1))
            report("GET pod", direct, asyncio.run(load(via, h.ca, token, one, 1)))
            print(f"{a.gets} GET pod, {a.lists} LIST pods ({a.pods} pods), concurrency 10")
            for name, paths in (("GET pod", gets), ("LIST pods", lists)):
                direct = asyncio.run(load(emu.url, emu.folder / "ca.pem", emu.token, paths, 10))
                through = asyncio.run(load(via, h.ca, token, paths, 10))
                report(name, direct, through)
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
            emu.stop()


if __name__ == "__main__":
    main()
