"""The unit tests import the nsproxy package installed in .venv (editable, from src/nsproxy).

tests/ is on sys.path (for tests/conftest.py) and tests/nsproxy has no __init__.py, so a plain
``import nsproxy`` would make that folder a namespace package: submodules still load (through
the editable install's finder), but the package's own __init__ (``__version__``, which cli.py
imports) would be missing. Import the real package first, with the test folders out of the way.
"""

from __future__ import annotations

import importlib
import os
import sys


def _import_the_installed_package() -> None:
    module = sys.modules.get("nsproxy")
    if module is not None and getattr(module, "__file__", None):
        return
    sys.modules.pop("nsproxy", None)
    saved = sys.path[:]
    sys.path[:] = [
        p
        for p in saved
        if not os.path.isdir(os.path.join(p or ".", "nsproxy"))
        or os.path.isfile(os.path.join(p or ".", "nsproxy", "__init__.py"))
    ]
    try:
        importlib.import_module("nsproxy")
    finally:
        sys.path[:] = saved


_import_the_installed_package()
