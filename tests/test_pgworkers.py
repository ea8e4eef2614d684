"""postgres.workers without processes: the setting, the spec a worker reads, cancel keys
naming their process.  The processes themselves: tests/integration/test_pg_workers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hoopy.config import check_config, load_config
from hoopy.gateway import CancelTarget, Gateway
from hoopy.pgworkers import WORKER_ENV, WorkerSpec, cancel_request, worker_spec


def _config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "connectors").mkdir(exist_ok=True)
    (tmp_path / "policies").mkdir(exist_ok=True)
    cfg = tmp_path / "hoopy.yaml"
    cfg.write_text(text)
    return cfg


def test_workers_default_and_range(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "listen: {}\n")).postgres.workers == 1
    cfg = _config(tmp_path, "postgres:\n  workers: 64\n")
    assert load_config(cfg).postgres.workers == 64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be between 1 and 64"),
        ("65", "must be between 1 and 64"),
        ('"two"', "expected an integer"),
        ("true", "expected an integer"),
        ("[2]", "expected an integer"),
    ],
)
def test_bad_workers_named_by_file_and_line(tmp_path: Path, value: str, message: str) -> None:
    cfg = _config(tmp_path, f"listen: {{}}\npostgres:\n  pool_size: 2\n  workers: {value}\n")
    assert check_config(cfg) == [f"{cfg}:4: postgres.workers: {message}"]


def test_worker_spec_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKER_ENV, raising=False)
    assert worker_spec() is None  # `hoopy serve` as usual
    spec = WorkerSpec(2, 4, ((2, "127.0.0.1", 5432), (10, "::1", 5433)), 1, "/x", "http://h")
    monkeypatch.setenv(WORKER_ENV, json.dumps(spec.__dict__))
    assert worker_spec() == spec


@pytest.mark.parametrize(("index", "count"), [(0, 1), (0, 2), (1, 2), (5, 7), (63, 64)])
def test_cancel_keys_name_their_process(index: int, count: int) -> None:
    gw = Gateway.__new__(Gateway)  # register_cancel needs only these two
    gw.cancels, gw.process = {}, (index, count)
    target = CancelTarget(connector=None, pid=1, key=2)  # type: ignore[arg-type]
    for _ in range(500):
        pid, key = gw.register_cancel(target)
        assert pid % count == index and 0 <= pid < 1 << 31 and 0 <= key < 1 << 31
    assert len(gw.cancels) == 500
    assert len({p for p, _ in gw.cancels}) > 450  # still random


def test_cancel_request_bytes() -> None:
    expected = bytes.fromhex("0000001004d2162e00000007ffffffff")  # length, code, pid, key
    assert cancel_request(7, 0xFFFFFFFF) == expected
