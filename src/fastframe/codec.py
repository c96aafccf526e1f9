"""The codec: picks the Cython or the pure-Python implementation once, at import.

* default: the Cython extension when it is built, else the pure twin;
* ``FASTFRAME_PUREPYTHON=1``: the pure twin, always;
* ``FASTFRAME_IMPL=c``: the extension, or ``ImportError`` when it is missing
  (``FASTFRAME_IMPL=python`` is the same as ``FASTFRAME_PUREPYTHON=1``).

``impl`` is the module in use and ``__impl__`` its name; ``load(name)`` imports
either one explicitly (tests, benchmarks). The codec functions are re-exported
here from ``impl``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING, Literal

_MODULES = {"c": "fastframe._codec_c", "python": "fastframe._codec_py"}


def load(name: str) -> ModuleType:
    """Import one implementation by name: ``"c"`` or ``"python"``."""
    if name not in _MODULES:
        raise ValueError(f"unknown codec implementation {name!r}; expected 'c' or 'python'")
    return importlib.import_module(_MODULES[name])


def _choose() -> ModuleType:
    pure = os.environ.get("FASTFRAME_PUREPYTHON", "") not in ("", "0")
    wanted = os.environ.get("FASTFRAME_IMPL", "").strip().lower()
    if wanted not in ("", "c", "python"):
        raise ImportError(f"FASTFRAME_IMPL must be 'c' or 'python', not {wanted!r}")
    if wanted == "c":
        if pure:
            raise ImportError("FASTFRAME_IMPL=c contradicts FASTFRAME_PUREPYTHON=1")
        try:
            return load("c")
        except ImportError as exc:
            raise ImportError(f"FASTFRAME_IMPL=c but the Cython codec is not built: {exc}") from exc
    if pure or wanted == "python":
        return load("python")
    try:
        return load("c")
    except ImportError:
        return load("python")


if TYPE_CHECKING:
    # The pure module is the type source: both implementations have its API.
    from . import _codec_py
    from ._codec_py import *  # noqa: F401,F403

    impl = _codec_py
else:
    impl = _choose()

    from ._codec_py import __all__  # same names in both implementations

    globals().update({name: getattr(impl, name) for name in __all__})

__impl__: Literal["c", "python"] = "c" if impl.__name__.endswith("_c") else "python"
