"""Text that every store can hold: lone UTF-16 surrogates replaced.

JSON may carry `"\\ud800"` (an escape of half a surrogate pair). Python decodes it into a `str` that
cannot be encoded as UTF-8, so hashing, SQLite and PostgreSQL would all fail on it. What Meta signed
and we accepted must be stored: such code points become U+FFFD, the replacement character.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# In JSON text a surrogate can only come from an escape (UTF-8 bytes cannot encode one).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def clean_text(value: str) -> str:
    return _LONE_SURROGATE.sub(REPLACEMENT, value)


def may_hold_surrogates(json_body: bytes) -> bool:
    """False when a JSON document certainly decodes to no surrogate (the common case: skip the walk)."""
    return _SURROGATE_ESCAPE.search(json_body) is not None


def clean_json(document: Any) -> Any:
    """`document` (as json.loads returns it) with every string cleaned, keys too; containers in place.

    Iterative: a document nested as deep as json.loads allows must not exhaust the stack here.
    """
    if isinstance(document, str):
        return clean_text(document)
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, value in items:
                node[clean_text(key) if isinstance(key, str) else key] = clean_text(value) if isinstance(
                    value, str) else value
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, str):
                    node[index] = clean_text(value)
                elif isinstance(value, dict | list):
                    stack.append(value)
    return document


def lone_surrogate_path(document: Any) -> list[str | int] | None:
    """Where the first string (or key) holding a lone surrogate is in `document`; None when there is none."""
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _LONE_SURROGATE.search(node):
                return path
        elif isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and _LONE_SURROGATE.search(key):
                    return [*path, clean_text(key)]
                stack.append((value, [*path, key]))
        elif isinstance(node, list):
            stack.extend((value, [*path, index]) for index, value in enumerate(node))
    return None
