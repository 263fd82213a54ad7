"""Collection rules: doctests that need a framework are skipped where it is missing."""

from __future__ import annotations

import importlib.util

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob += ["src/rfest_torch/*", "src/rfest/_api.py"]
