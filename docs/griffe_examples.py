"""Griffe extension for the API reference: rfest docstrings head their doctests
``Example:``; Google style renders only ``Examples:`` as code, so rename the heading."""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleHeadings(griffe.Extension):
    """Turn ``Example:`` section headings into ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
