"""SSH sessions are recorded: event log + one asciicast per channel, chained, replayable."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.integration.sshd import Sshd, SshHoopy

pytest_plugins = ["tests.integration.sshd"]


def _session_files(h: SshHoopy, needle: str) -> tuple[Path, list[Path]]:
    """The finished recording holding `needle` (the agent's exit can precede the
    gateway's session_end by a moment: polled, bounded)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for log in (h.folder / "recordings").rglob("*.jsonl"):
            text = log.read_text()
            if needle in text and '"type":"session_end"' in text:
                return log, sorted(log.parent.glob(f"{log.stem}-*.cast"))
        time.sleep(0.05)
    raise AssertionError(f"no finished recording holds {needle!r}")


def _parse_cast(path: Path) -> tuple[dict, list[list]]:
    """asciicast v2: a JSON header line, then [time, code, data] events in time order."""
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] > 0 and header["height"] > 0
    events = [json.loads(line) for line in lines[1:]]
    last = 0.0
    for t, code, data in events:
        assert isinstance(t, float | int) and t >= last and code in "oir"
        assert isinstance(data, str)
        last = t
    return header, events


def test_exec_channel_is_an_asciicast_and_the_log_holds_the_story(
    ssh_hoopy: SshHoopy, sshd: Sshd
) -> None:
    r = ssh_hoopy.ssh("cat; echo cast-marker-1; echo err-marker >&2; exit 7", input="typed-input\n")
    assert r.returncode == 7
    log, casts = _session_files(ssh_hoopy, "cast-marker-1")
    assert len(casts) == 1
    _, events = _parse_cast(casts[0])
    out = "".join(d for _, c, d in events if c == "o")
    assert "cast-marker-1" in out and "err-marker" in out and "typed-input" in out
    assert "".join(d for _, c, d in events if c == "i") == "typed-input\n"
    types = [json.loads(line)["type"] for line in log.read_text().splitlines()]
    for t in ("session_start", "channel", "command", "asciicast", "exit", "session_end"):
        assert t in types, (t, types)
    exit_ev = next(json.loads(x) for x in log.read_text().splitlines() if '"type":"exit"' in x)
    assert exit_ev["status"] == 7
    if shutil.which("asciinema"):  # the real player (GPL, so a test tool only, not a dependency)
        cat = subprocess.run(
            ["asciinema", "cat", str(casts[0])], capture_output=True, text=True, timeout=30
        )
        assert cat.returncode == 0, cat.stderr
        assert "cast-marker-1" in cat.stdout


def test_denials_are_recorded_with_their_rule(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    r = ssh_hoopy.ssh(f"rm -rf {sshd.folder}/deny-rec-marker")
    assert r.returncode == 126
    log, casts = _session_files(ssh_hoopy, "deny-rec-marker")
    assert casts == []  # nothing ran
    cmd = next(json.loads(x) for x in log.read_text().splitlines() if '"type":"command"' in x)
    assert cmd["outcome"] == "deny" and cmd["rule"] == "no-rm"


def test_verify_replay_and_sessions_cover_ssh(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh("echo replay-marker-2")
    assert r.returncode == 0
    log, casts = _session_files(ssh_hoopy, "replay-marker-2")
    sid = log.stem
    assert ssh_hoopy.cli("verify", sid).returncode == 0
    show = ssh_hoopy.cli("sessions", "show", sid)
    assert show.returncode == 0 and "replay-marker-2" in show.stdout
    rep = ssh_hoopy.cli("replay", sid, "--speed", "0")
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout.count("replay-marker-2") >= 2  # the command and its output
    assert "exit status 0" in rep.stdout
    # a tampered asciicast breaks verification
    data = casts[0].read_text().replace("replay-marker-2", "replay-marker-X")
    casts[0].write_text(data)
    v = ssh_hoopy.cli("verify", sid)
    assert v.returncode == 1 and "asciicast" in v.stdout + v.stderr


def test_agent_vanishing_mid_command_leaves_a_verified_recording(ssh_hoopy: SshHoopy) -> None:
    import asyncio

    import asyncssh

    async def main() -> None:
        known = asyncssh.import_known_hosts(ssh_hoopy.known_hosts().read_text())
        conn = await asyncssh.connect(
            "127.0.0.1", ssh_hoopy.ssh_port, username="web-1", password=ssh_hoopy.token(),
            known_hosts=known, client_keys=None, agent_path=None, config=None,
            preferred_auth="password",
        )  # fmt: skip
        proc = await conn.create_process("echo vanish-marker-3; head -c 50000000 /dev/zero")
        assert await proc.stdout.readline() == "vanish-marker-3\n"
        conn.abort()  # no clean close: the TCP connection just goes

    asyncio.run(main())
    log, casts = _session_files(ssh_hoopy, "vanish-marker-3")
    assert len(casts) == 1
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert any(e["type"] == "exit" for e in events)
    assert ssh_hoopy.cli("verify", log.stem).returncode == 0
    assert "Traceback" not in ssh_hoopy.log_text()
