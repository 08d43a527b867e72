"""The fleet stage's measured figures: name -> value, filled by the tests in file order and
printed by conftest.py at the end of the run (a module of its own, so the tests and the conftest
share one dict however pytest imports the conftest)."""

from __future__ import annotations

FIGURES: dict[str, object] = {}
