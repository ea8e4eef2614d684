"""The compiled fast path: which modules run compiled, and the switch back to the .py.

One source of truth: each module named in `MODULES` is an ordinary .py file written in
Cython's pure-Python mode (`cython.locals` and friends, no-ops when interpreted).  When
Cython and a C compiler are there at install time, setup.py compiles each to an
extension module beside its .py (`pip install -e .` included), and Python's import
system prefers the extension.  Without a compiler the install goes on without them and
hoopy runs the .py files, slower, saying so once at `hoopy serve` start.

`HOOPY_PURE=1` in the environment makes every one of them load from its .py (tests run
the interpreted build this way), read when the module is first imported.  An extension
older than its .py in a source tree (the source was edited after the build) is not
used either: it would run code that is no longer in the source.  `hoopy --version`
tells which is running.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# setup.py reads this tuple (by parsing this file): the modules it compiles.
# Only typed loops gain: compiling codec.py, bodies.py or relay.py as they are (object
# work, not byte work) saved under 1 % of the instructions per transaction (callgrind).
MODULES: tuple[str, ...] = (
    "hoopy.protocols.postgres.framing",
    "hoopy.protocols.postgres.sqlkey",
    "hoopy.eventchain",
    "hoopy.protocols.postgres.resultrun",
    "hoopy.protocols.postgres.cmdlane",
)
PURE_ENV = "HOOPY_PURE"
_ROOT = Path(__file__).resolve().parent.parent  # the folder holding the hoopy package


def _packages() -> frozenset[str]:
    return frozenset(name.split(".", 1)[0] for name in MODULES)


_PACKAGES = _packages()


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "").strip() not in ("", "0")


def source(name: str) -> Path:
    return _ROOT.joinpath(*name.split(".")).with_suffix(".py")


def extension(name: str) -> Path | None:
    """The built extension module beside the .py, if any."""
    base = _ROOT.joinpath(*name.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = base.with_name(base.name + suffix)
        if path.exists():
            return path
    return None


def stale(name: str) -> bool:
    """In a source tree (an editable install), the extension is older than its .py:
    built from another source.  Installed from a wheel, files' times only say in which
    order they were unpacked, so an installed extension is never stale."""
    if not (_ROOT / "setup.py").exists():
        return False
    ext = extension(name)
    try:
        return ext is not None and ext.stat().st_mtime < source(name).stat().st_mtime
    except OSError:
        return False


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the compiled modules from their .py when asked to or when stale, and any
    other module of the package from its .py even where an extension lies beside it
    (left by a build from when the list was longer)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in MODULES:
            if not (pure_requested() or stale(fullname)):
                return None  # the ordinary finders: the extension first
        elif fullname.split(".", 1)[0] not in _PACKAGES or extension(fullname) is None:
            return None
        if not source(fullname).exists():
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def install() -> None:
    """Put the finder in front (once); hoopy/__init__.py calls this."""
    if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())


def is_compiled(module: ModuleType) -> bool:
    origin = getattr(module, "__file__", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def status() -> dict[str, bool]:
    """Module name → whether the running one is compiled (imports them)."""
    return {name: is_compiled(importlib.import_module(name)) for name in MODULES}


def describe() -> str:
    """'compiled (framing)', 'interpreted (…why…)' or 'partly compiled (…)'."""
    running = status()
    short = {name: name.rsplit(".", 1)[1] for name in running}
    done = [short[n] for n, c in running.items() if c]
    if len(done) == len(running):
        return f"compiled ({', '.join(done)})"
    if pure_requested():
        why = f"{PURE_ENV} is set"
    elif any(stale(n) for n in running if not running[n]):
        why = "the compiled modules are older than their source: run `pip install -e .` again"
    else:
        why = "not built: no C compiler or Cython when hoopy was installed"
    if done:
        return f"partly compiled ({', '.join(done)}; the rest interpreted: {why})"
    return f"interpreted ({why})"


def startup_warning() -> str | None:
    """The one warning `hoopy serve` logs when it runs slower than it could."""
    text = describe()
    if text.startswith("compiled") or pure_requested():
        return None
    return (
        f"fast path {text}; every statement costs more CPU than with the compiled build "
        "(install a C compiler and Python's headers, then reinstall hoopy)"
    )
