"""The `hoopy` command: `check` reports every mistake as file:line and never prints a
secret; `sessions`, `replay` and `verify` print nothing a terminal would act on, warn
about recordings that fail verification, and tell open, unfinished and crashed apart."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoopy.recorder import Recorder, SessionLog, new_session_id
from hoopy.state import OwnerLock, StateStore


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hoopy.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_check_reports_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "hoopy.yaml").write_text("listen: {postgres: 127.0.0.1:15432}\n")
    (tmp_path / "connectors" / "db.yaml").write_text(
        "type: postgres\naddress: db:5432\ndatabase: app\nuser: u\npassword: hunter2-inline\n"
    )
    (tmp_path / "policies" / "p.yaml").write_text(
        "rules:\n  - name: a\n    efect: allow\n  - name: b\n    effect: deny\n"
        "    match: {connectors: [nope]}\n"
    )
    r = run("check", "--config", "hoopy.yaml", cwd=tmp_path)
    assert r.returncode == 1
    out = r.stdout
    assert "connectors/db.yaml:5:" in out
    assert "policies/p.yaml:3: unknown key 'efect' (did you mean 'effect'?)" in out
    assert "policies/p.yaml:6:" in out
    assert "hunter2-inline" not in out + r.stderr


def test_check_ok(tmp_path: Path) -> None:
    (tmp_path / "hoopy.yaml").write_text("listen: {postgres: 127.0.0.1:15432}\n")
    r = run("check", "--config", "hoopy.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok:")


# ---- hoopy approvals: deciding needs the admin token -----------------------------------

ADMIN = "cli-admin-token-0042"


def approvals_config(tmp_path: Path, admin_token: bool = True) -> Path:
    cfg = tmp_path / "hoopy.yaml"
    cfg.write_text(
        "state: sqlite:state/state.db\n"
        + ("admin_token: env:HOOPY_TEST_CLI_ADMIN\n" if admin_token else "")
    )
    return cfg


def add_approval(
    cfg: Path, expires_in: float = 600, command: str = "delete from t", **kw: Any
) -> str:
    import time

    from hoopy.approvals import PENDING, Approval, ApprovalStore, new_approval_id
    from hoopy.state import StateStore

    now = time.time()
    a = Approval(
        new_approval_id(), "s-1", "postgres", "app-db", "agent-7", ["agents"], command,
        command, "r", ["dba"], PENDING, now - 1, now + expires_in, **kw,
    )  # fmt: skip
    store = StateStore(cfg.parent / "state" / "state.db")
    try:
        ApprovalStore(store).create(a)
    finally:
        store.close()
    return a.id


def approvals(cfg: Path, *args: str) -> int:
    from hoopy.cli import main

    return main(["approvals", *args, "--config", str(cfg)])


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("HOOPY_TEST_CLI_ADMIN", ADMIN)
    monkeypatch.delenv("HOOPY_ADMIN_TOKEN", raising=False)
    return monkeypatch


def test_cli_approve_needs_the_admin_token(
    tmp_path: Path, admin_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = approvals_config(tmp_path)
    aid = add_approval(cfg)
    assert approvals(cfg, "approve", aid) == 1
    assert "HOOPY_ADMIN_TOKEN" in capsys.readouterr().err
    admin_env.setenv("HOOPY_ADMIN_TOKEN", ADMIN + "x")
    assert approvals(cfg, "deny", aid) == 1
    err = capsys.readouterr().err
    assert "does not match" in err and ADMIN not in err
    assert approvals(cfg, "list") == 0 and aid in capsys.readouterr().out  # still pending
    admin_env.setenv("HOOPY_ADMIN_TOKEN", ADMIN)
    assert approvals(cfg, "approve", aid) == 0
    assert f"{aid} approved by cli:" in capsys.readouterr().out


def test_cli_token_file(
    tmp_path: Path, admin_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = approvals_config(tmp_path)
    aid = add_approval(cfg)
    (tmp_path / "tok").write_text(ADMIN + "\n")
    assert approvals(cfg, "deny", aid, "--token-file", str(tmp_path / "missing")) == 1
    assert "cannot read --token-file" in capsys.readouterr().err
    assert approvals(cfg, "deny", aid, "--token-file", str(tmp_path / "tok")) == 0
    assert f"{aid} denied" in capsys.readouterr().out


def test_cli_approvals_refused_without_a_configured_admin_token(
    tmp_path: Path, admin_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = approvals_config(tmp_path, admin_token=False)
    aid = add_approval(cfg)
    admin_env.setenv("HOOPY_ADMIN_TOKEN", ADMIN)
    assert approvals(cfg, "approve", aid) == 1
    assert "no admin_token is configured" in capsys.readouterr().err


def test_cli_refuses_to_approve_an_expired_approval(
    tmp_path: Path, admin_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = approvals_config(tmp_path)
    aid = add_approval(cfg, expires_in=-1)
    admin_env.setenv("HOOPY_ADMIN_TOKEN", ADMIN)
    assert approvals(cfg, "approve", aid) == 1
    assert f"{aid}: approval has expired" in capsys.readouterr().err


def test_cli_show_prints_the_whole_command(
    tmp_path: Path, admin_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    cfg = approvals_config(tmp_path)
    long = "update t set a = '" + "x" * 5000 + "' where id = 7 or true"
    aid = add_approval(cfg, command=long)
    assert approvals(cfg, "show", aid) == 0
    assert json.loads(capsys.readouterr().out)["command"] == long
    assert approvals(cfg, "show", "apr-nope") == 1


def test_cli_show_prints_every_value_whole_and_flags_hidden_text(
    tmp_path: Path, admin_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16: values cut at 200 characters and 32 parameters were shown cut here too."""
    import json

    cfg = approvals_config(tmp_path)
    values = ["$1 = '" + "5," * 100 + ",".join(map(str, range(1, 101))) + "'"]
    values += [f"${i} = '{i}'" for i in range(2, 41)] + ["$41 = 'x\u202ey\x7f\x1b'"]
    aid = add_approval(cfg, command="delete from t where id = \u0430ny($1)", values=values,
                       issuer="https://idp-b.example")  # fmt: skip
    assert approvals(cfg, "show", aid) == 0
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert shown["values"] == values and shown["issuer"] == "https://idp-b.example"
    assert not RAW.search(captured.out) and "\u0430" not in captured.out
    assert "invisible or direction-changing" in captured.err
    assert "U+0430 CYRILLIC SMALL LETTER A" in captured.err
    assert approvals(cfg, "list") == 0
    listed = capsys.readouterr().out
    assert "+41 value(s)" in listed and "issuer=https://idp-b.example" in listed


