"""What hoopy's compiled modules use of the `cython` module, for running them
interpreted where Cython is not installed (a runtime image, CI's test environment).

The real module comes with Cython (its "Shadow" module) and is used when present; this
stand-in only makes the pure-Python-mode declarations no-ops.  Keep it to the names the
modules in `hoopy.compiled.MODULES` use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

compiled = False

# C types: only names for the declarations
int = int
uint = int
Py_ssize_t = int
bint = bool
Py_UCS4 = str
longlong = int


def _identity(f: F) -> F:
    return f


cfunc = ccall = inline = final = cclass = _identity


def locals(**_types: Any) -> Callable[[F], F]:
    return _identity


def returns(_type: Any) -> Callable[[F], F]:
    return _identity


def boundscheck(_flag: bool) -> Callable[[F], F]:
    return _identity


wraparound = boundscheck


def exceptval(*_args: Any, **_kwargs: Any) -> Callable[[F], F]:
    return _identity


def cast(_type: Any, value: Any) -> Any:
    return value


def declare(_type: Any = None, value: Any = None, **_kwargs: Any) -> Any:
    return value
