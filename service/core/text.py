"""What counts as acceptable text in a request: encodable Unicode, a bounded depth, and visible content.

A lone UTF-16 surrogate (``"\\ud800"`` in JSON) parses into a Python ``str`` that cannot be encoded as
UTF-8: stored, it would make every later response that carries it fail. Such text is refused before
anything is written.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from service.core.errors import InvalidRequest

MAX_BODY_DEPTH = 16
"""Deepest nesting of objects and arrays accepted in a body (the deepest valid one, ``cache``, has 1)."""

# Categories that draw nothing: controls, format characters (zero-width space, joiners, bidi marks),
# unassigned and private-use code points, separators, and combining marks with no base to sit on.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"})
# Letters and symbols that render as blank space although their category says otherwise.
_BLANK_LOOKALIKES = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible character (whitespace, zero-width and filler characters only)."""
    return not any(
        char not in _BLANK_LOOKALIKES and unicodedata.category(char) not in _INVISIBLE_CATEGORIES
        for char in text
    )


def is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """A field name safe to put in an error message, whatever it contains."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def check_body(body: dict[str, Any]) -> None:
    """Refuse a parsed body holding text that is not valid Unicode (in any key or value) or nested
    deeper than ``MAX_BODY_DEPTH``.

    Raises:
        InvalidRequest: naming the top-level field that holds the offending text.
    """
    for name, value in body.items():
        param = printable_name(name)
        if not is_encodable(name):
            raise InvalidRequest(
                f"The parameter name '{param}' is not valid Unicode (it holds a lone surrogate).",
                param=param,
                code="invalid_unicode",
            )
        _check_value(value, param, depth=0)


def _check_value(value: Any, param: str, depth: int) -> None:
    if isinstance(value, str):
        if not is_encodable(value):
            raise InvalidRequest(
                f"Invalid '{param}': the text is not valid Unicode (it holds a lone surrogate).",
                param=param,
                code="invalid_unicode",
            )
        return
    if isinstance(value, dict | list):
        if depth >= MAX_BODY_DEPTH:
            raise InvalidRequest(
                f"Invalid '{param}': nested deeper than {MAX_BODY_DEPTH} levels.",
                param=param,
                code="invalid_value",
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_value(key, param, depth + 1)
            _check_value(item, param, depth + 1)
