"""Mask rules' detectors apply to SSH output before the agent and the recording see it."""

from __future__ import annotations

import json

from tests.integration.sshd import Sshd, SshHoopy

pytest_plugins = ["tests.integration.sshd"]


def test_detected_values_are_masked_in_output_and_recording(
    ssh_hoopy: SshHoopy, sshd: Sshd
) -> None:
    """The values live on the backend (a file); the agent and the recording see them masked."""
    pii = sshd.folder / "customers.csv"
    pii.write_text("name,mail,card\nAda,ada@example.com,4111 1111 1111 1111\n")
    r = ssh_hoopy.ssh(f"cat {pii}; cat {pii} >&2", connector="web-masked")
    assert r.returncode == 0, r.stderr
    assert "ada@example.com" not in r.stdout and "****" in r.stdout
    assert "4111" not in r.stdout and "4111" not in r.stderr and "Ada" in r.stderr
    for f in (ssh_hoopy.folder / "recordings").rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert "ada@example.com" not in text and "4111 1111" not in text


def test_values_split_across_reads_are_masked(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh(
        "printf 'split ada@exam'; sleep 0.1; printf 'ple.com and 4111 1111 '; sleep 0.1; "
        "printf '1111 1111 done\\n'",
        connector="web-masked",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("split ") and r.stdout.endswith(" done\n")
    assert "example.com" not in r.stdout and "1111" not in r.stdout


def test_unmasked_connector_is_untouched(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh("echo ada@example.com")
    assert r.stdout == "ada@example.com\n"


def test_large_output_through_the_masker_is_complete(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh("seq 1 200000", connector="web-masked")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert len(lines) == 200000 and lines[-1] == "200000"
    logs = [
        json.loads(x)
        for f in (ssh_hoopy.folder / "recordings").rglob("*.jsonl")
        for x in f.read_text().splitlines()
    ]
    assert any(e.get("type") == "exit" and e.get("bytes_out") == len(r.stdout) for e in logs)
