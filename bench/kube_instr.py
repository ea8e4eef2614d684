"""Instructions per GET pod (concurrency 10) executed by hoopy, and by another source
tree's hoopy (--compare DIR), counted by valgrind's callgrind: the figure the shared
machine's load does not blur (CPU time per request moves with the other helpers'
load and the machine has no hardware counters; instructions counted by callgrind do
not).  Both run under valgrind (about 50 times slower), so counts are kept small;
each leg's counters are zeroed, the GETs sent, the counters dumped and read.  User
space only: system calls' kernel work is not counted.

    PYTHONPATH=. python3 bench/kube_instr.py [--gets 300] [--rounds 2] [--compare DIR]
        [--keep DIR]   (callgrind_annotate DIR/this.callgrind: where they go)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.kube import POLICY, load
from tests.kubefixture import KubeHoopy, start_emulator, start_hoopy

WRAPPER = """import os, sys
os.execvp("valgrind", ["valgrind", "--tool=callgrind", "--quiet",
    "--callgrind-out-file=" + os.environ["CG_OUT"] + ".%p",
    sys.executable, "-m", "hoopy.cli", *sys.argv[1:]])
"""


def counted(pid: int, out: str, run: object) -> int:
    """Instructions `pid` executes while `run()` runs (callgrind's Ir)."""
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    run()  # type: ignore[operator]
    before = set(Path(out).parent.glob(Path(out).name + "*"))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    new = sorted(set(Path(out).parent.glob(Path(out).name + "*")) - before, key=os.path.getmtime)
    text = new[-1].read_text(errors="replace")
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert m, "no totals in the callgrind dump"
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gets", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", type=Path)
    ap.add_argument("--keep", type=Path, help="copy the last callgrind dumps to this folder")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        wrapper = Path(d) / "wrap.py"
        wrapper.write_text(WRAPPER)
        emu = start_emulator(Path(d) / "emu")
        saved_profile = os.environ.get("HOOPY_PROFILE")
        os.environ["HOOPY_PROFILE"] = str(wrapper)
        legs: dict[str, tuple[KubeHoopy, str]] = {}
        try:
            os.environ["CG_OUT"] = out = str(Path(d) / "this.cg")
            legs["this"] = (start_hoopy(Path(d) / "this", emu, POLICY), out)
            if a.compare:
                saved, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
                os.environ["PYTHONPATH"] = str(a.compare.resolve())
                os.environ["CG_OUT"] = out = str(Path(d) / "other.cg")
                os.chdir(a.compare)
                try:
                    legs[str(a.compare)] = (start_hoopy(Path(d) / "other", emu, POLICY), out)
                finally:
                    os.environ["PYTHONPATH"] = saved or ""
                    os.chdir(cwd)
        finally:
            if saved_profile is None:
                os.environ.pop("HOOPY_PROFILE", None)
            else:
                os.environ["HOOPY_PROFILE"] = saved_profile
        try:
            emu.call("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
            for i in range(50):
                emu.call("POST", "/api/v1/namespaces/bench/pods", {"metadata": {"name": f"p{i}"}})
            gets = [f"/api/v1/namespaces/bench/pods/p{i % 50}" for i in range(a.gets)]
            tokens = {k: h.token(ttl=3600) for k, (h, _) in legs.items()}
            for k, (h, _) in legs.items():  # warm-up: session, caches, pools
                asyncio.run(load(f"{h.server}/k8s/cluster", h.ca, tokens[k], gets[:100], 10))
            per: dict[str, list[float]] = {k: [] for k in legs}
            for r in range(a.rounds):
                for k, (h, out) in legs.items():
                    url = f"{h.server}/k8s/cluster"
                    n = counted(
                        h.proc.pid,
                        out,
                        lambda u=url, ca=h.ca, t=tokens[k]: asyncio.run(load(u, ca, t, gets, 10)),
                    )
                    per[k].append(n / len(gets) / 1e3)
                    print(f"round {r + 1} {k:20} {per[k][-1]:8.1f}k instructions per GET")
            if a.keep:
                a.keep.mkdir(parents=True, exist_ok=True)
                for k, (_, out) in legs.items():
                    dumps = sorted(
                        Path(out).parent.glob(Path(out).name + "*"), key=os.path.getmtime
                    )
                    if dumps:
                        name = "this" if k == "this" else "other"
                        (a.keep / f"{name}.callgrind").write_bytes(dumps[-1].read_bytes())
            for k, v in per.items():
                print(
                    f"== {k:20} median {statistics.median(v):8.1f}k instructions per GET"
                    f" (spread {min(v):.1f}..{max(v):.1f})"
                )
        finally:
            for h, _ in legs.values():
                h.stop()
            emu.stop()


if __name__ == "__main__":
    main()
