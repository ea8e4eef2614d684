"""hoopy: an identity-aware gateway between automated agents and production systems."""

import warnings

from hoopy import compiled as _compiled

# asyncssh names DSA key types, which cryptography >= 48 deprecates at import: not ours
# to fix, and a wall of warnings at every `hoopy` start hides the lines that matter.
warnings.filterwarnings("ignore", message="DSA is deprecated", module="asyncssh")

__version__ = "0.1.0"

_compiled.install()  # HOOPY_PURE=1 / stale builds load the .py (see compiled.py)
