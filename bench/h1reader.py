"""CPU per answer of the kube client's response reader (hoopy/protocols/kube/h1.py),
without sockets: a GET pod answer (Kubernetes' headers, a 1.6 KB JSON body, one read)
and a LIST answer (512 KB chunked in 8 KB chunks, arriving in 64 KB reads), fed to
`ResponseReader` and read to its end as `_Conn` and `Response` do.

    PYTHONPATH=. python3 bench/h1reader.py [--rounds 5] [--baseline OLD/h1.py]

--baseline loads another h1.py (say `git show HEAD~1:hoopy/protocols/kube/h1.py`) and
runs it in every round, interleaved with this tree's: before/after taken side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hoopy.protocols.kube import h1

BODY = b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p0"' + b',"x":"' + b"a" * 1500 + b'"}}'
GET = (
    b"HTTP/1.1 200 OK\r\n"
    b"Audit-Id: 5d5b1a53-3a40-4d0c-9d6e-2f1a0b8f6c11\r\n"
    b"Cache-Control: no-cache, private\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Kubernetes-Pf-Flowschema-Uid: 7b4f3c2a-1111-4c1d-8e2f-000000000001\r\n"
    b"X-Kubernetes-Pf-Prioritylevel-Uid: 7b4f3c2a-2222-4c1d-8e2f-000000000002\r\n"
    b"Date: Mon, 07 Dec 2026 18:00:00 GMT\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY
_LIST_BODY = b"".join(b"2000\r\n" + b"b" * 0x2000 + b"\r\n" for _ in range(64)) + b"0\r\n\r\n"
LIST = GET.split(b"Content-Length")[0] + b"Transfer-Encoding: chunked\r\n\r\n" + _LIST_BODY
LIST_READS = [LIST[i : i + 65536] for i in range(0, len(LIST), 65536)]


def one(reader_cls: Any, reads: list[bytes], size: int, n: int) -> float:
    """Microseconds per answer."""
    t = time.perf_counter()
    for _ in range(n):
        r = reader_cls("GET")
        got = 0
        for data in reads:
            r.feed(data)
            if r.buffered:
                got += sum(map(len, r.take()))
        assert r.done and r.reusable and r.status == 200 and got == size
    return (time.perf_counter() - t) * 1e6 / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path)
    args = ap.parse_args()
    legs: dict[str, Any] = {"this": h1.ResponseReader}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("h1_baseline", args.baseline)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        legs["baseline"] = mod.ResponseReader
    loads = {"GET pod": ([GET], len(BODY), 20000), "LIST 512KB": (LIST_READS, 64 * 0x2000, 300)}
    got: dict[tuple[str, str], list[float]] = {}
    for i in range(args.rounds):
        names = list(legs)[i % len(legs) :] + list(legs)[: i % len(legs)]  # rotate the order
        for load, (reads, size, n) in loads.items():
            for name in names:
                got.setdefault((load, name), []).append(one(legs[name], reads, size, n))
    for (load, name), us in got.items():
        print(
            f"{load:11} {name:9} median {statistics.median(us):8.2f} µs/answer"
            f"  (rounds {min(us):.2f} … {max(us):.2f})"
        )
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
