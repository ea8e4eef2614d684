"""hoopy: an identity-aware gateway between automated agents and production systems."""

from hoopy import compiled as _compiled

__version__ = "0.1.0"

_compiled.install()  # HOOPY_PURE=1 / stale builds load the .py (see compiled.py)
