"""Builds hoopy's compiled fast path (see hoopy/compiled.py); everything else is in
pyproject.toml.

The modules named in hoopy.compiled.MODULES are compiled by Cython from their .py
(pure-Python mode) into extension modules beside them.  Without Cython or a working C
compiler the install goes on with the .py files alone, after one warning.
HOOPY_NO_COMPILE=1 skips the build on purpose.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

HERE = Path(__file__).resolve().parent
SKIPPED = "hoopy: the compiled fast path is not built ({}); hoopy runs interpreted, slower"


def compiled_modules() -> list[str]:
    """hoopy.compiled.MODULES, read without importing hoopy."""
    tree = ast.parse((HERE / "hoopy" / "compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "MODULES":
            return list(ast.literal_eval(node.value))  # type: ignore[arg-type]
    raise SystemExit("setup.py: MODULES not found in hoopy/compiled.py")


# Modules that call a C library directly (see their .pxd): eventchain hashes each
# recording line with OpenSSL's SHA-256 (libcrypto, which Python's hashlib links too;
# its headers come with libssl-dev).  SHA256_Init and its kin are deprecated in
# OpenSSL 3 in favour of EVP, whose per-call lookup is what this avoids.
_LINK: dict[str, dict[str, Any]] = {
    "hoopy.eventchain": {
        "libraries": ["crypto"],
        "define_macros": [("OPENSSL_SUPPRESS_DEPRECATED", None)],
    },
}


def extensions() -> list[Extension]:
    if os.environ.get("HOOPY_NO_COMPILE", "").strip() not in ("", "0"):
        print(SKIPPED.format("HOOPY_NO_COMPILE is set"), file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print(SKIPPED.format("Cython is not installed"), file=sys.stderr)
        return []
    mods = [
        Extension(name, [str(Path(*name.split(".")).with_suffix(".py"))], **_LINK.get(name, {}))
        for name in compiled_modules()
    ]
    return cythonize(  # type: ignore[no-any-return]
        mods,
        build_dir="build/cython",  # the generated C stays out of the package
        quiet=True,
        compiler_directives={
            "language_level": 3,
            # Only the explicit cython.* declarations type anything: ordinary
            # annotations keep Python's meaning in both builds.
            "annotation_typing": False,
            "binding": True,
        },
    )


_ERRORS = (CCompilerError, CompileError, ExecError, PlatformError, OSError)


class OptionalBuildExt(build_ext):
    """A failed compile is one warning, not a failed install: the .py files run.  An
    extension that failed leaves the list, so nothing expects its file (the editable
    install copies every listed one into the source tree)."""

    def run(self) -> None:
        try:
            super().run()
        except _ERRORS as e:
            self._skip([ext.name for ext in self.extensions], e)
            self.extensions = []

    def build_extensions(self) -> None:
        self.check_extensions_list(self.extensions)
        failed: list[str] = []
        error: BaseException | None = None
        for ext in list(self.extensions):
            try:
                self.build_extension(ext)
            except _ERRORS as e:
                failed.append(ext.name)
                error = e
                self.extensions.remove(ext)
        if failed:
            self._skip(failed, error)

    @staticmethod
    def _skip(names: list[str], error: BaseException | None) -> None:
        print(SKIPPED.format(f"{', '.join(names)}: {error}"), file=sys.stderr)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
