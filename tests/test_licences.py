"""hoopy is Apache-2.0: every runtime dependency it ships (pyproject's dependencies and
theirs, as installed) must be permissively licensed.  pglast (GPL-3.0-or-later) was
replaced by postgast (BSD-2-Clause) for this; the one exception is named below, with why.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PERMISSIVE = re.compile(
    r"\b(MIT|MIT-0|BSD|BSD-2-Clause|BSD-3-Clause|3-Clause BSD|Apache|Apache-2\.0|"
    r"Apache Software License|PSF|PSF-2\.0|Python Software Foundation|ISC|Zlib|"
    r"Unlicense|CC0)\b",
    re.IGNORECASE,
)
COPYLEFT = re.compile(r"\b(A?GPL|LGPL|EPL|MPL|GNU|Eclipse|Mozilla)\b", re.IGNORECASE)
# asyncssh (EPL-2.0 OR GPL-2.0-or-later), taken under EPL-2.0: a weak, file-level
# copyleft that binds changes to asyncssh's own files only, which hoopy neither changes
# nor ships inside itself.  No permissively licensed SSH server library for asyncio
# exists (paramiko is LGPL); the brief names asyncssh as hoopy's SSH library.
EXCEPTIONS = {"asyncssh": "EPL-2.0 OR GPL-2.0-or-later"}


def _licence(dist: md.Distribution) -> str:
    meta = dist.metadata
    expr = meta.get("License-Expression") or ""
    text = (meta.get("License") or "").splitlines()[0:1]
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    return " | ".join([expr, *text, *classifiers]).strip(" |")


def _runtime_closure() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    seen: dict[str, str] = {}
    todo = [Requirement(d) for d in deps]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        dist = md.distribution(req.name)  # a missing runtime dependency fails here
        seen[name] = _licence(dist)
        todo.extend(Requirement(r) for r in dist.requires or [])
    return seen


def test_no_gpl_parser_dependency() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {Requirement(d).name.lower() for d in deps}
    assert "pglast" not in names and "bashlex" not in names


def test_every_runtime_dependency_is_permissive() -> None:
    closure = _runtime_closure()
    assert "postgast" in closure and "asyncssh" in closure  # the walk reached them
    bad = {}
    for name, licence in closure.items():
        if name in EXCEPTIONS:
            assert EXCEPTIONS[name] in licence, f"{name}'s licence changed: {licence}"
            continue
        if COPYLEFT.search(licence) or not PERMISSIVE.search(licence):
            bad[name] = licence
    assert not bad, f"not permissive (or not recognised): {bad}"