# ---- sessions / replay / verify --------------------------------------------------------
# Anything a terminal acts on: C0 but \t \n, DEL, C1, bidi controls.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
FORGED = "SELECT 1 /* \x1b[1A\x1b[2K\x1b[32m allow select 1\x1b[0m */"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Recorder]]:
    (tmp_path / "hoopy.yaml").write_text(
        "listen: {postgres: 127.0.0.1:15432}\nstate: sqlite:state/state.db\n"
        "recordings: recordings/\n"
    )
    store = StateStore(tmp_path / "state" / "state.db")
    yield tmp_path, Recorder(tmp_path / "recordings", store)
    store.close()


def record(rec: Recorder, subject: str = "agent-1", *texts: str, close: bool = True) -> SessionLog:
    log = rec.open_session(
        new_session_id(),
        protocol="postgres",
        connector="app-db",
        subject=subject,
        groups=["agents"],
        client="127.0.0.1:1",
        tls=True,
    )
    for text in texts or ("select 1",):
        log.event("command", text=text, outcome="allow")
    if close:
        log.close("closed")
    return log


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(*args, "--config", "hoopy.yaml", cwd=folder)


def test_sessions_list_escapes_a_hostile_subject(site: tuple[Path, Recorder]) -> None:
    folder, rec = site
    record(rec, "agent\x1b[2K\x1b]52;c;AAAA\x07\u202e")
    r = cli(folder, "sessions", "list")
    assert r.returncode == 0 and not RAW.search(r.stdout)
    assert "agent\\x1b[2K\\x1b]52;c;AAAA\\x07\\u202e" in r.stdout


def test_sessions_show_escapes_c1_and_bidi_but_stays_json(site: tuple[Path, Recorder]) -> None:
    folder, rec = site
    log = record(rec, "agent", "select '\x9b2J' /* \u202e \u2066 */", FORGED)
    r = cli(folder, "sessions", "show", log.id)
    assert r.returncode == 0, r.stderr
    assert not RAW.search(r.stdout) and "WARNING" not in r.stderr
    texts = [json.loads(x).get("text") for x in r.stdout.splitlines()]
    assert "select '\x9b2J' /* \u202e \u2066 */" in texts and FORGED in texts


