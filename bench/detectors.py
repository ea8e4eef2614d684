#!/usr/bin/env python3
"""Throughput of hoopy.masking's detectors, in MB/s of input text.

Three inputs, all detectors enabled unless noted:
  mixed   log-like lines where about one line in four carries an email, card, IP, JWT, key…
  clean   the same kind of lines with nothing to find (timestamps, ids, hex, versions, prose)
  cells   short column values one at a time (the PostgreSQL per-cell path), in values/s too
Usage: python3 bench/detectors.py [--mb 4] [--detectors email,credit_card] [--style redact]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoopy.masking import DETECTORS, ValueMasker

WORDS = (
    "the request completed for user session query table index upstream connection pool "
    "retry timeout backend replica commit rollback cache worker job queue handler ok"
)
SECRETS = [
    "alice.smith@example.com",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "123-45-6789",
    "(415) 555-0134",
    "+44 20 7946 0958",
    "GB82 WEST 1234 5698 7654 32",
    "10.20.30.40",
    "2001:db8::8a2e:370:7334",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "Zx8Kq2Lm9Vb4Np7Rt3Wy6Hj1",
]


_WORDS = WORDS.split(" ")


def clean_line(rnd: random.Random) -> str:
    words = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(4, 12)))
    return (
        f"2024-05-{rnd.randint(1, 28):02d}T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00Z "
        f"INFO id={rnd.randint(1, 10**9)} v1.{rnd.randint(0, 9)}.{rnd.randint(0, 9)} "
        f"trace={rnd.getrandbits(64):016x} {words} took {rnd.random() * 100:.2f}ms"
    )


def mixed_line(rnd: random.Random) -> str:
    line = clean_line(rnd)
    return f"{line} value={rnd.choice(SECRETS)}" if rnd.random() < 0.25 else line


def corpus(make: Callable[[random.Random], str], size: int) -> str:
    rnd = random.Random(7)
    lines: list[str] = []
    total = 0
    while total < size:
        lines.append(make(rnd))
        total += len(lines[-1]) + 1
    return "\n".join(lines)


def cells(n: int) -> list[str]:
    rnd = random.Random(11)
    pool = ["alice", "42", "2024-05-01", "true", "Acme Corporation Ltd", "bob@example.com"]
    pool += ["4111111111111111", "1999.99", "San Francisco", "10.0.0.1", "pending"]
    return [rnd.choice(pool) for _ in range(n)]


def rate(fn: Callable[[], object], nbytes: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e6


def text_rates(masker: ValueMasker, text: str) -> tuple[float, float, int]:
    """MB/s masking the text whole and line by line, and how many values were found."""
    lines = text.split("\n")
    whole = rate(lambda: masker.mask_text(text), len(text))
    per_line = rate(lambda: [masker.mask_text(x) for x in lines], len(text))
    return whole, per_line, sum(masker.mask_text(text)[1].values())


def run(masker: ValueMasker, mb: float) -> None:
    size = int(mb * 1e6)
    for name, make in (("mixed", mixed_line), ("clean", clean_line)):
        whole, per_line, found = text_rates(masker, corpus(make, size))
        print(
            f"{name:6} whole text {whole:6.1f} MB/s  per line {per_line:6.1f} MB/s  ({found} found)"
        )
    values = cells(200_000)
    nbytes = sum(len(v) for v in values)
    t0 = time.perf_counter()
    for v in values:
        masker.mask_text(v)
    dt = time.perf_counter() - t0
    print(f"cells  {nbytes / dt / 1e6:6.1f} MB/s  {len(values) / dt / 1e6:5.2f} M values/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--detectors", default=",".join(DETECTORS))
    ap.add_argument("--style", default="redact", choices=("redact", "partial", "hash"))
    args = ap.parse_args()
    names = [d for d in args.detectors.split(",") if d]
    print(f"detectors: {', '.join(names)}; style {args.style}; {args.mb} MB per corpus")
    run(ValueMasker(names, args.style, b"bench-key"), args.mb)
    if len(names) > 1:
        print("\nemail + credit_card only (a typical mask rule):")
        run(ValueMasker(["email", "credit_card"], args.style, b"bench-key"), args.mb)


if __name__ == "__main__":
    main()
