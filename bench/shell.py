"""Classification time of typical shell lines (hoopy.shell), uncached and cached, and
of the policy decision on them.  Run: PYTHONPATH=. python3 bench/shell.py"""

from __future__ import annotations

import statistics
import time

from hoopy.policy import Identity, Match, PolicySet, Rule, SshMatch, decide
from hoopy.shell import _read_line, read_argv, read_line, shell_command

LINES = [
    "systemctl status nginx",
    "ls -la /var/log",
    "tail -n 100 /var/log/syslog | grep -i error",
    "sudo -u www-data php artisan migrate --force",
    "cd /srv/app && git pull && make build 2>&1 | tee build.log",
    'for f in /var/log/*.gz; do zcat "$f" | grep -c 500; done',
    "bash -c 'df -h; free -m; uptime'",
    "find /tmp -type f -mtime +7 -exec rm -f {} \\;",
    "docker ps --format '{{.Names}}' | xargs -n1 docker inspect",
    "timeout 5 curl -fsS http://localhost:8080/health || echo down",
]
POLICY = [
    PolicySet(
        "p",
        (
            Rule("no-rm", "deny", Match(ssh=SshMatch(("rm *", "shutdown*", "reboot*")))),
            Rule("all", "allow", Match(ssh=SshMatch(("*",)))),
        ),
    )
]
WHO = Identity("agent", frozenset({"agents"}))


def per_call_us(fn, arg, n: int) -> float:
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn(arg)
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    uncached = _read_line.__wrapped__  # type: ignore[attr-defined]
    rows = []
    for line in LINES:
        parse = per_call_us(lambda s: uncached(s, True), line, 200)
        cached = per_call_us(read_line, line, 2000)
        cmd = shell_command("ssh", "web-1", read_line(line))
        dec = per_call_us(lambda c: decide(POLICY, WHO, c), cmd, 2000)
        rows.append((parse, cached, dec))
        print(f"{parse:8.1f} µs read  {cached:6.2f} µs cached  {dec:6.1f} µs decide  {line}")
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print(
        f"median: {med[0]:.1f} µs read (uncached), {med[1]:.2f} µs cached, {med[2]:.1f} µs decide"
    )
    argv = ["sh", "-c", "ls -l /proc/1/fd | wc -l"]
    print(f"read_argv {argv}: {per_call_us(read_argv, argv, 500):.1f} µs")


if __name__ == "__main__":
    main()