def test_replay_escapes_statement_text(site: tuple[Path, Recorder]) -> None:
    folder, rec = site
    log = record(rec, "agent\x1b[31m", FORGED, "select 2 -- \x1b]52;c;cm0gLXJm\x07")
    r = cli(folder, "replay", log.id, "--speed", "0")
    assert r.returncode == 0, r.stderr
    assert not RAW.search(r.stdout)
    assert "\\x1b[1A\\x1b[2K" in r.stdout and "\\x1b]52;c;cm0gLXJm\\x07" in r.stdout
    assert "agent\\x1b[31m" in r.stdout  # the header too


def tamper(log: SessionLog) -> None:
    data = log.path.read_bytes().replace(b"select 1", b"select 2")
    log.path.write_bytes(data)


@pytest.mark.parametrize("command", [("replay", "--speed", "0"), ("sessions", "show")])
def test_tampered_recordings_are_shown_with_a_warning(
    site: tuple[Path, Recorder], command: tuple[str, ...]
) -> None:
    folder, rec = site
    log = record(rec, "agent", "select 1")
    ok = cli(folder, *command, log.id)
    assert ok.returncode == 0 and "WARNING" not in ok.stderr, ok.stderr
    tamper(log)
    r = cli(folder, *command, log.id)
    assert r.returncode == 1
    assert r.stderr.count("WARNING: this recording fails verification: ") == 2, r.stderr
    assert "select 2" in r.stdout  # still shown: the security team needs to see it


def test_verify_reports_open_sessions_by_the_state_of_their_gateway(
    site: tuple[Path, Recorder],
) -> None:
    folder, rec = site
    owners = folder / "state" / "gateways"
    alive, dead = OwnerLock(owners), OwnerLock(owners)
    rec.owner = alive.id
    running = record(rec, close=False)
    rec.owner = dead.id
    orphan = record(rec, close=False)
    rec.owner = ""
    unknown = record(rec, close=False)
    done = record(rec)

    r = cli(folder, "verify")
    assert r.returncode == 0, r.stdout + r.stderr  # every open one's gateway runs (or may)
    lines = {line.split()[1]: line for line in r.stdout.splitlines()}
    assert lines[done.id].startswith("ok ")
    assert lines[running.id].startswith("open ") and "its gateway is running" in lines[running.id]
    assert "not finished: verified up to the last line on disk" in lines[running.id]
    assert lines[unknown.id].startswith("open ") and "cannot tell" in lines[unknown.id]

    dead.release(keep=True)  # its process died: the lock file stays, unlocked
    r = cli(folder, "verify")
    assert r.returncode == 1
    lines = {line.split()[1]: line for line in r.stdout.splitlines()}
    assert lines[orphan.id].startswith("unfinished ") and "is gone" in lines[orphan.id]
    assert "1 unfinished" in r.stderr
    assert cli(folder, "verify", running.id).returncode == 0
    assert cli(folder, "verify", orphan.id).returncode == 1
    alive.release()


def test_verify_catches_a_tail_cut_from_an_open_session(site: tuple[Path, Recorder]) -> None:
    folder, rec = site
    log = record(rec, "agent", "select 1", "select 2", "select 3", close=False)
    moved = log.progress()
    assert moved is not None
    rec.store.sessions_progress([(log.id, *moved)])  # the flusher's tick
    assert cli(folder, "verify", log.id).returncode == 0
    log.path.write_bytes(b"".join(log.path.read_bytes().splitlines(keepends=True)[:2]))
    r = cli(folder, "verify", log.id)
    assert r.returncode == 1 and "BROKEN" in r.stdout and "tail removed" in r.stdout


def test_verify_of_a_row_pointing_at_another_recording(site: tuple[Path, Recorder]) -> None:
    folder, rec = site
    a, b = record(rec), record(rec)
    with sqlite3.connect(folder / "state" / "state.db") as db:
        db.execute(
            "UPDATE sessions SET path = ?, events = ?, head = ? WHERE id = ?",
            (str(a.path), a.events, a.head, b.id),
        )
    r = cli(folder, "verify", b.id)
    assert r.returncode == 1 and "recording is of session" in r.stdout, r.stdout


def test_verify_escapes_what_it_prints(site: tuple[Path, Recorder]) -> None:
    folder, rec = site
    log = record(rec)
    stray = log.path.with_name("x\x1b[2Jy.jsonl")  # an unindexed file with a hostile name
    stray.write_bytes(log.path.read_bytes())
    r = cli(folder, "verify")
    assert r.returncode == 1 and not RAW.search(r.stdout) and "x\\x1b[2Jy" in r.stdout
