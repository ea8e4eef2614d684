"""hoopy/compiled.py: telling compiled from interpreted, the HOOPY_PURE switch, stale
builds, `hoopy --version` and the line `hoopy serve` starts with."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoopy import compiled
from tests import serveproc

ROOT = Path(__file__).resolve().parent.parent


def env(pure: bool) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    e["PYTHONPATH"] = str(ROOT)
    if pure:
        e[compiled.PURE_ENV] = "1"
    return e


def test_version_says_which_build_runs() -> None:
    def version(pure: bool) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "hoopy.cli", "--version"],
            capture_output=True,
            text=True,
            env=env(pure),
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert version(pure=True) == "hoopy 0.1.0, fast path interpreted (HOOPY_PURE is set)"
    installed = version(pure=False)
    if all(compiled.extension(n) for n in compiled.MODULES):
        names = ", ".join(n.rsplit(".", 1)[1] for n in compiled.MODULES)
        assert installed == f"hoopy 0.1.0, fast path compiled ({names})"
    else:
        assert installed.startswith("hoopy 0.1.0, fast path interpreted (not built")


@pytest.mark.parametrize("value", ["0", "", " "])
def test_hoopy_pure_off_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(compiled.PURE_ENV, value)
    assert not compiled.pure_requested()
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    assert compiled.pure_requested()


def test_a_stale_or_refused_extension_loads_from_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extension older than its .py would run code no longer in the source."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    source = pkg / "mod.py"
    ext = pkg / ("mod" + importlib.machinery.EXTENSION_SUFFIXES[0])
    source.write_text("X = 1\n")
    (tmp_path / "setup.py").write_text("")  # a source tree
    ext.write_bytes(b"not really an extension")
    monkeypatch.setattr(compiled, "_ROOT", tmp_path)
    monkeypatch.setattr(compiled, "MODULES", ("fakepkg.mod",))
    monkeypatch.setattr(compiled, "_PACKAGES", frozenset({"fakepkg"}))
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    finder = compiled._SourceFirst()
    os.utime(ext, (2000, 2000))
    os.utime(source, (1000, 1000))
    assert not compiled.stale("fakepkg.mod")
    assert finder.find_spec("fakepkg.mod", None) is None  # the extension, as Python would
    assert finder.find_spec("fakepkg.other", None) is None  # no extension: as Python would
    assert finder.find_spec("otherpkg.mod", None) is None  # not ours
    # an extension of a module no longer listed (an older, longer list) is never used
    (pkg / "old.py").write_text("X = 2\n")
    (pkg / ("old" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"left over")
    spec = finder.find_spec("fakepkg.old", None)
    assert spec is not None and spec.origin == str(pkg / "old.py")
    os.utime(source, (3000, 3000))  # edited after the build
    assert compiled.stale("fakepkg.mod")
    spec = finder.find_spec("fakepkg.mod", None)
    assert spec is not None and spec.origin == str(source)
    (tmp_path / "setup.py").unlink()  # installed from a wheel: times mean nothing
    assert not compiled.stale("fakepkg.mod")
    assert finder.find_spec("fakepkg.mod", None) is None
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    spec = finder.find_spec("fakepkg.mod", None)
    assert spec is not None and spec.origin == str(source)


def test_one_warning_when_running_slower_than_built_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    monkeypatch.setattr(compiled, "status", lambda: dict.fromkeys(compiled.MODULES, False))
    monkeypatch.setattr(compiled, "stale", lambda name: False)
    warning = compiled.startup_warning()
    assert warning is not None
    assert "interpreted (not built: no C compiler or Cython" in warning
    assert "install a C compiler" in warning
    monkeypatch.setenv(compiled.PURE_ENV, "1")  # asked for: no warning
    assert compiled.startup_warning() is None
    monkeypatch.delenv(compiled.PURE_ENV)
    monkeypatch.setattr(compiled, "status", lambda: dict.fromkeys(compiled.MODULES, True))
    assert compiled.startup_warning() is None
    monkeypatch.setattr(compiled, "MODULES", ("pkg.fast", "pkg.slow"))
    monkeypatch.setattr(compiled, "status", lambda: {"pkg.fast": True, "pkg.slow": False})
    assert compiled.describe() == (
        "partly compiled (fast; the rest interpreted: "
        "not built: no C compiler or Cython when hoopy was installed)"
    )


def test_serve_starts_with_the_build_line(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "policies").mkdir()
    (tmp_path / "connectors" / "db.yaml").write_text(
        "type: postgres\naddress: 127.0.0.1:1\ndatabase: d\nuser: u\n"
        "password: env:PATH\nsslmode: disable\n"
    )
    (tmp_path / "policies" / "p.yaml").write_text("rules: []\n")
    cfg = tmp_path / "hoopy.yaml"
    cfg.write_text(
        "listen: {postgres: 127.0.0.1:0}\nstate: sqlite:state/state.db\nrecordings: rec/\n"
    )
    for pure in (True, False):
        log = tmp_path / f"stderr-{pure}.txt"
        with log.open("w") as f:
            proc, _, _ = serveproc.launch(cfg, env(pure), stderr=f)
            serveproc.stop(proc)
        lines = [x for x in log.read_text().splitlines() if "fast path" in x]
        assert len(lines) == 1, log.read_text()
        if pure:
            assert "INFO hoopy.serve: hoopy 0.1.0, fast path interpreted (HOOPY_PURE" in lines[0]
        elif all(compiled.extension(n) for n in compiled.MODULES):
            assert "INFO hoopy.serve: hoopy 0.1.0, fast path compiled (" in lines[0]
        else:
            assert "WARNING hoopy.serve: hoopy 0.1.0: fast path interpreted" in lines[0]
