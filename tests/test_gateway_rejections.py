"""Refused connections are recorded without letting a client with no token fill the disk."""

from __future__ import annotations

import json
from pathlib import Path

from hoopy.gateway import REJECTIONS_RECORDED
from tests.test_gateway_recovery import make_gateway


def _reasons(gw: object, folder: Path) -> list[str]:
    out = []
    for f in sorted((folder / "recordings").rglob("*.jsonl")):
        for line in f.read_text().splitlines():
            ev = json.loads(line)
            if ev["type"] == "rejected":
                out.append(ev["reason"])
    return out


def test_a_flood_of_refusals_is_recorded_in_bounded_form(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path)
    try:
        for _ in range(REJECTIONS_RECORDED + 20):
            gw.record_rejection("postgres", "10.9.8.7:5000", "app-db", "no token", True)
        gw.record_rejection("postgres", "127.0.0.1:6000", "app-db", "no token", True)
        reasons = _reasons(gw, tmp_path)
        assert reasons.count("no token") == REJECTIONS_RECORDED + 1  # the other host too
        gw.flush_rejections(everything=True)  # at shutdown: nothing goes unrecorded
        reasons = _reasons(gw, tmp_path)
        assert "20 more connection(s) from 10.9.8.7 refused within 10 s" in reasons[-1]
        assert 'rejected_connections_total{protocol="postgres"} 51' in gw.metrics.render()
    finally:
        gw.store.close()
